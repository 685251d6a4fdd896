# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "matplotlib>=3.7",
#     "pyyaml>=6.0",
# ]
# ///
"""Recovery curves of a fine-tuning attack (from tamper_attack.py): does the knowledge come back?

One figure, ``recovery.png`` in --outdir, one line per attacked model (in the order they were
attacked; the first is the reference):

* left: forget-test NLL against attack steps; the reference model's step-0 level is the dashed
  line and the shaded band above it is the recovery margin; a star marks the step at which a
  model first enters the band (``steps_to_recover``).
* middle: forget MCQ accuracy against attack steps (when the attack measured it), the reference's
  step-0 accuracy dashed.
* right: retain-test NLL: what the attack costs elsewhere.

A model whose forgetting only hid the knowledge drops into the band within a few steps; a model
that never learned it stays above the dashed line for the whole attack.

Usage:
    uv run --script plot_tamper.py [--indir outputs/tamper] [--outdir plots/tamper]
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import tempfile
from pathlib import Path

CURVE_COLUMNS = ["step", "forget_nll", "retain_nll", "mcq_forget_acc"]
COLORS = ["black", "tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "h"]


class UsageError(Exception):
    """Bad input: reported as one ``error: ...`` line, exit status 1."""


def to_float(cell: str) -> float:
    """A CSV cell as a float; an empty cell (not measured) is NaN."""
    return float(cell) if cell.strip() else math.nan


def read_curve(path: Path) -> dict[str, list[float]]:
    """An attack_curve.csv as columns of floats."""
    if not path.is_file():
        raise UsageError(f"{path} does not exist; was the attack run with this --indir?")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or any(c not in rows[0] for c in CURVE_COLUMNS):
        raise UsageError(f"{path} must have the columns {', '.join(CURVE_COLUMNS)} and at least one row")
    try:
        return {c: [to_float(r[c]) for r in rows] for c in CURVE_COLUMNS}
    except (TypeError, ValueError):
        raise UsageError(f"{path} has a cell that is not a number") from None


def read_inputs(indir: Path) -> tuple[list[dict], float, float]:
    """Models in attack order (summary.csv) with their curves, the reference level and margin."""
    import yaml
    summary, report = indir / "summary.csv", indir / "attack_report.yaml"
    for p in (summary, report):
        if not p.is_file():
            raise UsageError(f"{p} does not exist; run tamper_attack.py --outdir {indir} first")
    with open(summary, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "model" not in rows[0] or "steps_to_recover" not in rows[0]:
        raise UsageError(f"{summary} has no model rows")
    try:
        ref = yaml.safe_load(report.read_text(encoding="utf-8"))["Reference"]
        level, margin = float(ref["forget_nll_step0"]), float(ref["recover_margin"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        raise UsageError(f"{report} has no Reference: forget_nll_step0 / recover_margin") from None
    models = [{"name": r["model"], "curve": read_curve(indir / r["model"] / "attack_curve.csv"),
               "recover": int(r["steps_to_recover"]) if r["steps_to_recover"].strip() else None} for r in rows]
    return models, level, margin


def draw(models: list[dict], level: float, margin: float):
    """The figure (matplotlib): forget NLL | MCQ accuracy (when measured) | retain NLL."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_mcq = any(not math.isnan(v) for m in models for v in m["curve"]["mcq_forget_acc"])
    panels = ["forget_nll"] + (["mcq_forget_acc"] if has_mcq else []) + ["retain_nll"]
    titles = {"forget_nll": "Forget-test NLL (nats, lower = knows it)",
              "mcq_forget_acc": "Forget MCQ accuracy", "retain_nll": "Retain-test NLL (nats)"}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), constrained_layout=True)
    ref_name = models[0]["name"]
    for ax, col in zip(axes, panels):
        for i, m in enumerate(models):
            c = m["curve"]
            label = f"{m['name']} (reference)" if i == 0 else m["name"]
            ax.plot(c["step"], c[col], color=COLORS[i % len(COLORS)], marker=MARKERS[i % len(MARKERS)],
                    markersize=3.5, linewidth=1.6, label=label)
            if col == "forget_nll" and m["recover"] is not None and i > 0:
                y = c[col][c["step"].index(m["recover"])]
                ax.plot([m["recover"]], [y], marker="*", markersize=13, color=COLORS[i % len(COLORS)],
                        markeredgecolor="white", zorder=5, linestyle="none")
        ref0 = models[0]["curve"][col][0]
        if not math.isnan(ref0):
            ax.axhline(ref0, color="0.3", linestyle="--", linewidth=1.1,
                       label=f"{ref_name} before the attack")
        if col == "forget_nll":
            ax.axhspan(level, level + margin, color="0.85", zorder=0, label=f"recovered (≤ +{margin:g} nats)")
        ax.set_title(titles[col], fontsize=11)
        ax.set_xlabel("attack step")
        ax.grid(alpha=0.3, linewidth=0.6)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].legend(fontsize=8, frameon=False)
    if has_mcq:
        axes[1].set_ylim(-0.03, 1.03)
    fig.suptitle("Fine-tuning attack: does the forgotten knowledge come back? (★ = first step in the band)",
                 fontsize=12)
    return fig


def save_figure(fig, path: Path) -> None:
    """savefig to a temp file beside ``path``, then os.replace (never a half-written PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--indir", default="outputs/tamper", help="tamper_attack.py's --outdir")
    p.add_argument("--outdir", default="plots/tamper", help="where recovery.png goes")
    a = p.parse_args(argv)
    try:
        models, level, margin = read_inputs(Path(a.indir))
        out = Path(a.outdir)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--outdir {out} exists and is not a folder")
        try:
            save_figure(draw(models, level, margin), out / "recovery.png")
        except OSError as e:
            raise UsageError(f"cannot write {out / 'recovery.png'}: {e.strerror or e}") from None
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    print(f"wrote {out / 'recovery.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
