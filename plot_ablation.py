# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "matplotlib>=3.7",
# ]
# ///
"""Training-free attacks (from ablation_attack.py): how much of the forgotten knowledge comes back?

One figure, ``ablation.png`` in --outdir: a column per attack that was run (directional ablation
by candidate layer, ΔW rank ablation by rank r, RTN quantisation by bit width), one line per
attacked model in the model's colour of every figure of the study (the reference, black, is the
target and is not drawn as a line).

* top row: the recovered share of the forget-NLL gap, (NLL_model − NLL_attacked) / (NLL_model −
  NLL_reference); 1 (dashed) = back at the reference, 0 = nothing came back. A star marks the
  direction candidate chosen on the direction data.
* bottom row: the retain-test NLL under the attack, the reference's level dashed: what the attack
  costs elsewhere.

Usage:
    uv run --script plot_ablation.py [--indir outputs/ablation] [--outdir plots/ablation]
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

ATTACK_PANELS = {"direction": ("Directional ablation", "residual position ablated from (layer)"),
                 "delta_rank": ("ΔW rank ablation", "top-r part of ΔW removed (r)"),
                 "quantize": ("RTN quantisation", "bits")}

ABLATION_CSV_COLUMNS = ["model", "role", "attack", "setting", "value", "retain_nll", "recovered", "selected"]


def cell_float(cell: str) -> float:
    """A CSV cell as a float; an empty cell (not defined) is NaN."""
    return float(cell) if cell.strip() else math.nan


def read_results(indir: Path) -> dict:
    """{'models': [reference, attacked ...] in the run's order, 'reference_retain': float,
    'series': {attack: {model: [(value, recovered, retain_nll, selected), ...] sorted by value}}}."""
    path = indir / "ablation.csv"
    if not path.is_file():
        raise UsageError(f"{path} does not exist; run ablation_attack.py --outdir {indir} first")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or any(c not in rows[0] for c in ABLATION_CSV_COLUMNS):
        raise UsageError(f"{path} must have the columns {', '.join(ABLATION_CSV_COLUMNS)} and at least one row")
    refs = [r for r in rows if r["role"] == "reference"]
    if len(refs) != 1:
        raise UsageError(f"{path} must have exactly one reference row")
    models = [refs[0]["model"]] + list(dict.fromkeys(r["model"] for r in rows if r["role"] == "attacked"))
    series: dict = {}
    try:
        ref_retain = cell_float(refs[0]["retain_nll"])
        for r in rows:
            if r["role"] != "attacked" or r["attack"] not in ATTACK_PANELS or r["setting"].startswith("bnb="):
                continue
            series.setdefault(r["attack"], {}).setdefault(r["model"], []).append(
                (cell_float(r["value"]), cell_float(r["recovered"]), cell_float(r["retain_nll"]), r["selected"] == "1"))
    except ValueError:
        raise UsageError(f"{path} has a cell that is not a number") from None
    for per_model in series.values():
        for pts in per_model.values():
            pts.sort()
    return {"models": models, "reference_retain": ref_retain, "series": series}


def draw(res: dict):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = [a for a in ATTACK_PANELS if a in res["series"]]
    if not attacks:
        raise UsageError("the results hold no attack rows to draw")
    fig, axes = plt.subplots(2, len(attacks), figsize=(4.4 * len(attacks), 6.4), squeeze=False,
                             constrained_layout=True)
    for col, attack in enumerate(attacks):
        top, bottom = axes[0][col], axes[1][col]
        for name, pts in res["series"][attack].items():
            # the model's position in the study (0 = the reference, then the attacked models in the run's
            # order = COMPARE_WITH's): the same colour, line and marker as in every other figure
            style = model_style(name, res["models"].index(name))
            colour = style["color"]
            x = [p[0] for p in pts]
            top.plot(x, [p[1] for p in pts], markersize=4, linewidth=1.6, **style)
            bottom.plot(x, [p[2] for p in pts], markersize=4, linewidth=1.6, **style)
            for p in pts:
                if p[3] and not math.isnan(p[1]):
                    top.plot([p[0]], [p[1]], marker="*", markersize=14, color=colour, markeredgecolor="white",
                             zorder=5, linestyle="none")
        ref_colour = model_style(res["models"][0], 0)["color"]
        top.axhline(1.0, color=ref_colour, linestyle="--", linewidth=1.0, label=f"{res['models'][0]} (reference)")
        top.axhline(0.0, color="0.6", linewidth=0.8)
        if not math.isnan(res["reference_retain"]):
            bottom.axhline(res["reference_retain"], color=ref_colour, linestyle="--", linewidth=1.0,
                           label=f"{res['models'][0]} (reference)")
        title, xlabel = ATTACK_PANELS[attack]
        top.set_title(title, fontsize=11)
        top.set_ylabel("recovered share of the forget-NLL gap" if col == 0 else "")
        bottom.set_ylabel("retain-test NLL (nats)" if col == 0 else "")
        bottom.set_xlabel(xlabel)
        values = sorted({p[0] for pts in res["series"][attack].values() for p in pts if not math.isnan(p[0])})
        for ax in (top, bottom):
            if attack == "delta_rank" and values and values[0] > 0:
                ax.set_xscale("log", base=2)
            ax.set_xticks(values)
            ax.set_xticklabels([f"{v:g}" for v in values])
            ax.minorticks_off()
        for ax in (top, bottom):
            ax.grid(alpha=0.3, linewidth=0.6)
            ax.spines[["top", "right"]].set_visible(False)
    axes[0][0].legend(fontsize=8, frameon=False, loc="center right")
    fig.suptitle("Training-free attacks: how much of the forget-NLL gap comes back? (★ = layer chosen on the "
                 "direction data)", fontsize=12)
    return fig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--indir", default="outputs/ablation", help="ablation_attack.py's --outdir")
    p.add_argument("--outdir", default="plots/ablation", help="where ablation.png goes")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> int:
        res = read_results(Path(args.indir))
        out = check_outdir(args.outdir, "ablation.png", owned=("ablation.png",))
        fig = draw(res)
        write_atomically({out / "ablation.png": lambda p: fig.savefig(p, format="png", dpi=150, bbox_inches="tight")})
        print(f"wrote {out / 'ablation.png'}")
        return 0

    return run_tool(work, kept="nothing was written")


if __name__ == "__main__":
    sys.exit(main())
