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


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message, or the exception's type name when the
    message is empty (``str(e).splitlines()[0]`` raises IndexError there)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


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
# --- end shared helpers ---


SPLIT_STYLE = {"forget": dict(linestyle="-", marker="o"), "retain": dict(linestyle="--", marker="s")}
COMP_STYLE = {"mlp_in": dict(marker="o", linestyle="-"), "qkv": dict(marker="^", linestyle="--")}
NEEDED = ["layer", "probe_auc_a", "probe_auc_a_std", "probe_auc_b", "probe_auc_b_std", "cka_forget", "cka_retain",
          "eff_rank_forget_a", "eff_rank_forget_b", "eff_rank_retain_a", "eff_rank_retain_b",
          "dW_read_selectivity_mlp_in", "dW_read_selectivity_qkv"]


def model_colour(index: int) -> str:
    """Colour of the model at position ``index`` of the study (0 = the reference model A: black)."""
    return MODEL_COLOURS[index % len(MODEL_COLOURS)]


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


def plot_probe(df, name, label_a, label_b, colour_b):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    for tag, label, colour, marker in (("a", label_a, model_colour(0), "o"), ("b", label_b, colour_b, "s")):
        m, s = df[f"probe_auc_{tag}"], df[f"probe_auc_{tag}_std"]
        ax.plot(df["layer"], m, marker=marker, color=colour, label=f"{'AB'[tag == 'b']}: {label}")
        ax.fill_between(df["layer"], m - s, (m + s).clip(upper=1.0), color=colour, alpha=0.15, linewidth=0)
    ax.axhline(0.5, color="0.5", linestyle=":", linewidth=1, label="chance (0.5)")
    ax.set_ylim(0.4, 1.02)
    ax.set_ylabel("forget-vs-retain probe ROC AUC (± fold std)")
    ax.set_title(f"{name}: linear separability of forget and retain text")
    style_geometry_axis(ax)
    ax.legend(fontsize=8)
    return fig


def plot_cka(df, name, label_b, colour_b):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    for split in ("forget", "retain"):
        ax.plot(df["layer"], df[f"cka_{split}"], color=colour_b, label=f"{split} text", **SPLIT_STYLE[split])
    ax.set_ylim(min(0.0, float(df[["cka_forget", "cka_retain"]].min().min())), 1.02)
    ax.set_ylabel("linear CKA(A, B), per-token activations")
    ax.set_title(f"{name}: how alike A and B ({label_b}) represent text")
    style_geometry_axis(ax)
    ax.legend(fontsize=8)
    return fig


def plot_rank(df, name, label_a, label_b, colour_b):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    for tag, label, colour in (("a", label_a, model_colour(0)), ("b", label_b, colour_b)):
        for split in ("forget", "retain"):
            ax.plot(df["layer"], df[f"eff_rank_{split}_{tag}"], color=colour,
                    label=f"{'AB'[tag == 'b']}: {label}, {split}", **SPLIT_STYLE[split])
    ax.set_ylabel("effective rank (99% of the centred covariance's energy)")
    ax.set_title(f"{name}: dimensionality of the representations")
    style_geometry_axis(ax)
    ax.legend(fontsize=8)
    return fig


def plot_selectivity(df, name, label_b, colour_b):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    drawn = False
    for comp in ("mlp_in", "qkv"):
        col = f"dW_read_selectivity_{comp}"
        d = df[df[col].notna()]
        if len(d):
            ax.plot(d["layer"] - 1, d[col], color=colour_b, label=comp, **COMP_STYLE[comp])
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
    colour_b = model_colour(b_index)
    figs = {"probe_auc.png": plot_probe(df, name, label_a, label_b, colour_b),
            "cka.png": plot_cka(df, name, label_b, colour_b),
            "effective_rank.png": plot_rank(df, name, label_a, label_b, colour_b),
            "dW_read_selectivity.png": plot_selectivity(df, name, label_b, colour_b)}
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


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.model_b_index < 1:
        p.error("--model-b-index must be 1 or more (0 is the reference model A)")
    name = args.name or Path(args.csv).resolve().parent.parent.name
    try:
        for path in make_geometry_plots(args.csv, args.outdir, name, args.model_a_label, args.model_b_label, args.model_b_index):
            print(f"wrote {path}", file=sys.stderr)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; no PNG was half-written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
