# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "pandas>=2.0",
#     "matplotlib>=3.7",
# ]
# ///
"""Plots of activation_stats.csv (from collect_activation_norms.py): where and on what text the models differ.

Three figures go into --outdir:

* ``activation_norms_forget.png`` and ``activation_norms_retain.png``: mean ||h||_1 (left) and
  ||h||_2 (right) per layer, model A against model B. Targeted unlearning shows model B's norms
  leaving model A's on forget text while the two lines stay on top of each other on retain text.
* ``activation_diffs_forget_vs_retain.png``: mean ||h_B - h_A||_1 (left) and ||h_B - h_A||_2
  (right) per layer, forget and retain as two lines: large on forget and small on retain is what a
  targeted edit looks like; two similar lines mean the model changed everywhere.

Layer 0 is the embedding output, layer N the last layer after the final norm.

Usage:
    uv run --script plot_activation_norms.py --csv outputs/A_vs_B/activation_stats/activation_stats.csv \
        --outdir plots/A_vs_B/activation_plots --name A_vs_B
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


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


NORM_COLUMNS = ["layer", "split", "model_a_norm_L1", "model_a_norm_L2", "model_b_norm_L1", "model_b_norm_L2",
            "mean_dh_L1", "mean_dh_L2"]
# the difference plot draws model B's change in B's colour (model_style); the splits differ in line and marker
SPLIT_STYLE = {"forget": dict(linestyle="-", marker="o"), "retain": dict(linestyle="--", marker="s")}


def read_stats(path: str | os.PathLike):
    """activation_stats.csv as a DataFrame sorted by layer, or a one-line reason why not."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p} does not exist; run run_activations.sh (collect_activation_norms.py) first")
    try:
        df = pd.read_csv(p)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        raise UsageError(f"{p} is empty or not a CSV file") from None
    missing = [c for c in NORM_COLUMNS if c not in df.columns]
    if missing:
        raise UsageError(f"{p} lacks the column(s) {', '.join(missing)}; is it an activation_stats.csv?")
    if df.empty:
        raise UsageError(f"{p} has no rows")
    return df.sort_values(["split", "layer"]).reset_index(drop=True)


def save_atomic(fig, path: Path) -> None:
    write_atomically({path: lambda p: fig.savefig(p, dpi=150, bbox_inches="tight", format="png")})


