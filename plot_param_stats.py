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


REQUIRED = ["layer", "group", "dW_fro_layer", "mean_dW_stable_rank", "count_mats"]
STYLE = {"attn": dict(color="#1f77b4", marker="o", label="attention"),
         "mlp": dict(color="#d62728", marker="s", label="MLP"),
         "other": dict(color="#7f7f7f", marker="^", label="other")}


class UsageError(Exception):
    """Bad input: reported as one `error: ...` line on stderr, exit status 1."""


def load_per_layer(stats_dir: Path) -> pd.DataFrame:
    """per_layer.csv, checked for the columns the plots need and for at least one row."""
    path = stats_dir / "per_layer.csv"
    if not path.is_file():
        raise UsageError(f"{path} not found; run collect_param_stats.py (or ./run_params_local.sh) first")
    try:
        table = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise UsageError(f"cannot read {path}: {first_line(exc)}") from exc
    missing = [c for c in REQUIRED if c not in table.columns]
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


def plot_by_layer(table: pd.DataFrame, column: str, ylabel: str, title: str, path: Path,
                  log: bool = False, reference: float | None = None) -> None:
    """NaN values (layers where nothing changed) are left as gaps; the x axis keeps every layer."""
    """One line per group (attn, mlp, other) of `column` against the decoder-layer index."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for group in [g for g in STYLE if g in set(table["group"])] + sorted(set(table["group"]) - set(STYLE)):
        rows = table[table["group"] == group].sort_values("layer")
        ax.plot(rows["layer"], rows[column], linewidth=1.6, markersize=4,
                **STYLE.get(group, dict(marker="x", label=group)))
    if reference is not None:
        ax.axhline(reference, color="black", linewidth=0.8, linestyle=":", label="rank-1 edit (= 1)")
    if log:
        ax.set_yscale("log")
        top = table[column].max()
        # stable ranks are ≥ 1: keep 1 in view and at least a factor 2 of range so the ticks read
        ax.set_ylim(0.8, max(2.0, 1.5 * top) if top == top else 2.0)
    layers = sorted(set(table["layer"]))
    if len(layers) <= 40:
        ax.set_xticks(layers)
    ax.set_xlabel("decoder layer index")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(frameon=False)
    save_figure(fig, path)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Plots of per_layer.csv from collect_param_stats.py.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stats-dir", required=True, help="folder holding per_layer.csv")
    p.add_argument("--outdir", required=True, help="folder for the PNGs")
    p.add_argument("--name", required=True, help="comparison name: file suffix and title")
    p.add_argument("--model-a-label", default="model A", help="name of model A in the titles")
    p.add_argument("--model-b-label", default="model B", help="name of model B in the titles")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        table = load_per_layer(Path(args.stats_dir))
        outdir = Path(args.outdir)
        pair = f"{args.model_a_label} → {args.model_b_label}"
        locality = outdir / f"layer_locality_{args.name}.png"
        plot_by_layer(table, "dW_fro_layer", "‖ΔW‖_F of the layer (weight units, √Σ over its matrices)",
                      f"Where the weights moved: ‖W_B − W_A‖_F per layer\n{pair}", locality)
        stable = outdir / f"stable_rank_{args.name}.png"
        if table["mean_dW_stable_rank"].isna().all():
            print(f"warning: no layer changed between {pair}; {stable.name} shows no data", file=sys.stderr)
        plot_by_layer(table, "mean_dW_stable_rank", "mean stable rank ‖ΔW‖_F²/‖ΔW‖_2² (dimensionless)",
                      f"How the change is shaped: ≈1 surgical low-rank edit, large broad drift\n{pair}",
                      stable, log=True, reference=1.0)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"wrote {locality} and {stable}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
