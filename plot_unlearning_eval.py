# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "matplotlib>=3.7",
#     "numpy>=1.24",
# ]
# ///
"""Plot the evidence of forgetting: one figure, three panels, one group of bars per model.

Reads ``<indir>/*/summary.json`` (written by evaluate_unlearning.py) and draws
``forgetting_summary.png``:
  (a) forget-test and retain-test NLL with their 95% bootstrap intervals;
  (b) multiple-choice accuracy per set or task with its standard error, and the chance level;
  (c) membership-inference ROC AUC of the four attacks, with the 0.5 line (attacker cannot tell).
Real forgetting: forget NLL up, forget MCQ at chance, MIA AUC at 0.5, retain bars unchanged.

Usage:
    uv run --script plot_unlearning_eval.py [--indir outputs/eval] [--out plots/eval/forgetting_summary.png]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ATTACK_LABELS = {"loss": "LOSS", "zlib": "ZLib", "mink": "Min-K%", "minkpp": "Min-K%++"}


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


ATTACKS = ("loss", "zlib", "mink", "minkpp")


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


def read_summaries(indir: Path) -> list[dict]:
    """The summary.json of every model folder in ``indir``, in the row order of ``summary.csv`` when
    there is one (the order the models were given), else by name."""
    if not indir.is_dir():
        raise UsageError(f"{indir} does not exist; run evaluate_unlearning.py first")
    files = sorted(indir.glob("*/summary.json"))
    if not files:
        raise UsageError(f"{indir} holds no <model>/summary.json; run evaluate_unlearning.py first")
    out = []
    for f in files:
        try:
            s = json.loads(f.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise UsageError(f"{f} is not valid JSON ({e})") from None
        missing = [k for k in ("forget_nll", "retain_nll", "mia", "mcq") if k not in s]
        if missing:
            raise UsageError(f"{f} lacks {', '.join(missing)}; was it written by evaluate_unlearning.py?")
        s.setdefault("model_name", f.parent.name)
        out.append(s)
    order_file = indir / "summary.csv"
    if order_file.is_file():
        names = [line.split(",")[0] for line in order_file.read_text().splitlines()[1:]]
        rank = {n: i for i, n in enumerate(names)}
        out.sort(key=lambda s: (rank.get(s["model_name"], len(rank)), s["model_name"]))
    return out


def _num(x):
    return float("nan") if x is None else float(x)


def draw(summaries: list[dict]):
    """The three-panel figure (matplotlib Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [s["model_name"] for s in summaries]
    colors = [model_style(n, i)["color"] for i, n in enumerate(names)]  # model i's colour in every figure
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    x = np.arange(2)

    def grouped(ax, categories, value, err=None):
        width = 0.8 / len(summaries)
        for i, s in enumerate(summaries):
            pos = np.arange(len(categories)) - 0.4 + width * (i + 0.5)
            vals = [value(s, c) for c in categories]
            yerr = None
            if err is not None:
                yerr = np.array([err(s, c) for c in categories]).T
            ax.bar(pos, vals, width, yerr=yerr, capsize=3, color=colors[i], label=names[i],
                   edgecolor="black", linewidth=0.5, error_kw={"elinewidth": 1})
        ax.set_xticks(np.arange(len(categories)))

    # (a) NLL with bootstrap CI
    ax = axes[0]
    splits = ["forget", "retain"]

    def nll_err(s, c):
        v, (lo, hi) = _num(s[f"{c}_nll"]), [_num(t) for t in s.get(f"{c}_nll_ci95") or (None, None)]
        return [max(v - lo, 0), max(hi - v, 0)]

    grouped(ax, splits, lambda s, c: _num(s[f"{c}_nll"]), nll_err)
    ax.set_xticklabels(["forget test", "retain test"])
    ax.set_ylabel("mean token NLL (nats)")
    ax.set_title("(a) NLL on untouched test lines (95% CI)")

    # (b) MCQ accuracy
    ax = axes[1]
    tasks = list(dict.fromkeys(t for s in summaries for t in s["mcq"]))
    if tasks:
        grouped(ax, tasks, lambda s, t: _num(s["mcq"].get(t, {}).get("acc")),
                lambda s, t: [_num(s["mcq"].get(t, {}).get("acc_stderr"))] * 2)
        ax.set_xticklabels([f"{t} MCQ" if t in ("forget", "retain") else t for t in tasks])
        for j, t in enumerate(tasks):
            chance = next((s.get("mcq_chance", {}).get(t) for s in summaries if s.get("mcq_chance", {}).get(t)), None)
            if chance:
                ax.hlines(chance, j - 0.45, j + 0.45, colors="black", linestyles="--", linewidth=1.2,
                          label="chance" if j == 0 else None)
        ax.set_ylim(0, 1)
    else:
        ax.text(0.5, 0.5, "no multiple-choice sets", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("accuracy (lm-eval acc ± s.e.)")
    ax.set_title("(b) multiple choice (dashed: chance)")

    # (c) MIA AUC
    ax = axes[2]
    grouped(ax, list(ATTACKS), lambda s, a: _num(s["mia"].get(a)))
    ax.set_xticklabels([ATTACK_LABELS[a] for a in ATTACKS])
    ax.axhline(0.5, color="black", linestyle="--", linewidth=1.2)
    ax.set_ylim(0, 1)
    ax.set_ylabel("ROC AUC (forget train vs forget test)")
    ax.set_title("(c) membership inference (dashed: 0.5)")

    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(names), 4), frameon=False,
               bbox_to_anchor=(0.5, -0.08))
    fig.suptitle("Is the knowledge gone? Forgetting evidence per model", fontsize=13)
    return fig


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--indir", default="outputs/eval", help="evaluate_unlearning.py's outdir (default: %(default)s)")
    p.add_argument("--out", default="plots/eval/forgetting_summary.png", help="the PNG (default: %(default)s)")
    p.add_argument("--dpi", type=int, default=150, help="resolution (default: %(default)s)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def work() -> None:
        summaries = read_summaries(Path(args.indir))
        out = Path(args.out)
        if out.is_dir():
            raise UsageError(f"--out {out} is a folder; give a .png path")
        fig = draw(summaries)
        write_atomically({out: lambda p: fig.savefig(p, format="png", dpi=args.dpi, bbox_inches="tight")})
        print(f"wrote {out}", file=sys.stderr)

    return run_tool(work, kept="nothing was written")


if __name__ == "__main__":
    sys.exit(main())
