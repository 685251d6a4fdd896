# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "pandas>=2.0",
#     "matplotlib>=3.7",
# ]
# ///
"""Plots of activation_geometry.csv (from collect_activation_geometry.py): how the representations changed.

Four figures go into --outdir (layer 0 = the embeddings, layer l = the output of decoder layer l-1):

* ``probe_auc.png``: forget-vs-retain probe ROC AUC per layer, model A and model B, the band = ± one
  standard deviation over the cross-validation folds. B's line staying at A's means the forget
  information is still linearly readable from B's representations.
* ``cka.png``: linear CKA of A's and B's per-token activations per layer, forget and retain text.
  A targeted edit drops on forget text and stays near 1 on retain text.
* ``effective_rank.png``: 99%-energy rank of the per-token covariance, A and B, forget (solid) and
  retain (dashed): a collapse of the forget representations shows as B's forget line falling.
* ``dW_read_selectivity.png``: for each decoder layer's mlp_in and qkv, the share of forget input
  energy in ΔW's top-k right singular subspace divided by the retain share (> 1: ΔW reads
  preferentially from forget-text directions); dashed at 1 = no preference. The random-subspace
  baseline k/d of each share is in the CSV (dW_read_random_*).

Model A is drawn in black and model B in its colour of the study (``--model-b-index``: its position
in COMPARE_WITH, from 1), the same colours as every other figure.

Usage:
    uv run --script plot_activation_geometry.py \\
        --csv outputs/A_vs_B/activation_geometry/activation_geometry.csv --outdir plots/A_vs_B/activation_geometry
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
# --- end shared helpers ---


# a model's colour and line style come from model_style (the same in every figure of the study);
# splits and components are told apart by their markers
SPLIT_MARKER = {"forget": "o", "retain": "s"}
COMP_MARKER = {"mlp_in": "o", "qkv": "^"}
NEEDED = ["layer", "probe_auc_a", "probe_auc_a_std", "probe_auc_b", "probe_auc_b_std", "cka_forget", "cka_retain",
          "eff_rank_forget_a", "eff_rank_forget_b", "eff_rank_retain_a", "eff_rank_retain_b",
          "dW_read_selectivity_mlp_in", "dW_read_selectivity_qkv"]


def line_kw(style: dict, marker: str | None = None) -> dict:
    """Colour and line style of a model (a ``model_style`` dict), with ``marker`` or the model's own."""
    return {"color": style["color"], "linestyle": style["linestyle"], "marker": marker or style["marker"]}


def read_geometry(path):
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p} does not exist; run collect_activation_geometry.py first")
    try:
        df = pd.read_csv(p)
    except (ValueError, OSError) as e:
        raise UsageError(f"cannot read {p}: {first_line(e)}") from None
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise UsageError(f"{p} lacks the column(s) {', '.join(missing)}; is it from collect_activation_geometry.py?")
    if df.empty:
        raise UsageError(f"{p} has no rows")
    return df.sort_values("layer")


def style_geometry_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer (0 = embeddings, l = output of decoder layer l-1)")
    ax.grid(alpha=0.3)


def plot_probe(df, name, style_a, style_b):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    for tag, style in (("a", style_a), ("b", style_b)):
        m, s = df[f"probe_auc_{tag}"], df[f"probe_auc_{tag}_std"]
        ax.plot(df["layer"], m, label=f"{'AB'[tag == 'b']}: {style['label']}", **line_kw(style))
        ax.fill_between(df["layer"], m - s, (m + s).clip(upper=1.0), color=style["color"], alpha=0.15, linewidth=0)
    ax.axhline(0.5, color="0.5", linestyle=":", linewidth=1, label="chance (0.5)")
    ax.set_ylim(0.4, 1.02)
    ax.set_ylabel("forget-vs-retain probe ROC AUC (± fold std)")
    ax.set_title(f"{name}: linear separability of forget and retain text")
    style_geometry_axis(ax)
    ax.legend(fontsize=8)
    return fig


