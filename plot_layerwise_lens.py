# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "pandas>=2.0",
#     "matplotlib>=3.7",
# ]
# ///
"""Plot layerwise.csv (from layerwise_lens.py): MCQ accuracy, NLL and KL to the output at every layer.

One figure, ``layerwise_lens.png``, in --outdir: a row per measure (forget MCQ accuracy, retain MCQ
accuracy, forget NLL, retain NLL, KL to the final layer), the logit lens on the left and the tuned
lens on the right, one line per model (the reference model black, the others in the study's
colour-blind-safe palette in their order in the CSV, the same colours as every other figure),
chance level dashed on the accuracy panels. Knowledge that is only suppressed shows as a forget-MCQ
curve that rises above chance in the middle layers and falls back at the end; a model that never
learned it stays at chance at every depth.

x axis: the hidden_states index (0 = embeddings, l = after decoder layer l − 1).

Usage:
    uv run --script plot_layerwise_lens.py --csv outputs/lens/layerwise.csv --outdir plots/lens
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REQUIRED = ["model", "lens", "layer", "mcq_forget_acc", "mcq_retain_acc", "forget_nll", "retain_nll", "kl_to_final",
            "mcq_forget_chance", "mcq_retain_chance"]
PANELS = [("mcq_forget_acc", "forget MCQ accuracy", "mcq_forget_chance"),
          ("mcq_retain_acc", "retain MCQ accuracy", "mcq_retain_chance"),
          ("forget_nll", "forget NLL (nats/token)", None),
          ("retain_nll", "retain NLL (nats/token)", None),
          ("kl_to_final", "KL to the output (nats/token,\nretain test)", None)]
LENS_TITLES = {"logit": "logit lens", "tuned": "tuned lens"}


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


def read_layerwise(path):
    """layerwise.csv as a DataFrame, or a one-line reason why not."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p} does not exist; run run_lens.sh (layerwise_lens.py) first")
    try:
        df = pd.read_csv(p)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        raise UsageError(f"{p} is empty or not a CSV file") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise UsageError(f"{p} lacks the column(s) {', '.join(missing)}; is it a layerwise.csv?")
    if df.empty:
        raise UsageError(f"{p} has no rows")
    return df


def model_styles(models: list[str]) -> dict:
    """The study's look of each model: position in the study (reference first) -> model_style."""
    return {m: model_style(m, i) for i, m in enumerate(models)}


def plot_layerwise(df, title: str):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    models = list(dict.fromkeys(df["model"]))
    lenses = [x for x in ("logit", "tuned") if x in set(df["lens"])]
    panels = [p for p in PANELS if df[p[0]].notna().any()]
    styles = model_styles(models)
    fig, axes = plt.subplots(len(panels), len(lenses), figsize=(5.2 * len(lenses), 2.6 * len(panels)),
                             sharex=True, sharey="row", squeeze=False, constrained_layout=True)
    for row, (col, label, chance) in enumerate(panels):
        for c, lens in enumerate(lenses):
            ax = axes[row][c]
            for m in models:
                d = df[(df["model"] == m) & (df["lens"] == lens)].sort_values("layer")
                ax.plot(d["layer"], d[col], ms=3, **styles[m])
            if chance is not None:
                level = df[chance].dropna()
                if len(level):
                    ax.axhline(float(level.iloc[0]), ls="--", color="grey", lw=1, label="chance")
            if row == 0:
                ax.set_title(LENS_TITLES[lens])
            if c == 0:
                ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if row == len(panels) - 1:
                ax.set_xlabel("hidden_states index (0 = embeddings)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    return fig


def make_plot(csv, outdir, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = read_layerwise(csv)
    out = check_outdir(outdir, "layerwise_lens.png", owned=("layerwise_lens.png",))
    fig = plot_layerwise(df, title or "What each layer knows: MCQ accuracy and NLL through the logit and tuned lens")
    path = out / "layerwise_lens.png"
    write_atomically({path: lambda p: fig.savefig(p, dpi=150, bbox_inches="tight", format="png")})
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", default="outputs/lens/layerwise.csv", help="layerwise.csv (default: %(default)s)")
    p.add_argument("--outdir", default="plots/lens", help="where the PNG goes (default: %(default)s)")
    p.add_argument("--title", default=None, help="figure title")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> int:
        print(f"wrote {make_plot(args.csv, args.outdir, args.title)}", file=sys.stderr)
        return 0

    return run_tool(work, kept="nothing half-written")


if __name__ == "__main__":
    sys.exit(main())
