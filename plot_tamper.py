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


CURVE_COLUMNS = ["step", "forget_nll", "retain_nll", "mcq_forget_acc"]


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
            style = model_style(label, i)         # model i of the study: the same look in every figure
            ax.plot(c["step"], c[col], markersize=3.5, linewidth=1.6, **style)
            if col == "forget_nll" and m["recover"] is not None and i > 0:
                y = c[col][c["step"].index(m["recover"])]
                ax.plot([m["recover"]], [y], marker="*", markersize=13, color=style["color"],
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--indir", default="outputs/tamper", help="tamper_attack.py's --outdir")
    p.add_argument("--outdir", default="plots/tamper", help="where recovery.png goes")
    a = p.parse_args(argv)

    def work() -> None:
        models, level, margin = read_inputs(Path(a.indir))
        out = check_outdir(a.outdir, "recovery.png", owned=("recovery.png",))
        fig = draw(models, level, margin)
        write_atomically({out / "recovery.png": lambda p: fig.savefig(p, format="png", dpi=150, bbox_inches="tight")})
        print(f"wrote {out / 'recovery.png'}")

    return run_tool(work, kept="nothing was written")


if __name__ == "__main__":
    sys.exit(main())