def style_layer_axis(ax) -> None:
    """x axis: the hidden_states index (0 = embeddings) below, the decoder layer it comes out of
    above (the numbering of the weight plots: hidden_states index i = output of decoder layer i − 1)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("hidden_states index (0 = embeddings; i = output of decoder layer i − 1)")
    top = ax.secondary_xaxis("top", functions=(lambda x: x - 1, lambda x: x + 1))
    top.xaxis.set_major_locator(MaxNLocator(integer=True))
    top.xaxis.set_major_formatter(FuncFormatter(lambda v, _: "emb" if round(v) == -1 else f"{v:g}"))
    top.set_xlabel("output of decoder layer (as in the weight plots)", fontsize=8)
    top.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def norm_axes(df) -> dict:
    """One y axis per norm for all of the norm figures (forget and retain alike), so they compare:
    ``{"L1": (log?, (low, high)), "L2": ...}`` over both models and every split.

    Norms in deep transformers grow by orders of magnitude from the embeddings to the last layers;
    when they span more than a factor 100 the axis is logarithmic so the early layers stay visible.
    """
    axes = {}
    for p in ("L1", "L2"):
        values = df[[f"model_a_norm_{p}", f"model_b_norm_{p}"]].to_numpy(dtype=float)
        values = values[values == values]
        positive = values[values > 0]
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        log = positive.size == values.size > 0 and positive.max() > 100 * positive.min()
        if log:
            axes[p] = (True, (lo / 1.3, hi * 1.3))
        else:
            pad = 0.05 * (hi - lo) or 0.05 * abs(hi) or 1.0
            axes[p] = (False, (lo - pad, hi + pad))
    return axes


def plot_norms(df, split: str, name: str, label_a: str, label_b: str, axes: dict | None = None,
               index_a: int = 0, index_b: int = 1):
    """Mean ||h||_1 and ||h||_2 of both models over layers, on one split, on the y axes of
    ``norm_axes`` (of the whole table when not given: the same for every split); each model in
    the look of its position in the study (``model_style``; 0 = the reference)."""
    import matplotlib.pyplot as plt

    axes = axes or norm_axes(df)
    d = df[df["split"] == split]
    fig, panels = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    for ax, p in zip(panels, ("L1", "L2")):
        ax.plot(d["layer"], d[f"model_a_norm_{p}"], **model_style(f"A: {label_a}", index_a))
        ax.plot(d["layer"], d[f"model_b_norm_{p}"], **model_style(f"B: {label_b}", index_b))
        sub = "₁" if p == "L1" else "₂"
        log, limits = axes[p]
        if log:
            ax.set_yscale("log")
        ax.set_ylim(*limits)
        if log:
            label_log_axis(ax.yaxis)
        ax.set_ylabel(f"mean ‖h‖{sub} per token" + (" (log scale)" if log else ""))
        ax.set_title(f"{p} norm of hidden states")
        style_layer_axis(ax)
    fig.suptitle(f"{name}: activation norms on {split} text\nA: {label_a}   B: {label_b}")
    return fig


def plot_diffs(df, name: str, label_a: str, label_b: str, index_b: int = 1):
    """Mean ||h_B - h_A||_1 and _2 over layers, forget and retain as two lines on one axis from 0,
    in model B's colour (``model_style``)."""
    import matplotlib.pyplot as plt

    fig, panels = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    for ax, p in zip(panels, ("L1", "L2")):
        for split, d in df.groupby("split", sort=True):
            style = {**model_style(f"{split} text", index_b), **SPLIT_STYLE.get(split, {"linestyle": ":", "marker": "x"})}
            ax.plot(d["layer"], d[f"mean_dh_{p}"], **style)
        sub = "₁" if p == "L1" else "₂"
        top = df[f"mean_dh_{p}"].max()
        ax.set_ylim(0, 1.08 * top if top == top and top > 0 else 1.0)
        ax.set_ylabel(f"mean ‖h_B − h_A‖{sub} per token")
        ax.set_title(f"{p} norm of the activation difference")
        style_layer_axis(ax)
    fig.suptitle(f"{name}: activation change, forget vs retain\nA: {label_a}   B: {label_b}")
    return fig


def make_plots(csv: str | os.PathLike, outdir: str | os.PathLike, name: str, label_a: str, label_b: str,
               index_a: int = 0, index_b: int = 1):
    """Write the three PNGs; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = read_stats(csv)
    splits = sorted(df["split"].unique())
    names = [f"activation_norms_{split}.png" for split in splits] + ["activation_diffs_forget_vs_retain.png"]
    out = check_outdir(outdir, "activation_*.png", owned=tuple(names))
    written = []
    axes = norm_axes(df)  # one kind of axis, one range, for the forget and the retain figure
    for split, png in zip(splits, names):
        fig = plot_norms(df, split, name, label_a, label_b, axes, index_a=index_a, index_b=index_b)
        written.append(out / png)
        save_atomic(fig, written[-1])
        plt.close(fig)
    fig = plot_diffs(df, name, label_a, label_b, index_b=index_b)
    written.append(out / names[-1])
    save_atomic(fig, written[-1])
    plt.close(fig)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", required=True, help="activation_stats.csv from collect_activation_norms.py")
    p.add_argument("--outdir", required=True, help="where the PNGs go")
    p.add_argument("--name", default=None, help="comparison name for the titles (default: the CSV's grandparent folder)")
    p.add_argument("--model-a-label", default="model A", help="model A's name in legends")
    p.add_argument("--model-b-label", default="model B", help="model B's name in legends")
    p.add_argument("--model-a-index", type=int, default=0,
                   help="model A's position in the study (0 = the reference: black), for its colour")
    p.add_argument("--model-b-index", type=int, default=1,
                   help="model B's position in the study, for its colour (the same in every figure)")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if min(args.model_a_index, args.model_b_index) < 0:
        p.error("--model-a-index and --model-b-index must not be negative")
    name = args.name or Path(args.csv).resolve().parent.parent.name

    def work() -> None:
        for path in make_plots(args.csv, args.outdir, name, args.model_a_label, args.model_b_label,
                               args.model_a_index, args.model_b_index):
            print(f"wrote {path}", file=sys.stderr)

    return run_tool(work, kept="the PNGs written so far are complete, none is half-written")


if __name__ == "__main__":
    sys.exit(main())
