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


# --- shared helpers (copied; tests/test_helper_copies.py keeps the copies identical) ---
# (the ones this script needs, verbatim, in the canonical order; they use the script's imports
# and its UsageError, which main() turns into one `error:` line and exit status 1)
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


def write_atomically(files: dict) -> None:
    """Write each ``{path: content}`` to a temporary file beside ``path``, then rename them all
    into place. ``content``: str (written as UTF-8, line ends as given), bytes, or a function that
    writes the file at the path it is given (``lambda p: fig.savefig(p, format="png")``). Files get
    the ordinary mode 0666 & ~umask (mkstemp makes 0600), missing folders 0777 & ~umask. On any
    error or Ctrl-C the temporary files are removed and every existing file stays as it was."""
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
    except BaseException:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)
        raise
# --- end shared helpers ---


REQUIRED = ["layer", "split", "model_a_norm_L1", "model_a_norm_L2", "model_b_norm_L1", "model_b_norm_L2",
            "mean_dh_L1", "mean_dh_L2"]
SPLIT_STYLE = {"forget": dict(color="tab:red", marker="o"), "retain": dict(color="tab:blue", marker="s")}


class UsageError(Exception):
    """Bad input: reported as one line on stderr, exit status 1."""


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
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise UsageError(f"{p} lacks the column(s) {', '.join(missing)}; is it an activation_stats.csv?")
    if df.empty:
        raise UsageError(f"{p} has no rows")
    return df.sort_values(["split", "layer"]).reset_index(drop=True)


def save_atomic(fig, path: Path) -> None:
    write_atomically({path: lambda p: fig.savefig(p, dpi=150, bbox_inches="tight", format="png")})


def style_layer_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer (hidden_states index: 0 = embeddings, last = after final norm)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_norms(df, split: str, name: str, label_a: str, label_b: str):
    """Mean ||h||_1 and ||h||_2 of both models over layers, on one split.

    Norms in deep transformers grow by orders of magnitude from the embeddings to the last layers;
    when they span more than a factor 100 the y axis is logarithmic so the early layers stay visible.
    """
    import matplotlib.pyplot as plt

    d = df[df["split"] == split]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, p in zip(axes, ("L1", "L2")):
        ax.plot(d["layer"], d[f"model_a_norm_{p}"], "o-", color="tab:gray", label=f"A: {label_a}")
        ax.plot(d["layer"], d[f"model_b_norm_{p}"], "s--", color="tab:purple", label=f"B: {label_b}")
        sub = "₁" if p == "L1" else "₂"
        values = d[[f"model_a_norm_{p}", f"model_b_norm_{p}"]].to_numpy()
        positive = values[values > 0]
        log = positive.size == values.size and positive.max() > 100 * positive.min()
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(f"mean ‖h‖{sub} per token" + (" (log scale)" if log else ""))
        ax.set_title(f"{p} norm of hidden states")
        style_layer_axis(ax)
    fig.suptitle(f"{name}: activation norms on {split} text\nA: {label_a}   B: {label_b}")
    return fig


def plot_diffs(df, name: str, label_a: str, label_b: str):
    """Mean ||h_B - h_A||_1 and _2 over layers, forget and retain as two lines."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, p in zip(axes, ("L1", "L2")):
        for split, d in df.groupby("split", sort=True):
            style = SPLIT_STYLE.get(split, {})
            ax.plot(d["layer"], d[f"mean_dh_{p}"], "-", label=f"{split} text", **style)
        sub = "₁" if p == "L1" else "₂"
        ax.set_ylabel(f"mean ‖h_B − h_A‖{sub} per token")
        ax.set_title(f"{p} norm of the activation difference")
        style_layer_axis(ax)
    fig.suptitle(f"{name}: activation change, forget vs retain\nA: {label_a}   B: {label_b}")
    return fig


def make_plots(csv: str | os.PathLike, outdir: str | os.PathLike, name: str, label_a: str, label_b: str):
    """Write the three PNGs; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = read_stats(csv)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split in sorted(df["split"].unique()):
        fig = plot_norms(df, split, name, label_a, label_b)
        written.append(out / f"activation_norms_{split}.png")
        save_atomic(fig, written[-1])
        plt.close(fig)
    fig = plot_diffs(df, name, label_a, label_b)
    written.append(out / "activation_diffs_forget_vs_retain.png")
    save_atomic(fig, written[-1])
    plt.close(fig)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", required=True, help="activation_stats.csv from collect_activation_norms.py")
    p.add_argument("--outdir", required=True, help="where the PNGs go")
    p.add_argument("--name", default=None, help="comparison name for the titles (default: the CSV's grandparent folder)")
    p.add_argument("--model-a-label", default="model A", help="model A's name in legends")
    p.add_argument("--model-b-label", default="model B", help="model B's name in legends")
    args = p.parse_args(argv)
    name = args.name or Path(args.csv).resolve().parent.parent.name
    try:
        for path in make_plots(args.csv, args.outdir, name, args.model_a_label, args.model_b_label):
            print(f"wrote {path}", file=sys.stderr)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
