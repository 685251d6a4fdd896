# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "pandas>=2.0",
#     "matplotlib>=3.7",
# ]
# ///
"""Draw the per-layer weight-change statistics written by collect_param_stats.py.

Reads `<stats-dir>/per_layer.csv` and writes two figures into `--outdir`:

  layer_locality_<name>.png  ‖ΔW‖_F per decoder layer (root-sum-square over the layer's
                             matrices), attention and MLP as separate lines. A spike says where
                             the weights moved.
  stable_rank_<name>.png     mean stable rank ‖ΔW‖_F²/‖ΔW‖_2² of the changed matrices per layer
                             (log scale). Near 1: a surgical low-rank edit; large: broad drift.

Usage:
    uv run --script plot_param_stats.py --stats-dir outputs/A_vs_B/param_stats \\
        --outdir plots/A_vs_B/param_plots --name A_vs_B --model-a-label A --model-b-label B
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


# --- shared helpers: copied from common/helpers.py; edit them there, then run `uv run --script common/fix_copies.py` ---
# (the helpers named here, plus the ones they use, in the canonical order; to take another one add a
# line `# take: NAME` here and run the command; the helpers use this script's imports)
class UsageError(Exception):
    """Bad input or a failed step: reported as one ``error: ...`` line, exit status 1 (see run_tool)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a Slurm time limit), raised like Ctrl-C so that every ``finally:`` cleans up
    the same way; run_tool turns it into exit status 143 (Ctrl-C: 130)."""


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message, or the exception's type name when the
    message is empty (``str(e).splitlines()[0]`` raises IndexError there)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def run_tool(work, kept: str = "nothing was written", errors: tuple = (), oom_hint: str = "") -> int:
    """Run ``work()`` (a tool's body) with the collection's exit behaviour; return the exit status:
    0 done (or the int ``work`` returns; any other value counts as 0); 1 for a UsageError or one of
    ``errors``, an OSError, or running out of (device) memory, printed as one ``error: ...`` line
    (``oom_hint`` appended to the memory one); 130 on Ctrl-C and 143 on SIGTERM, after the
    ``finally:`` blocks inside ``work`` have removed what was half-written, with one line saying what
    was ``kept``. SIGTERM raises Terminated (a KeyboardInterrupt) while ``work`` runs; a second
    SIGTERM during the cleanup is ignored. argparse's SystemExit (status 2) passes through."""
    import signal
    import threading

    received = []

    def on_sigterm(signum, frame):
        if not received:
            received.append(signum)
            raise Terminated()

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    if not sys.stderr.isatty():
        quiet_library_bars()
    hint = f"; {oom_hint}" if oom_hint else ""
    try:
        status = work()
    except KeyboardInterrupt:
        how, status = ("terminated (SIGTERM)", 143) if received else ("interrupted (Ctrl-C)", 130)
        print(f"{how}: {kept}", file=sys.stderr, flush=True)
        return status
    except (UsageError, *errors) as e:
        print(f"error: {first_line(e)}", file=sys.stderr, flush=True)
        return 1
    except MemoryError:
        print(f"error: out of memory{hint}", file=sys.stderr, flush=True)
        return 1
    except OSError as e:  # a full disk, a read-only folder, a file that vanished, ...
        where = f" {e.filename}" if e.filename else ""
        print(f"error: cannot access{where}: {e.strerror or first_line(e)}", file=sys.stderr, flush=True)
        return 1
    except RuntimeError as e:
        if "out of memory" not in str(e).lower():
            raise
        print(f"error: out of device memory{hint}", file=sys.stderr, flush=True)
        return 1
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if received:
        return 143
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def quiet_library_bars() -> None:
    """A log is not a terminal: switch off the progress bars that transformers ("Loading weights"),
    datasets ("Generating ... split") and huggingface_hub draw with carriage returns; the tools' own
    stages print lines instead (``progress``). Set before those libraries are imported, the
    environment variables do it; for the ones already imported, their switches."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    for module, switch in (("transformers.utils.logging", "disable_progress_bar"),
                           ("datasets.utils.logging", "disable_progress_bar"),
                           ("huggingface_hub.utils", "disable_progress_bars")):
        if module in sys.modules and hasattr(sys.modules[module], switch):
            getattr(sys.modules[module], switch)()


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_outdir(outdir, marker: str, owned: tuple = (), inputs: tuple = ()) -> Path:
    """Refuse, before any work starts, an ``--outdir`` whose writing would lose something or fail.

    Refused: a path that exists and is not a folder; a folder equal to or inside one of the
    ``inputs`` (e.g. the input model); a folder this tool did not write, i.e. one without a file
    matching the glob ``marker`` that is non-empty (or, when ``owned`` names the files the tool
    writes there, that holds one of them); a path whose nearest existing folder cannot be written
    (read-only, /proc, permissions: probed with a temporary file that is removed at once).
    Returns ``Path(outdir)``; nothing is created."""
    out = Path(outdir)
    for source in inputs:
        if source is not None and Path(source).is_dir():
            src = Path(source).resolve()
            if out.resolve() == src or src in out.resolve().parents:
                raise UsageError(f"--outdir {out} is inside the input {source}; choose a folder outside it")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise UsageError(f"--outdir {out} exists and is not a folder")
        ours = any(out.glob(marker))
        theirs = [p.name for p in out.iterdir() if p.name in owned] if owned else list(out.iterdir())
        if theirs and not ours:
            raise UsageError(f"--outdir {out} holds files that no earlier run of this tool wrote (no {marker}); "
                             "choose a new or empty folder, or move them away")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot create --outdir {out}: {probe} is not a folder")
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        raise UsageError(f"cannot write --outdir {out}: {probe} is not writable ({e.strerror or first_line(e)})") from None
    return out


def write_atomically(files: dict) -> None:
    """Write each ``{path: content}`` to a temporary file beside ``path``, then rename them all
    into place. ``content``: str (written as UTF-8, line ends as given), bytes, or a function that
    writes the file at the path it is given (``lambda p: fig.savefig(p, format="png")``). Files get
    the ordinary mode 0666 & ~umask (mkstemp makes 0600), missing folders 0777 & ~umask. On any
    error or Ctrl-C the temporary files are removed and every existing file stays as it was; an
    OSError (disk full, read-only, ...) becomes a UsageError naming the file."""
    temps: dict[Path, str] = {}
    try:
        for path, content in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps[path] = tmp
            with os.fdopen(fd, "wb") as f:
                if isinstance(content, (str, bytes)):
                    f.write(content.encode("utf-8") if isinstance(content, str) else content)
            if callable(content):
                content(Path(tmp))
            os.chmod(tmp, 0o666 & ~_umask())
        for path, tmp in temps.items():
            os.replace(tmp, path)
    except BaseException as e:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise UsageError(f"cannot write {path}: {e.strerror or first_line(e)}") from None
        raise


# One look per model in every figure of a study: index 0 (the reference/original model) black,
# the others from the Okabe-Ito colour-blind-safe palette in the order the study gives them.
MODEL_COLOURS = ["#000000", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442"]


MODEL_LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]


MODEL_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def model_style(name: str, index: int) -> dict:
    """Matplotlib keywords for model number ``index`` of a study (0 = the reference model), so a
    model keeps its colour, line style, marker and label in every figure: ``color``, ``linestyle``,
    ``marker``, ``label``. The reference is black and solid; the others take MODEL_COLOURS[index]
    (cycling past the palette) with a dashed style, so print in grey still tells them apart."""
    if index < 0:
        raise ValueError(f"model index {index} is negative")
    colour = MODEL_COLOURS[0] if index == 0 else MODEL_COLOURS[1 + (index - 1) % (len(MODEL_COLOURS) - 1)]
    style = MODEL_LINESTYLES[0] if index == 0 else MODEL_LINESTYLES[1 + (index - 1) % (len(MODEL_LINESTYLES) - 1)]
    return {"color": colour, "linestyle": style, "marker": MODEL_MARKERS[index % len(MODEL_MARKERS)], "label": name}


def label_log_axis(axis) -> None:
    """Enough labelled ticks on a log-scaled matplotlib axis (``ax.yaxis``, after its limits are
    set): 1-2-5 in each decade (only powers of ten beyond four decades, every multiple within
    one), written as plain numbers (0.5, 20, 1e+04) instead of 10^k alone."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = sorted(axis.get_view_interval())
    decades = math.log10(hi / lo) if lo > 0 else 1.0
    subs = (1.0,) if decades > 4 else (1.0, 2.0, 5.0) if decades >= 1 else (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=40))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
