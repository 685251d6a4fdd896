# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "numpy>=1.24",
#     "pandas>=2.0",
#     "matplotlib>=3.7",
#     "safetensors>=0.4",
# ]
# ///
"""Draw the weight geometry written by collect_weight_geometry.py (and per_component.csv of
collect_param_stats.py) into --outdir (plots/<pair>/weight_geometry/):

  dW_spectra_<name>.png      σ_i/σ_1 of ΔW (log scale) against i, one panel per component, for a
                             few layers (first, middle, last): a cliff after r values is a rank-r
                             change, a slow slope a full-rank one
  eff_rank_<name>.png        heat map layer × component of dW_eff_rank_99 (mean over the matrices
                             of a cell, e.g. Llama's gate_proj and up_proj)
  intruders_<name>.png       heat map of intruder dimensions (sum over the cell's matrices)
  colspace_<name>.png        heat map of dW_in_colspace_k / its random baseline k/rows: above 1 the
                             change sits in W_a's top directions, near 1 anywhere, below 1 outside
  rel_norm_<name>.png        ‖ΔW‖_F/‖W_a‖_F per layer and component, from per_component.csv
                             (drawn when --param-stats-dir holds it)

Lines are drawn in model B's colour (model_style's colour for --model-b-index, the colour the model
has in every figure of the study); layers and components are told apart by shade, marker and dash.

Usage:
    uv run --script plot_weight_geometry.py --geometry-dir outputs/A_vs_B/weight_geometry \
        --param-stats-dir outputs/A_vs_B/param_stats --outdir plots/A_vs_B/weight_geometry --name A_vs_B
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
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


COMPONENT_ORDER = ["qkv", "q", "k", "v", "attn_out", "mlp_in", "mlp_out", "embed", "unembed", "norm", "other"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">"]
DASHES = ["-", "--", "-.", ":"]
GEOMETRY_REQUIRED = ["layer", "name", "component", "rows", "cols", "dW_eff_rank_99", "intruders",
            "dW_in_colspace_k", "dW_in_colspace_k_random"]


def read_table(path: Path, required: list[str], producer: str) -> pd.DataFrame:
    if not path.is_file():
        raise UsageError(f"{path} not found; run {producer} first")
    try:
        table = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise UsageError(f"cannot read {path}: {first_line(exc)}") from exc
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise UsageError(f"{path} lacks the columns {', '.join(missing)}; was it written by {producer}?")
    if table.empty:
        raise UsageError(f"{path} has no rows")
    return table


def read_spectra(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UsageError(f"cannot read {path}: {first_line(exc)}") from exc


def components_in(table: pd.DataFrame) -> list[str]:
    present = set(table["component"])
    return [c for c in COMPONENT_ORDER if c in present] + sorted(present - set(COMPONENT_ORDER))


def save_png(fig, path: Path) -> None:
    try:
        write_atomically({path: lambda p: fig.savefig(p, dpi=150, bbox_inches="tight", format="png")})
    finally:
        plt.close(fig)


def pick_layers(layers: list[int], count: int = 3) -> list[int]:
    """First, middle and last layer (fewer when there are fewer)."""
    if len(layers) <= count:
        return layers
    return sorted({layers[round(i * (len(layers) - 1) / (count - 1))] for i in range(count)})


def figure_spectra(table: pd.DataFrame, spectra: dict, colour: str, title: str):
    comps = components_in(table)
    fig, axes = plt.subplots(1, len(comps), figsize=(3.2 * len(comps) + 0.8, 3.6), squeeze=False, sharey=True)
    layers = pick_layers(sorted(set(int(x) for x in table["layer"] if x >= 0)) or [-1])
    drawn = False
    for ax, comp in zip(axes[0], comps):
        rows = table[table["component"] == comp]
        for j, layer in enumerate(layers):
            shade = 0.35 + 0.65 * (j + 1) / len(layers)
            for n, name in enumerate(rows[rows["layer"] == layer]["name"]):
                s = np.asarray(spectra.get(name, []), dtype=np.float64)
                s = s[s > 0]
                if s.size == 0:
                    continue
                ax.plot(np.arange(1, s.size + 1), s / s[0], color=colour, alpha=shade, linewidth=1.4,
                        linestyle=DASHES[n % len(DASHES)], label=f"layer {layer}" if n == 0 else None)
                drawn = True
        ax.set_yscale("log")
        ax.set_xscale("log")
        if drawn:
            label_log_axis(ax.xaxis)
        ax.set_title(comp, fontsize=9)
        ax.set_xlabel("index i")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(frameon=False, fontsize=7)
        else:
            ax.text(0.5, 0.5, "ΔW = 0", transform=ax.transAxes, ha="center", va="center", color="grey")
    axes[0][0].set_ylabel("σ_i / σ_1 of ΔW")
    if drawn:
        label_log_axis(axes[0][0].yaxis)
    fig.suptitle(title, fontsize=10)
    return fig, drawn


def figure_heatmap(table: pd.DataFrame, values: pd.Series, how: str, label: str, title: str, cmap: str,
                   centre: float | None = None, vmin: float | None = None):
    """Layer (rows) × component (columns); empty cells (undefined, e.g. ΔW = 0) grey."""
    frame = table.assign(_v=values)
    grid = frame.groupby(["layer", "component"])["_v"].agg(how if how != "sum" else lambda x: x.sum(min_count=1))
    grid = grid.unstack("component").reindex(columns=components_in(table))
    data = np.ma.masked_invalid(grid.to_numpy(dtype=float))
    fig, ax = plt.subplots(figsize=(1.1 * grid.shape[1] + 2.5, 0.32 * grid.shape[0] + 1.8))
    cm = plt.get_cmap(cmap).with_extremes(bad="#dddddd")
    kwargs = {}
    if centre is not None and data.count():
        from matplotlib.colors import TwoSlopeNorm

        lo, hi = float(data.min()), float(data.max())
        kwargs["norm"] = TwoSlopeNorm(vcenter=centre, vmin=min(lo, centre - 1e-9), vmax=max(hi, centre + 1e-9))
    if vmin is not None and centre is None:  # counts and ranks read against zero
        kwargs.update(vmin=vmin, vmax=max(float(data.max()) if data.count() else 1.0, vmin + 1))
    image = ax.imshow(data, aspect="auto", cmap=cm, interpolation="nearest", **kwargs)
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=30, ha="right")
    ax.set_yticks(range(grid.shape[0]), ["outside" if v < 0 else str(v) for v in grid.index])
    ax.set_ylabel("decoder layer")
    if grid.size <= 200:
        for (i, j), v in np.ndenumerate(grid.to_numpy(dtype=float)):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label=label)
    ax.set_title(title, fontsize=10)
    return fig


def figure_rel_norm(per_component: pd.DataFrame, colour: str, title: str):
    table = per_component[per_component["layer"] >= 0]
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for i, comp in enumerate(components_in(table)):
        rows = table[table["component"] == comp].sort_values("layer")
        ax.plot(rows["layer"], rows["rel_dW_fro"], color=colour, marker=MARKERS[i % len(MARKERS)],
                linestyle=DASHES[i % len(DASHES)], linewidth=1.4, markersize=5, label=comp)
    positive = table["rel_dW_fro"][table["rel_dW_fro"] > 0]
    if len(positive):  # log scale: unchanged components (0) are gaps
        ax.set_yscale("log")
        ax.set_ylim(float(positive.min()) / 1.5, float(positive.max()) * 1.5)
        label_log_axis(ax.yaxis)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("‖ΔW‖_F / ‖W_A‖_F over the component")
    layers = sorted(set(table["layer"]))
    if layers and len(layers) <= 40:
        ax.set_xticks(layers)
    ax.grid(True, alpha=0.3)
    ax.legend(frameon=False, fontsize=8, ncol=2)
    ax.set_title(title, fontsize=10)
    return fig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Figures of collect_weight_geometry.py's output.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--geometry-dir", required=True, help="folder holding weight_geometry.csv and dW_spectra.safetensors")
    p.add_argument("--param-stats-dir", default=None,
                   help="folder holding per_component.csv of collect_param_stats.py (for rel_norm_<name>.png)")
    p.add_argument("--outdir", required=True, help="folder for the PNGs")
    p.add_argument("--name", required=True, help="comparison name: file suffix and title")
    p.add_argument("--model-a-label", default="model A", help="name of model A in the titles")
    p.add_argument("--model-b-label", default="model B", help="name of model B in the titles")
    p.add_argument("--model-b-index", type=int, default=1,
                   help="position of model B in the study (0 = reference): its colour in every figure")
    return p


def run(args) -> int:
    if args.model_b_index < 0:
        raise UsageError("--model-b-index must be at least 0")
    gdir, outdir = Path(args.geometry_dir), Path(args.outdir)
    table = read_table(gdir / "weight_geometry.csv", GEOMETRY_REQUIRED, "collect_weight_geometry.py")
    spectra = read_spectra(gdir / "dW_spectra.safetensors")
    per_component = None
    if args.param_stats_dir and (Path(args.param_stats_dir) / "per_component.csv").is_file():
        per_component = read_table(Path(args.param_stats_dir) / "per_component.csv",
                                ["layer", "component", "rel_dW_fro"], "collect_param_stats.py")
    names = {key: outdir / f"{key}_{args.name}.png" for key in
             ("dW_spectra", "eff_rank", "intruders", "colspace", "rel_norm")}
    check_outdir(outdir, "eff_rank_*.png", owned=tuple(p.name for p in names.values()))
    colour = model_style(args.model_b_label, args.model_b_index)["color"]
    pair = f"{args.model_a_label} → {args.model_b_label}"
    fig, drawn = figure_spectra(table, spectra, colour, f"ΔW singular values, normalised\n{pair}")
    save_png(fig, names["dW_spectra"])
    if not drawn:
        print(f"warning: no matrix changed between {pair}; {names['dW_spectra'].name} shows no data", file=sys.stderr)
    save_png(figure_heatmap(table, table["dW_eff_rank_99"], "mean", "dW_eff_rank_99 (99% of ‖ΔW‖_F²)",
                            f"Effective rank of the change\n{pair}", "viridis", vmin=0), names["eff_rank"])
    save_png(figure_heatmap(table, table["intruders"], "sum", "intruder dimensions",
                            f"Intruder dimensions (top-{int(table['intruder_k'].max()) if 'intruder_k' in table else ''} "
                            f"of W_B vs all of W_A)\n{pair}", "Reds", vmin=0), names["intruders"])
    ratio = table["dW_in_colspace_k"] / table["dW_in_colspace_k_random"]
    save_png(figure_heatmap(table, ratio, "mean", "share in W_A's top-k column space ÷ random k/rows",
                            f"Does the change sit in W_A's top directions? (1 = like a random matrix)\n{pair}",
                            "RdBu_r", centre=1.0), names["colspace"])
    written = [names[k] for k in ("dW_spectra", "eff_rank", "intruders", "colspace")]
    if per_component is not None:
        save_png(figure_rel_norm(per_component, colour, f"Relative change per component\n{pair}"),
                 names["rel_norm"])
        written.append(names["rel_norm"])
    print(f"wrote {len(written)} figures into {outdir}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(lambda: run(args), kept="no PNG was half-written")


if __name__ == "__main__":
    sys.exit(main())