def plot_cka(df, name, style_b):
    import matplotlib.pyplot as plt

    label_b = style_b["label"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    for split in ("forget", "retain"):
        ax.plot(df["layer"], df[f"cka_{split}"], label=f"{split} text", **line_kw(style_b, SPLIT_MARKER[split]))
    ax.set_ylim(min(0.0, float(df[["cka_forget", "cka_retain"]].min().min())), 1.02)
    ax.set_ylabel("linear CKA(A, B), per-token activations")
    ax.set_title(f"{name}: how alike A and B ({label_b}) represent text")
    style_geometry_axis(ax)
    ax.legend(fontsize=8)
    return fig


def plot_rank(df, name, style_a, style_b):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    for tag, style in (("a", style_a), ("b", style_b)):
        for split in ("forget", "retain"):
            ax.plot(df["layer"], df[f"eff_rank_{split}_{tag}"], label=f"{'AB'[tag == 'b']}: {style['label']}, {split}",
                    **line_kw(style, SPLIT_MARKER[split]))
    ax.set_ylabel("effective rank (99% of the centred covariance's energy)")
    ax.set_title(f"{name}: dimensionality of the representations")
    style_geometry_axis(ax)
    ax.legend(fontsize=8)
    return fig


def plot_selectivity(df, name, style_b):
    import matplotlib.pyplot as plt

    label_b = style_b["label"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    drawn = False
    for comp in ("mlp_in", "qkv"):
        col = f"dW_read_selectivity_{comp}"
        d = df[df[col].notna()]
        if len(d):
            ax.plot(d["layer"] - 1, d[col], label=comp, **line_kw(style_b, COMP_MARKER[comp]))
            drawn = True
    ax.axhline(1.0, color="0.3", linestyle="--", linewidth=1.1, label="no preference (= 1)")
    if not drawn:
        ax.text(0.5, 0.5, "ΔW = 0 in every mlp_in and qkv matrix", transform=ax.transAxes, ha="center")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("decoder layer (its values are in row layer + 1 of the CSV)")
    ax.set_ylabel("ΔW read share on forget / on retain text")
    ax.set_title(f"{name}: does ΔW ({label_b}) read from forget directions?")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def make_geometry_plots(csv, outdir, name, label_a, label_b, b_index: int = 1) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = read_geometry(csv)
    out = check_outdir(outdir, "probe_auc.png", owned=("probe_auc.png", "cka.png", "effective_rank.png",
                                                      "dW_read_selectivity.png"))
    style_a, style_b = model_style(label_a, 0), model_style(label_b, b_index)
    figs = {"probe_auc.png": plot_probe(df, name, style_a, style_b),
            "cka.png": plot_cka(df, name, style_b),
            "effective_rank.png": plot_rank(df, name, style_a, style_b),
            "dW_read_selectivity.png": plot_selectivity(df, name, style_b)}
    try:
        write_atomically({out / f: (lambda p, fig=fig: fig.savefig(p, dpi=150, bbox_inches="tight", format="png"))
                          for f, fig in figs.items()})
    finally:
        for fig in figs.values():
            plt.close(fig)
    return [out / f for f in figs]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", required=True, help="activation_geometry.csv from collect_activation_geometry.py")
    p.add_argument("--outdir", required=True, help="where the PNGs go")
    p.add_argument("--name", default=None, help="comparison name for the titles (default: the CSV's grandparent folder)")
    p.add_argument("--model-a-label", default="model A", help="model A's name in legends")
    p.add_argument("--model-b-label", default="model B", help="model B's name in legends")
    p.add_argument("--model-b-index", type=int, default=1,
                   help="model B's position in the study (1 = first of COMPARE_WITH): picks its colour (default: 1)")
    return p


def run(args) -> int:
    if args.model_b_index < 1:
        raise UsageError("--model-b-index must be 1 or more (0 is the reference model A)")
    name = args.name or Path(args.csv).resolve().parent.parent.name
    for path in make_geometry_plots(args.csv, args.outdir, name, args.model_a_label, args.model_b_label, args.model_b_index):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(lambda: run(args), kept="no PNG was half-written")


if __name__ == "__main__":
    sys.exit(main())
