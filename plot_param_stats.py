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
        raise UsageError(f"cannot read {path}: {str(exc).strip().splitlines()[0]}") from exc
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise UsageError(f"{path} lacks the columns {', '.join(missing)}; was it written by collect_param_stats.py?")
    if table.empty:
        raise UsageError(f"{path} has no rows (no weight matrices inside decoder layers?)")
    return table


def save_figure(fig, path: Path) -> None:
    """savefig to a temp file beside `path`, then os.replace (never a half-written PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


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