# --- end shared helpers ---


STATS_COLUMNS = ["layer", "group", "dW_fro_layer", "mean_dW_stable_rank", "count_mats"]
# every line is model B's change, so every line has model B's colour (model_style); the groups
# differ in line style and marker
STYLE = {"attn": dict(linestyle="-", marker="o", label="attention"),
         "mlp": dict(linestyle="--", marker="s", label="MLP"),
         "other": dict(linestyle=":", marker="^", label="other")}


def load_per_layer(stats_dir: Path) -> pd.DataFrame:
    """per_layer.csv, checked for the columns the plots need and for at least one row."""
    path = stats_dir / "per_layer.csv"
    if not path.is_file():
        raise UsageError(f"{path} not found; run collect_param_stats.py (or ./run_params_local.sh) first")
    try:
        table = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise UsageError(f"cannot read {path}: {first_line(exc)}") from exc
    missing = [c for c in STATS_COLUMNS if c not in table.columns]
    if missing:
        raise UsageError(f"{path} lacks the columns {', '.join(missing)}; was it written by collect_param_stats.py?")
    if table.empty:
        raise UsageError(f"{path} has no rows (no weight matrices inside decoder layers?)")
    return table


def save_figure(fig, path: Path) -> None:
    """The figure as a PNG at `path`, written atomically (``write_atomically``), then closed."""
    try:
        write_atomically({path: lambda p: fig.savefig(p, dpi=150, bbox_inches="tight", format="png")})
    finally:
        plt.close(fig)


