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

MODEL_COLOURS = ["#000000", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442"]
REQUIRED = ["model", "lens", "layer", "mcq_forget_acc", "mcq_retain_acc", "forget_nll", "retain_nll", "kl_to_final",
            "mcq_forget_chance", "mcq_retain_chance"]
PANELS = [("mcq_forget_acc", "forget MCQ accuracy", "mcq_forget_chance"),
          ("mcq_retain_acc", "retain MCQ accuracy", "mcq_retain_chance"),
          ("forget_nll", "forget NLL (nats/token)", None),
          ("retain_nll", "retain NLL (nats/token)", None),
          ("kl_to_final", "KL to the output (nats/token,\nretain test)", None)]
LENS_TITLES = {"logit": "logit lens", "tuned": "tuned lens"}


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
# --- end shared helpers ---


class UsageError(Exception):
    """Bad input: reported as one line on stderr, exit status 1."""


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


def model_colours(models: list[str]) -> dict:
    """The study's colour of each model: position in the study (reference first) -> palette entry."""
    return {m: MODEL_COLOURS[i % len(MODEL_COLOURS)] for i, m in enumerate(models)}


def plot_layerwise(df, title: str):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    models = list(dict.fromkeys(df["model"]))
    lenses = [x for x in ("logit", "tuned") if x in set(df["lens"])]
    panels = [p for p in PANELS if df[p[0]].notna().any()]
    colours = model_colours(models)
    fig, axes = plt.subplots(len(panels), len(lenses), figsize=(5.2 * len(lenses), 2.6 * len(panels)),
                             sharex=True, sharey="row", squeeze=False, constrained_layout=True)
    for row, (col, label, chance) in enumerate(panels):
        for c, lens in enumerate(lenses):
            ax = axes[row][c]
            for m in models:
                d = df[(df["model"] == m) & (df["lens"] == lens)].sort_values("layer")
                ax.plot(d["layer"], d[col], "o-", ms=3, color=colours[m], label=m)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", default="outputs/lens/layerwise.csv", help="layerwise.csv (default: %(default)s)")
    p.add_argument("--outdir", default="plots/lens", help="where the PNG goes (default: %(default)s)")
    p.add_argument("--title", default=None, help="figure title")
    args = p.parse_args(argv)
    try:
        print(f"wrote {make_plot(args.csv, args.outdir, args.title)}", file=sys.stderr)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing half-written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