def figure_by_layer(table: pd.DataFrame, column: str, ylabel: str, title: str, log: bool = False,
                    reference: float | None = None, model_index: int = 1):
    """One line per group (attn, mlp, other) of `column` against the decoder-layer index, in the
    colour of the changed model (number ``model_index`` of the study, ``model_style``).

    NaN values (layers where nothing changed) are left as gaps; the x axis keeps every layer. A
    linear y axis starts at 0 (a change is read against none); a log axis gets labelled 1-2-5
    ticks. The top axis gives the same layers as the activation plots number them
    (transformers' hidden_states index = decoder layer + 1, 0 being the embeddings).
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for group in [g for g in STYLE if g in set(table["group"])] + sorted(set(table["group"]) - set(STYLE)):
        rows = table[table["group"] == group].sort_values("layer")
        style = {**model_style(group, model_index), **STYLE.get(group, dict(linestyle="-.", marker="x", label=group))}
        ax.plot(rows["layer"], rows[column], linewidth=1.6, markersize=4, **style)
    if reference is not None:
        ax.axhline(reference, color="black", linewidth=0.8, linestyle=":", label="rank-1 edit (= 1)")
    if log:
        ax.set_yscale("log")
        top = table[column].max()
        # stable ranks are ≥ 1: keep 1 in view and at least a factor 2 of range so the ticks read
        ax.set_ylim(0.8, max(2.0, 1.5 * top) if top == top else 2.0)
        label_log_axis(ax.yaxis)
    else:
        top = table[column].max()
        ax.set_ylim(0, 1.08 * top if top == top and top > 0 else 1.0)
    layers = sorted(set(table["layer"]))
    if len(layers) <= 40:
        ax.set_xticks(layers)
    ax.set_xlim(layers[0] - 0.3, layers[-1] + 0.3)  # every layer in view, changed or not
    ax.set_xlabel("decoder layer (0 = first block; hidden_states index = layer + 1)")
    top_axis = ax.secondary_xaxis("top", functions=(lambda x: x + 1, lambda x: x - 1))
    if len(layers) <= 40:
        top_axis.set_xticks([layer + 1 for layer in layers])
    top_axis.set_xlabel("hidden_states index, as in the activation plots", fontsize=8)
    top_axis.tick_params(labelsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(frameon=False)
    return fig


def plot_by_layer(table: pd.DataFrame, column: str, ylabel: str, title: str, path: Path,
                  log: bool = False, reference: float | None = None, model_index: int = 1) -> None:
    """``figure_by_layer`` saved as a PNG at `path`."""
    save_figure(figure_by_layer(table, column, ylabel, title, log, reference, model_index), path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Plots of per_layer.csv from collect_param_stats.py.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stats-dir", required=True, help="folder holding per_layer.csv")
    p.add_argument("--outdir", required=True, help="folder for the PNGs")
    p.add_argument("--name", required=True, help="comparison name: file suffix and title")
    p.add_argument("--model-a-label", default="model A", help="name of model A in the titles")
    p.add_argument("--model-b-label", default="model B", help="name of model B in the titles")
    p.add_argument("--model-b-index", type=int, default=1,
                   help="model B's position in the study (0 = the reference), for its colour in every figure")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.model_b_index < 0:
        p.error("--model-b-index must not be negative")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: plot_comparison(args), kept="nothing was written")


def plot_comparison(args) -> None:
    """The two figures of one comparison."""
    table = load_per_layer(Path(args.stats_dir))
    outdir = Path(args.outdir)
    pair = f"{args.model_a_label} → {args.model_b_label}"
    locality = outdir / f"layer_locality_{args.name}.png"
    stable = outdir / f"stable_rank_{args.name}.png"
    check_outdir(outdir, "layer_locality_*.png", owned=(locality.name, stable.name))
    plot_by_layer(table, "dW_fro_layer", "‖ΔW‖_F of the layer (weight units, √Σ over its matrices)",
                  f"Where the weights moved: ‖W_B − W_A‖_F per layer\n{pair}", locality,
                  model_index=args.model_b_index)
    if table["mean_dW_stable_rank"].isna().all():
        print(f"warning: no layer changed between {pair}; {stable.name} shows no data", file=sys.stderr)
    plot_by_layer(table, "mean_dW_stable_rank", "mean stable rank ‖ΔW‖_F²/‖ΔW‖_2² (dimensionless)",
                  f"How the change is shaped: ≈1 surgical low-rank edit, large broad drift\n{pair}",
                  stable, log=True, reference=1.0, model_index=args.model_b_index)
    print(f"wrote {locality} and {stable}")


if __name__ == "__main__":
    sys.exit(main())
