# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "pyyaml>=6.0",
# ]
# ///
"""One self-contained HTML page that answers the study's question, from what the tools wrote.

    uv run --script report.py [--outputs outputs] [--plots plots] [--out report/index.html] \\
        [--title "..."] [--reference NAME]

It only reads (nothing is recomputed; seconds for a whole study) and writes ONE file: figures are
inlined as base64 PNG (``data:`` URIs), there are no external fonts, scripts or links, and the page
reads without JavaScript (a few lines of inline script make the tables sortable by a click on a
column head).

What it reads, where it exists (a missing piece is skipped with a note naming the tool that makes
it; an unreadable file is named as unreadable and the rest of the page is still written):

  outputs/<A>_vs_<B>/param_stats/per_matrix.csv       collect_param_stats.py
  outputs/<A>_vs_<B>/activation_stats/activation_stats.csv   collect_activation_norms.py
  outputs/<A>_vs_<B>/weight_geometry/weight_geometry.csv     collect_weight_geometry.py
  outputs/<A>_vs_<B>/activation_geometry/activation_geometry.csv   collect_activation_geometry.py
  outputs/eval/summary.csv, <model>/summary.json, <model>/generations.jsonl   evaluate_unlearning.py
  outputs/tamper/summary.csv, attack_report.yaml      tamper_attack.py
  outputs/lens/layerwise.csv                          layerwise_lens.py
  outputs/ablation/ablation.csv, ablation_report.yaml ablation_attack.py
  run reports: */run_report.yaml, */*_report.yaml, the evaluation's summary.json
  plots/**.png                                        the plot tools

Models are named as the tools name them: the evaluation, attack, lens and ablation tools by
evaluate_unlearning.py's model name (hub ID ``org/name`` -> ``org_name``; a folder -> its name, or
its parent's name when it is an ``unlearned_model``), and a comparison folder ``<A>_vs_<B>`` by the
same names of its two models (study.sh's ``comparison_name``). The reference (``--reference``;
default the model A of the comparisons, else the first model the evaluation lists) comes first.

Layer convention of the per-layer join: weight tables number decoder layers k = 0..N-1; activation
tables number ``hidden_states`` rows l = 0..N (0 = embeddings, l = output of decoder layer l-1).
Decoder layer k's weights are joined with activation row k+1, the output of layer k.

Exit status: 0 report written (also for a partial study), 1 error (one ``error:`` line: the page
cannot be written), 2 usage, 130 Ctrl-C, 143 SIGTERM; the page is written to a temporary file and
renamed, so it is never half-written.
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import os
import re
import signal
import statistics
import sys
import tempfile
import time
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


HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def model_name(spec: str) -> str:
    """The project's name of a model (its results folder): hub ID ``org/name`` -> ``org_name``; a
    local folder -> its basename, or its parent's name when the folder is an ``unlearned_model``
    (unlearn.py's layout). A path is made absolute first, so ``.`` and ``..`` name the folders they
    stand for (symbolic links are not followed)."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if not path.is_dir() and not spec.startswith((".", "/", "~")) and spec.count("/") == 1 and HUB_ID_RE.match(spec):
        return spec.replace("/", "_")
    path = Path(os.path.abspath(path))
    name = path.parent.name if path.name == "unlearned_model" and path.parent.name else path.name
    return name or "root"


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
# --- end shared helpers ---


PAIR_SEP = "_vs_"
CHANGED_EPS = 0.0       # a matrix counts as changed when its ‖ΔW‖_F is above this
LOCATION_SHARE = 0.9    # the cells that hold this share of ‖ΔW‖²
GENERATION_PROMPTS = 4  # prompts per split shown side by side
REPORT_ROWS = 80        # rows of one run report shown (the rest: in the file)
NOT_ATTACKS = {"", "none", "reference", "baseline", "unattacked", "model", "original"}
DIAGNOSTIC_ATTACKS = {"delta_rank"}   # needs the reference's weights: not an attacker's recovery

# what makes each piece: (tool, wrapper or step)
TOOLS = {
    "params": ("collect_param_stats.py", "run_params_local.sh"),
    "acts": ("collect_activation_norms.py", "run_activations.sh"),
    "wgeo": ("collect_weight_geometry.py", "its run_*.sh wrapper"),
    "ageo": ("collect_activation_geometry.py", "its run_*.sh wrapper"),
    "eval": ("evaluate_unlearning.py", "pipeline.sh's evaluation step"),
    "tamper": ("tamper_attack.py", "pipeline.sh's tamper-attack step"),
    "lens": ("layerwise_lens.py", "pipeline.sh's lens step"),
    "ablation": ("ablation_attack.py", "pipeline.sh's training-free attack step"),
}

# Figures: (folder name, file-name pattern, one-sentence reading). First match wins.
READINGS = [
    ("param_plots", r"layer_locality", "A spike says in which decoder layers the weights moved (attention and MLP "
                                       "separately)."),
    ("param_plots", r"stable_rank", "A stable rank near 1 is a surgical low-rank edit; a high one is broad drift "
                                    "over many directions."),
    ("activation_plots", r"activation_norms", "Targeted unlearning shows model B's norms falling on forget text "
                                              "while they hold on retain text."),
    ("activation_plots", r"activation_diffs", "Targeted unlearning shows a large Δh on forget text and a small "
                                              "one on retain text."),
    ("weight_geometry", r"spectr", "A spectrum that falls fast is a low-rank change, which a few directions "
                                   "undo; a flat one is broad."),
    ("weight_geometry", r"intruder", "Intruder dimensions are new dominant directions of W_B that W_A does not "
                                     "have (Shuttleworth et al. 2024)."),
    ("weight_geometry", r"colspace|align|overlap", "Above 1 the change lies in the directions W_A already uses "
                                                   "more than a random matrix would; near 1 it does not."),
    ("weight_geometry", r"rank", "A small effective rank of ΔW is a change carried by a few directions."),
    ("weight_geometry", r"component|rel", "Which component of which layer moved most, relative to its own "
                                          "size."),
    ("activation_geometry", r"probe|auc", "A probe AUC near 1 says forget and retain text are still linearly "
                                          "separable: the information is present."),
    ("activation_geometry", r"cka", "A CKA near 1 says both models still represent the text the same way."),
    ("activation_geometry", r"select|read", "Above the dashed baseline, ΔW reads more from forget-text directions "
                                            "than from retain text."),
    ("activation_geometry", r"rank", "An effective rank falling on forget text only is a collapse of its "
                                     "representations."),
    ("eval", r"", "Forgetting without cost is a higher forget NLL, MCQ accuracy near chance and MIA AUC near 0.5, "
                  "with the retain numbers unchanged."),
    ("tamper", r"", "A model that only hid the knowledge drops into the reference's band within a few steps; one "
                    "that never learned it stays above the dashed line."),
    ("lens", r"", "Forget MCQ accuracy above chance at some depth means the knowledge is still inside, "
                  "suppressed only near the output."),
    ("ablation", r"", "A large recovered share means the forgetting is undone without any training."),
]


class Unreadable(Exception):
    """A file of the study that cannot be read: named on the page, the rest still written."""


# ----------------------------------------------------------------------------------------------
# Reading (pure: every reader returns data or raises Unreadable with one line saying why)
# ----------------------------------------------------------------------------------------------
def num(cell) -> float | None:
    """A CSV cell as a float; None for an empty cell or 'nan'/'None'."""
    if cell is None:
        return None
    if isinstance(cell, (int, float)):
        return None if isinstance(cell, float) and math.isnan(cell) else float(cell)
    s = str(cell).strip()
    if s == "" or s.lower() in ("nan", "none", "null"):
        return None
    v = float(s)
    return None if math.isnan(v) else v


def read_csv(path, numeric: tuple = (), required: tuple = ()) -> list[dict]:
    """Rows of a CSV as dicts of strings. ``required`` columns must be in the header; cells of
    ``numeric`` columns (those present) must parse as numbers or be empty. Raises Unreadable naming
    the line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise Unreadable(f"not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise Unreadable(e.strerror or first_line(e)) from None
    if not text.strip():
        raise Unreadable("empty file")
    try:
        reader = csv.DictReader(io.StringIO(text))
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise Unreadable(f"line 1: no column {', '.join(missing)}")
        rows = []
        for row in reader:
            line = reader.line_num
            if None in row or any(v is None for v in row.values()):
                raise Unreadable(f"line {line}: {len(header)} columns expected")
            for c in numeric:
                if c in row:
                    try:
                        num(row[c])
                    except ValueError:
                        raise Unreadable(f"line {line}: {c} = {row[c]!r} is not a number") from None
            rows.append(row)
    except csv.Error as e:
        raise Unreadable(first_line(e)) from None
    if not rows:
        raise Unreadable("no rows")
    return rows


def read_json(path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise Unreadable(first_line(e)) from None
    if not isinstance(data, dict):
        raise Unreadable("not a JSON object")
    return data


def read_jsonl(path) -> list[dict]:
    out = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise Unreadable(first_line(e)) from None
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise Unreadable(f"line {no}: not JSON") from None
        if isinstance(rec, dict):
            out.append(rec)
    return out


def read_yaml(path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise Unreadable(first_line(e)) from None
    if not isinstance(data, dict):
        raise Unreadable("not a YAML mapping")
    return data


# ----------------------------------------------------------------------------------------------
# The math of the summary: pure functions over rows already read (aggregation, no recomputation)
# ----------------------------------------------------------------------------------------------
def split_pair(folder: str, known: list[str]) -> tuple[str, str] | None:
    """The two model names of a comparison folder ``<A>_vs_<B>``. Where the folder holds the
    separator more than once, the split whose sides are known model names wins (else the first).
    A side that is no known name but the hub-ID name of exactly one (``org_<side>``: a folder made
    by the older study.sh, which dropped the org) is read as that name."""
    parts = folder.split(PAIR_SEP)
    if len(parts) < 2:
        return None
    splits = [(PAIR_SEP.join(parts[:i]), PAIR_SEP.join(parts[i:])) for i in range(1, len(parts))]

    def side(s: str) -> str:
        if s in known:
            return s
        hub = [k for k in known if k.endswith("_" + s)]
        return hub[0] if len(hub) == 1 else s
    splits = [(side(a), side(b)) for a, b in splits]
    for a, b in splits:
        if a in known and b in known:
            return a, b
    for a, b in splits:
        if a in known or b in known:
            return a, b
    return splits[0]


def decoder_rows(per_matrix: list[dict]) -> list[dict]:
    return [r for r in per_matrix if num(r.get("layer")) is not None and num(r["layer"]) >= 0]


def magnitude(per_matrix: list[dict]) -> float | None:
    """‖ΔW‖_F over ‖W_A‖_F of the decoder layers: √(Σ‖ΔW_i‖²) / √(Σ‖W_A,i‖²) over their matrices.
    ‖W_A,i‖ is the ``W_fro`` column, or ``dW_fro / rel_dW_fro`` where only that is given."""
    dw2 = w2 = 0.0
    for r in decoder_rows(per_matrix):
        d = num(r.get("dW_fro"))
        w = num(r.get("W_fro"))
        if w is None and d is not None and num(r.get("rel_dW_fro")):
            w = d / num(r["rel_dW_fro"])
        if d is None or w is None:
            return None
        dw2 += d * d
        w2 += w * w
    return math.sqrt(dw2) / math.sqrt(w2) if w2 > 0 else None


def cell_key(row: dict) -> str:
    return row.get("component") or row.get("group") or "?"


def location(per_matrix: list[dict], share: float = LOCATION_SHARE) -> list[tuple[int, str, float]]:
    """The fewest (layer, component) cells of the decoder layers that hold ``share`` of Σ‖ΔW‖²,
    largest first: [(layer, component, share of Σ‖ΔW‖²)]. Component: the ``component`` column, or
    ``group`` (attn/mlp) where the CSV predates it."""
    cells: dict[tuple[int, str], float] = {}
    for r in decoder_rows(per_matrix):
        d = num(r.get("dW_fro")) or 0.0
        key = (int(num(r["layer"])), cell_key(r))
        cells[key] = cells.get(key, 0.0) + d * d
    total = sum(cells.values())
    if total <= 0:
        return []
    out, acc = [], 0.0
    for (layer, comp), v in sorted(cells.items(), key=lambda kv: (-kv[1], kv[0])):
        out.append((layer, comp, v / total))
        acc += v
        if acc >= share * total * (1 - 1e-12):
            break
    return out


def changed(row: dict) -> bool:
    """A weight-geometry row of a matrix that changed (ΔW ≠ 0): identical matrices have 0 rank."""
    r = num(row.get("dW_eff_rank_99"))
    return r is not None and r > 0


def median_eff_rank(weight_geometry: list[dict]) -> tuple[float, int] | None:
    """Median of ``dW_eff_rank_99`` over the changed decoder-layer matrices, and how many."""
    vals = [num(r["dW_eff_rank_99"]) for r in weight_geometry
            if changed(r) and (num(r.get("layer")) is None or num(r["layer"]) >= 0)]
    return (statistics.median(vals), len(vals)) if vals else None


def colspace_column(columns) -> str | None:
    """The ``dW_in_colspace_<k>`` column (whatever k is) that has a ``..._random`` baseline."""
    for c in columns:
        if c.startswith("dW_in_colspace") and not c.endswith("_random") and f"{c}_random" in columns:
            return c
    return None


def median_alignment(weight_geometry: list[dict]) -> tuple[float, int, str] | None:
    """Median over changed decoder-layer matrices of colspace share / its random baseline."""
    col = colspace_column(list(weight_geometry[0].keys())) if weight_geometry else None
    if col is None:
        return None
    vals = []
    for r in weight_geometry:
        if not changed(r) or (num(r.get("layer")) is not None and num(r["layer"]) < 0):
            continue
        s, base = num(r.get(col)), num(r.get(f"{col}_random"))
        if s is not None and base:
            vals.append(s / base)
    return (statistics.median(vals), len(vals), col) if vals else None


def selectivity(ageo: list[dict]) -> dict[str, tuple[float, int]]:
    """Per component, the largest ``dW_read_selectivity_<comp>`` over the activation rows, and its
    activation row (decoder layer row-1)."""
    out = {}
    cols = [c for c in (ageo[0].keys() if ageo else []) if c.startswith("dW_read_selectivity_")]
    for c in cols:
        best = None
        for r in ageo:
            v, layer = num(r.get(c)), num(r.get("layer"))
            if v is not None and layer is not None and (best is None or v > best[0]):
                best = (v, int(layer))
        if best:
            out[c[len("dW_read_selectivity_"):]] = best
    return out


def best_training_free(rows: list[dict]) -> tuple[float, str] | None:
    """The largest finite ``recovered`` of a model's ablation rows (attack rows only; the
    delta_rank diagnostic and the unattacked/reference rows are left out), and which attack."""
    best = None
    for r in rows:
        attack = str(r.get("attack", "")).strip()
        if attack.lower() in NOT_ATTACKS or attack in DIAGNOSTIC_ATTACKS:
            continue
        v = num(r.get("recovered"))
        if v is None or not math.isfinite(v):
            continue
        if best is None or v > best[0]:
            best = (v, attack_label(r))
    return best


def attack_label(r: dict) -> str:
    """An ablation row's attack and its setting: ``direction layer 2``, ``quantize bits 4``."""
    setting = str(r.get("setting", "") or "").strip()
    if setting:   # ablation_attack.py's own label of the setting: layer=4, r=8, bits=4
        return f"{r.get('attack', '')} {setting.replace('=', ' ')}".strip()
    skip = {"model", "attack", "forget_nll", "retain_nll", "mcq_forget_acc", "mcq_retain_acc", "recovered",
            "reference", "role", "value", "selected", "direction_forget_nll", "direction_retain_nll"}
    extra = [f"{k} {v}" for k, v in r.items() if k not in skip and str(v).strip() != ""]
    return " ".join([str(r.get("attack", ""))] + extra[:2]).strip()


def lens_offset(lens_layers: list[int], n_decoder: int | None) -> tuple[int, str]:
    """How the lens table numbers layers: (offset to add to a decoder layer k, the convention).
    layerwise_lens.py numbers them as ``hidden_states`` rows (0 = embeddings, l = the residual stream
    after decoder layer l-1), so decoder layer k reads lens row k+1. (Guessing another numbering
    from which rows are present would go wrong for a ``--layers`` subset, so none is guessed.)"""
    return 1, "hidden_states rows (0 = embeddings, l = output of decoder layer l-1)"


def best_depth(lens_rows: list[dict]) -> tuple[float, int, str, float | None] | None:
    """The best forget MCQ accuracy over layers and lenses of one model: (acc, layer, lens, chance)."""
    best = None
    for r in lens_rows:
        v, layer = num(r.get("mcq_forget_acc")), num(r.get("layer"))
        if v is None or layer is None:
            continue
        if best is None or v > best[0]:
            try:
                chance = num(r.get("mcq_forget_chance"))
            except ValueError:
                chance = None
            best = (v, int(layer), str(r.get("lens", "")), chance)
    return best


def layer_join(per_matrix, acts, ageo, lens_a, lens_b, lens_shift: int = 1) -> list[dict]:
    """One row per decoder layer k: its weight change (from per_matrix.csv rows of layer k) joined
    with activation row k+1 (activation_stats.csv and activation_geometry.csv: the output of layer k)
    and the lens row k + ``lens_shift``. Any input may be None/empty."""
    per_matrix, acts, ageo = per_matrix or [], acts or [], ageo or []
    layers = sorted({int(num(r["layer"])) for r in decoder_rows(per_matrix)})
    if not layers:
        rows = [int(num(r["layer"])) for r in (acts + ageo) if num(r.get("layer")) is not None]
        layers = list(range(0, max(rows))) if rows else []
    out = []
    for k in layers:
        row = {"layer": k, "act_row": k + 1}
        mats = [r for r in decoder_rows(per_matrix) if int(num(r["layer"])) == k]
        if mats:
            d2 = sum((num(r.get("dW_fro")) or 0.0) ** 2 for r in mats)
            w2 = sum((num(r.get("W_fro")) or 0.0) ** 2 for r in mats)
            row["dW_fro"] = math.sqrt(d2)
            row["rel_dW"] = math.sqrt(d2 / w2) if w2 > 0 else None
        for r in acts:
            if num(r.get("layer")) == k + 1 and r.get("split") in ("forget", "retain"):
                dh, h = num(r.get("mean_dh_L2")), num(r.get("model_a_norm_L2"))
                row[f"dh_{r['split']}"] = dh
                row[f"rel_dh_{r['split']}"] = dh / h if dh is not None and h else None
        for r in ageo:
            if num(r.get("layer")) == k + 1:
                for c in ("probe_auc_a", "probe_auc_b", "cka_forget", "cka_retain"):
                    row[c] = num(r.get(c))
        for side, rows in (("a", lens_a or []), ("b", lens_b or [])):
            for r in rows:
                if num(r.get("layer")) == k + lens_shift:
                    row[f"lens_{r.get('lens', 'lens')}_{side}"] = num(r.get("mcq_forget_acc"))
        out.append(row)
    return out


def eval_row(name: str, s: dict) -> dict:
    """One model's summary.json as a summary.csv row (evaluate_unlearning.py's summary_row, read
    defensively: absent keys stay absent)."""
    row = {"model": name}
    for key in ("forget", "retain"):
        if f"{key}_nll" in s:
            row[f"{key}_nll"] = s[f"{key}_nll"]
        ci = s.get(f"{key}_nll_ci95")
        if isinstance(ci, list) and len(ci) == 2:
            row[f"{key}_nll_ci95_low"], row[f"{key}_nll_ci95_high"] = ci
    row.update({f"mia_{a}": v for a, v in (s.get("mia") or {}).items()})
    for task, m in (s.get("mcq") or {}).items():
        if isinstance(m, dict):
            row[f"mcq_{task}_acc"], row[f"mcq_{task}_acc_norm"] = m.get("acc"), m.get("acc_norm")
    row.update({f"few_shot_{k}": v for k, v in (s.get("few_shot") or {}).items()})
    for split, g in (s.get("generation") or {}).items():
        if isinstance(g, dict):
            row.update({f"{split}_{k}": v for k, v in g.items()})
    return {k: "" if v is None else str(v) for k, v in row.items()}


# ----------------------------------------------------------------------------------------------
# The study: everything read from the two folders
# ----------------------------------------------------------------------------------------------
class Study:
    def __init__(self, outputs: Path, plots: Path):
        self.outputs, self.plots = Path(outputs), Path(plots)
        self.unreadable: list[tuple[str, str]] = []   # (path, why)
        self.used_pngs: set[Path] = set()

    def load(self, path, reader, **kw):
        """Read a file that exists; None (and a note) when it cannot be read."""
        try:
            return reader(path, **kw)
        except Unreadable as e:
            self.unreadable.append((str(path), str(e)))
            return None

    def read_all(self, reference: str | None):
        o = self.outputs
        # evaluation
        self.eval_rows = self.load(o / "eval" / "summary.csv", read_csv, required=("model",),
                                   numeric=("forget_nll", "retain_nll")) if (o / "eval" / "summary.csv").exists() else None
        self.eval_json, self.generations = {}, {}
        if (o / "eval").is_dir():
            for d in sorted(p for p in (o / "eval").iterdir() if p.is_dir()):
                if (d / "summary.json").exists():
                    j = self.load(d / "summary.json", read_json)
                    if j is not None:
                        self.eval_json[d.name] = j
                if (d / "generations.jsonl").exists():
                    g = self.load(d / "generations.jsonl", read_jsonl)
                    if g:
                        self.generations[d.name] = g
        self.eval_from_json = False
        if self.eval_rows is None and self.eval_json and not (o / "eval" / "summary.csv").exists():
            # an evaluation still running or cut short: its per-model summary.json files, flattened as
            # evaluate_unlearning.py flattens them into summary.csv at the end
            self.eval_rows = [eval_row(name, j) for name, j in self.eval_json.items()]
            self.eval_from_json = True
        # fine-tuning attack
        t = o / "tamper" / "summary.csv"
        self.tamper_rows = self.load(t, read_csv, required=("model", "steps_to_recover"),
                                     numeric=("steps_to_recover",)) if t.exists() else None
        self.tamper_report = self.load(o / "tamper" / "attack_report.yaml", read_yaml) \
            if (o / "tamper" / "attack_report.yaml").exists() else None
        # lens and ablation
        lp = o / "lens" / "layerwise.csv"
        self.lens_rows = self.load(lp, read_csv, required=("model", "layer", "mcq_forget_acc"),
                                   numeric=("layer", "mcq_forget_acc", "mcq_retain_acc", "forget_nll", "retain_nll",
                                            "kl_to_final")) if lp.exists() else None
        ap = o / "ablation" / "ablation.csv"
        self.ablation_rows = self.load(ap, read_csv, required=("model",),
                                       numeric=("forget_nll", "retain_nll", "mcq_forget_acc", "mcq_retain_acc",
                                                "recovered")) if ap.exists() else None
        # comparisons
        self.pairs: dict[str, dict] = {}
        if o.is_dir():
            for d in sorted(p for p in o.iterdir() if p.is_dir() and PAIR_SEP in p.name):
                self.pairs[d.name] = self.read_pair(d)
        self.models = self.model_order()
        known = list(self.models)
        for name, pair in self.pairs.items():
            pair["models"] = split_pair(name, known)
        self.models = self.model_order()
        self.reference = self.pick_reference(reference)
        if self.reference in self.models:
            self.models.remove(self.reference)
        if self.reference:
            self.models.insert(0, self.reference)
        self.run_reports = self.find_reports()

    def read_pair(self, d: Path) -> dict:
        out = {"dir": d}
        specs = {
            "params": (d / "param_stats" / "per_matrix.csv", ("name", "layer", "dW_fro"),
                       ("layer", "dW_fro", "W_fro", "rel_dW_fro", "cos_sim", "dW_stable_rank")),
            "acts": (d / "activation_stats" / "activation_stats.csv", ("layer", "split", "mean_dh_L2"),
                     ("layer", "mean_dh_L1", "mean_dh_L2", "model_a_norm_L2", "model_b_norm_L2")),
            "wgeo": (d / "weight_geometry" / "weight_geometry.csv", ("layer", "name"),
                     ("layer", "dW_eff_rank_99", "dW_erank", "intruders")),
            "ageo": (d / "activation_geometry" / "activation_geometry.csv", ("layer",),
                     ("layer", "probe_auc_a", "probe_auc_b", "cka_forget", "cka_retain")),
        }
        for key, (path, required, numeric) in specs.items():
            out[key] = self.load(path, read_csv, required=required, numeric=numeric) if path.exists() else None
            out[f"{key}_path"] = path
        comp = d / "param_stats" / "per_component.csv"
        out["per_component"] = self.load(comp, read_csv) if comp.exists() else None
        return out

    def model_order(self) -> list[str]:
        order: list[str] = []

        def add(name):
            if name and name not in order:
                order.append(name)
        for pair in self.pairs.values():
            if pair.get("models"):
                add(pair["models"][0])
        for r in self.eval_rows or []:
            add(r["model"])
        for name in self.eval_json:
            add(name)
        for r in self.tamper_rows or []:
            add(r["model"])
        for pair in self.pairs.values():
            if pair.get("models"):
                add(pair["models"][1])
        for r in self.lens_rows or []:
            add(r["model"])
        for r in self.ablation_rows or []:
            add(r["model"])
        return order

    def pick_reference(self, given: str | None) -> str | None:
        if given:
            for cand in (given, model_name(given)):
                if cand in self.models:
                    return cand
            raise UsageError(f"--reference {given} is not a model of this study (models: "
                             f"{', '.join(self.models) or 'none found'})")
        firsts = {p["models"][0] for p in self.pairs.values() if p.get("models")}
        if len(firsts) == 1:
            return firsts.pop()
        return self.models[0] if self.models else None

    def find_reports(self) -> list[tuple[str, dict]]:
        """(label, content) of every run report: unlearning runs, the tools' report YAMLs, the
        evaluation's settings/versions/data hashes."""
        out, seen = [], set()
        o = self.outputs
        paths = []
        if o.is_dir():
            paths += sorted(o.glob("*/unlearned_model/run_report.yaml")) + sorted(o.glob("*/run_report.yaml"))
            paths += sorted(o.glob("*/*_report.yaml")) + sorted(o.glob("*/*/*_report.yaml"))
        # model folders the evaluation names (an unlearned model made elsewhere, the demo's CB-LAT twin)
        for j in self.eval_json.values():
            spec = j.get("model")
            if isinstance(spec, str) and Path(spec).is_dir() and (Path(spec) / "run_report.yaml").is_file():
                paths.append(Path(spec) / "run_report.yaml")
        for p in paths:
            key = p.resolve()
            if key in seen or p.name == "report.yaml" and "aggregate" in p.parts:
                continue
            seen.add(key)
            data = self.load(p, read_yaml)
            if data is not None:
                out.append((str(p), data))
        for name, j in self.eval_json.items():
            keep = {k: j[k] for k in ("model", "settings", "data", "versions", "mcq_chance") if k in j}
            out.append((str(o / "eval" / name / "summary.json"), keep))
        return out


# ----------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------
E = html.escape


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", s).strip("-") or "x"


def fmt_num(v, digits: int = 4) -> str:
    """A number for the page: ``digits`` significant digits (the exact value is in data-value)."""
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.{digits}g}"
    return str(v)


def td(value, text: str | None = None, href: str | None = None, title: str | None = None) -> str:
    """A cell whose raw number is in data-value (the sort key, and what tests compare)."""
    attrs = ""
    if isinstance(value, (int, float)) and value is not None:
        attrs += f' data-value="{E(repr(float(value)))}"'
    if title:
        attrs += f' title="{E(title)}"'
    body = E(text if text is not None else fmt_num(value))
    if href:
        body = f'<a href="#{E(href)}">{body}</a>'
    return f"<td{attrs}>{body}</td>"


def html_table(headers: list[str], rows: list[str], sortable: bool = True, cls: str = "") -> str:
    c = " ".join(x for x in ("sortable" if sortable else "", cls) if x)
    head = "".join(f"<th>{E(h)}</th>" for h in headers)
    return (f'<table class="{c}"><thead><tr>{head}</tr></thead><tbody>' + "".join(f"<tr>{r}</tr>" for r in rows)
            + "</tbody></table>")


def note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{E(text)}</p>'


def not_run(key: str, what: str) -> str:
    tool, step = TOOLS[key]
    return note(f"Not run: {what} (made by {tool}, run by {step}).", "missing")


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def reading_for(folder: str, filename: str) -> str | None:
    for area, pattern, text in READINGS:
        if area in folder and re.search(pattern, filename):
            return text
    return None


def figure(study: Study, path: Path, reading: str | None = None) -> str:
    study.used_pngs.add(path.resolve())
    try:
        data = path.read_bytes()
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise Unreadable("not a PNG file")
    except (OSError, Unreadable) as e:
        study.unreadable.append((str(path), str(e) if isinstance(e, Unreadable) else (e.strerror or first_line(e))))
        return note(f"Figure {path} is unreadable.", "missing")
    reading = reading or reading_for(str(path.parent), path.name)
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    cap = f"{E(path.name)}" + (f": {E(reading)}" if reading else "")
    return (f'<figure><img src="{uri}" alt="{E(str(path))}"><figcaption>{cap}</figcaption></figure>')


def figures_in(study: Study, folder: Path) -> str:
    if not folder.is_dir():
        return ""
    pngs = sorted(folder.glob("*.png"))
    return "".join(figure(study, p) for p in pngs)


def model_cell(study: Study, name: str) -> str:
    i = study.models.index(name) if name in study.models else -1
    colour = MODEL_COLOURS[i % len(MODEL_COLOURS)] if i >= 0 else "#777777"
    return f'<span class="swatch" style="background:{colour}"></span>{E(name)}'


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------
def pair_of(study: Study, model: str) -> tuple[str, dict] | None:
    """The comparison of the reference with ``model`` (the first found)."""
    for name, p in study.pairs.items():
        if p.get("models") and p["models"][1] == model and p["models"][0] == study.reference:
            return name, p
    for name, p in study.pairs.items():
        if p.get("models") and p["models"][1] == model:
            return name, p
    return None


def signature(study: Study) -> str:
    models = study.models
    if not models:
        return note("No model found: none of the tools' outputs is here.", "missing")
    eval_by = {r["model"]: r for r in study.eval_rows or []}
    tamper_by = {r["model"]: r for r in study.tamper_rows or []}
    lens_by: dict[str, list] = {}
    for r in study.lens_rows or []:
        lens_by.setdefault(r["model"], []).append(r)
    abl_by: dict[str, list] = {}
    for r in study.ablation_rows or []:
        abl_by.setdefault(r["model"], []).append(r)
    rows = []

    def row(group: str, label: str, cells: list[str]):
        rows.append(f'<th scope="row"><span class="grp">{E(group)}</span> {E(label)}</th>' + "".join(cells))

    def nr(key):
        tool, _ = TOOLS[key]
        return f'<td class="nr" title="made by {E(tool)}">not run</td>'

    def eval_cells(col: str, chance_key: str | None = None):
        if study.eval_rows is None:
            return [nr("eval")] * len(models)
        out = []
        for m in models:
            r = eval_by.get(m)
            v = num(r.get(col)) if r and col in r else None
            if v is None:
                out.append(td(None, "—", "evaluation"))
                continue
            text = fmt_num(v)
            if chance_key:
                ch = (study.eval_json.get(m, {}).get("mcq_chance") or {}).get(chance_key)
                if isinstance(ch, (int, float)):
                    text += f" (chance {fmt_num(float(ch), 3)})"
            out.append(td(v, text, "evaluation"))
        return out

    cols = list(dict.fromkeys(c for r in study.eval_rows or [] for c in r))
    # forgetting
    row("forgetting", "forget-test NLL", eval_cells("forget_nll"))
    mcq_tasks = [c[4:-4] for c in cols if c.startswith("mcq_") and c.endswith("_acc")]
    if "forget" in mcq_tasks or study.eval_rows is None:
        row("forgetting", "forget MCQ accuracy", eval_cells("mcq_forget_acc", "forget"))
    for task in mcq_tasks:
        if task not in ("forget", "retain"):
            row("forgetting", f"MCQ {task} accuracy", eval_cells(f"mcq_{task}_acc", task))
    mia = [c for c in cols if c.startswith("mia_")]
    mia.sort(key=lambda c: (c != "mia_minkpp", c))
    labels = {"mia_minkpp": "Min-K%++", "mia_mink": "Min-K%", "mia_loss": "loss", "mia_zlib": "zlib"}
    if study.eval_rows is None:
        row("forgetting", "MIA AUC", eval_cells("mia_minkpp"))
    for c in mia:
        row("forgetting", f"MIA AUC ({labels.get(c, c[4:])})", eval_cells(c))
    # cost
    row("cost", "retain-test NLL", eval_cells("retain_nll"))
    if "retain" in mcq_tasks or study.eval_rows is None:
        row("cost", "retain MCQ accuracy", eval_cells("mcq_retain_acc", "retain"))
    # recovery
    cells = []
    for m in models:
        if study.tamper_rows is None:
            cells.append(nr("tamper"))
        elif m not in tamper_by:
            cells.append(td(None, "—", "tamper"))
        else:
            v = num(tamper_by[m]["steps_to_recover"])
            cells.append(td(v, "never" if v is None else f"{int(v)} steps", "tamper"))
    row("recovery", "fine-tuning attack: steps to recover", cells)
    cells = []
    for m in models:
        if study.ablation_rows is None:
            cells.append(nr("ablation"))
            continue
        best = best_training_free(abl_by.get(m, []))
        cells.append(td(best[0], f"{fmt_num(best[0], 3)} ({best[1]})", "ablation") if best else td(None, "—", "ablation"))
    row("recovery", "best training-free recovered share", cells)

    # the pair-based rows: the reference's column is the reference itself
    def pair_cells(key, fn):
        out = []
        for m in models:
            if m == study.reference:
                out.append('<td class="ref">reference</td>')
                continue
            found = pair_of(study, m)
            if found is None:
                out.append(td(None, "no comparison", None))
                continue
            name, p = found
            href = f"pair-{slug(name)}-{key}"
            if p.get(key) is None:
                tool, _ = TOOLS[key]
                bad = any(str(p[f"{key}_path"]) == u for u, _ in study.unreadable)
                out.append(f'<td class="nr" title="made by {E(tool)}"><a href="#{E(href)}">'
                           f'{"unreadable" if bad else "not run"}</a></td>')
                continue
            v = fn(p[key])
            if v is None:
                out.append(td(None, "—", href))
            else:
                out.append(td(v[0], v[1], href))
        return out

    def mag(rows):
        v = magnitude(rows)
        return None if v is None else (v, fmt_num(v, 3))

    def loc(rows):
        cells = location(rows)
        if not cells:
            return (0.0, "no change")
        n = len({(int(num(r["layer"])), cell_key(r)) for r in decoder_rows(rows)})
        text = ", ".join(f"L{layer} {comp}" for layer, comp, _ in cells[:6]) + (" …" if len(cells) > 6 else "")
        return (float(len(cells)), f"{text} ({len(cells)} of {n} cells)")

    def rank(rows):
        v = median_eff_rank(rows)
        return None if v is None else (v[0], f"{fmt_num(v[0], 3)} (median of {v[1]} changed matrices)")

    def align(rows):
        v = median_alignment(rows)
        return None if v is None else (v[0], f"{fmt_num(v[0], 3)}× random ({v[1]} matrices)")

    def select(rows):
        v = selectivity(rows)
        if not v:
            return None
        first = max(v.items(), key=lambda kv: kv[1][0])
        text = "; ".join(f"{c} {fmt_num(s, 3)}× at L{row_ - 1}" for c, (s, row_) in v.items())
        return (first[1][0], text)

    row("magnitude", "‖ΔW‖_F / ‖W_A‖_F (decoder layers)", pair_cells("params", mag))
    row("location", f"layers × components holding {int(LOCATION_SHARE * 100)}% of ‖ΔW‖²",
        pair_cells("params", loc))
    row("rank", "median effective rank of ΔW (99% energy)", pair_cells("wgeo", rank))
    row("alignment", "ΔW in W_A's column space / random baseline (median)", pair_cells("wgeo", align))
    cells = []
    for m in models:
        if study.lens_rows is None:
            cells.append(nr("lens"))
            continue
        b = best_depth(lens_by.get(m, []))
        if b:
            extra = f"; chance {fmt_num(b[3], 3)}" if b[3] is not None else ""
            cells.append(td(b[0], f"{fmt_num(b[0], 3)} at lens layer {b[1]} ({b[2]}{extra})", "lens"))
        else:
            cells.append(td(None, "—", "lens"))
    row("depth", "best layer-wise forget MCQ accuracy", cells)
    row("selectivity", "ΔW read selectivity, forget/retain (max over layers)", pair_cells("ageo", select))

    head = "<th>measure</th>" + "".join(f'<th scope="col">{model_cell(study, m)}'
                                        f'{" (reference)" if m == study.reference else ""}</th>' for m in models)
    return (f'<table class="signature" id="signature-table"><thead><tr>{head}</tr></thead><tbody>'
            + "".join(f"<tr>{r}</tr>" for r in rows) + "</tbody></table>"
            + note("Models are named as the tools name them (a hub ID org/name as org_name; a folder by its name, "
                   "an unlearned_model folder by its parent's name), and a comparison folder <A>_vs_<B> names its "
                   "two models the same way. "
                   "Each cell links to the section with its evidence. Magnitude, location, rank, alignment and "
                   "selectivity describe the change from the reference to the model (its comparison folder); "
                   f"location lists the fewest (decoder layer, component) cells holding {int(LOCATION_SHARE * 100)}% "
                   "of Σ‖ΔW‖²; rank and alignment are medians over the decoder-layer matrices that changed; the "
                   "training-free recovery leaves out the delta_rank diagnostic (it needs the reference's weights)."))


def csv_table(study: Study, rows: list[dict], first_model: bool = True, limit: int = 200) -> str:
    if not rows:
        return ""
    cols = list(rows[0].keys())
    body = []
    for r in rows[:limit]:
        cells = []
        for c in cols:
            v = r.get(c, "")
            if c == "model" and first_model:
                cells.append(f'<td class="m">{model_cell(study, v)}</td>')
                continue
            try:
                x = num(v)
            except ValueError:
                x = None
            cells.append(td(x, fmt_num(x) if x is not None else str(v)))
        body.append("".join(cells))
    extra = note(f"First {limit} of {len(rows)} rows.") if len(rows) > limit else ""
    return html_table(cols, body) + extra


def section_eval(study: Study) -> str:
    out = ['<section id="evaluation"><h2>Evidence of forgetting</h2>']
    if study.eval_rows is None:
        out.append(not_run("eval", "the evaluation (outputs/eval/summary.csv)"))
    else:
        src = ("outputs/eval/<model>/summary.json (there is no outputs/eval/summary.csv yet: the evaluation "
               "did not finish every model)" if study.eval_from_json else "outputs/eval/summary.csv")
        out.append(note("Forget/retain NLL on the untouched test splits, MCQ accuracy, membership-inference AUC "
                        "(members: forget training lines), few-shot NLL and generation statistics, "
                        f"from {src}.", "missing" if study.eval_from_json else "note"))
        out.append(csv_table(study, study.eval_rows))
    out.append(figures_in(study, study.plots / "eval"))
    out.append(section_generations(study))
    out.append("</section>")
    return "".join(out)


def section_generations(study: Study) -> str:
    out = ['<section id="generations"><h3>Generations side by side</h3>']
    if not study.generations:
        out.append(note("No generations.jsonl in outputs/eval/<model>/ (evaluate_unlearning.py writes them)."))
        return "".join(out) + "</section>"
    models = [m for m in study.models if m in study.generations]
    greedy = {m: [g for g in study.generations[m] if g.get("mode") == "greedy"] for m in models}
    for split in ("forget_test", "retain_test"):
        prompts: dict[int, str] = {}
        for m in models:
            for g in greedy[m]:
                if g.get("split") == split and isinstance(g.get("index"), int):
                    prompts.setdefault(g["index"], str(g.get("prompt", "")))
        idx = sorted(prompts)[:GENERATION_PROMPTS]
        if not idx:
            continue
        rows = []
        for i in idx:
            cells = [f"<td>{E(prompts[i])}</td>"]
            for m in models:
                c = next((g.get("continuation", "") for g in greedy[m] if g.get("split") == split
                          and g.get("index") == i), "")
                cells.append(f'<td class="gen">{E(str(c))}</td>')
            rows.append("".join(cells))
        out.append(f"<h4>{E(split)} (greedy; first {len(idx)} of {len(prompts)} prompts)</h4>")
        out.append(f'<table class="gens"><thead><tr><th>prompt</th>'
                   + "".join(f"<th>{model_cell(study, m)}</th>" for m in models)
                   + "</tr></thead><tbody>" + "".join(f"<tr>{r}</tr>" for r in rows) + "</tbody></table>")
    out.append(note("All continuations, sampled ones included, are in outputs/eval/<model>/generations.jsonl."))
    return "".join(out) + "</section>"


def section_tamper(study: Study) -> str:
    out = ['<section id="tamper"><h2>Fine-tuning attack</h2>']
    if study.tamper_rows is None:
        out.append(not_run("tamper", "the fine-tuning attack (outputs/tamper/summary.csv)"))
    else:
        rep = study.tamper_report if isinstance(study.tamper_report, dict) else {}
        ref = rep.get("Reference") if isinstance(rep.get("Reference"), dict) else {}
        att = rep.get("Attack") if isinstance(rep.get("Attack"), dict) else {}
        how = ""
        if att:
            how = (f" The attack: {att.get('kind', '?')}, {att.get('steps', '?')} steps, learning rate "
                   f"{att.get('learning_rate', '?')}, batch {att.get('batch_size', '?')}, seed {att.get('seed', '?')}.")
        if "recover_margin" in ref and "forget_nll_step0" in ref:
            how += (f" Recovered: forget NLL within {ref['recover_margin']} nats of the reference's step-0 level "
                    f"{fmt_num(num(ref['forget_nll_step0']))}.")
        out.append(note("Every model gets the same fine-tuning on forget-domain text; steps_to_recover is the first "
                        "evaluated step whose forget NLL reaches the reference's level (empty: never)." + how))
        out.append(csv_table(study, study.tamper_rows))
    out.append(figures_in(study, study.plots / "tamper"))
    return "".join(out) + "</section>"


def section_ablation(study: Study) -> str:
    out = ['<section id="ablation"><h2>Training-free attacks</h2>']
    if study.ablation_rows is None:
        out.append(not_run("ablation", "the training-free attacks (outputs/ablation/ablation.csv)"))
    else:
        out.append(note("recovered = (NLL_model − NLL_attacked) / (NLL_model − NLL_reference) on forget test text: "
                        "the share of the forgetting an attack undoes. delta_rank is a diagnostic (it needs the "
                        "reference's weights)."))
        out.append(csv_table(study, study.ablation_rows))
    for name in ("ablation", "ablation_attack"):
        out.append(figures_in(study, study.plots / name))
    return "".join(out) + "</section>"


def section_lens(study: Study) -> str:
    out = ['<section id="lens"><h2>Layer-wise lens</h2>']
    if study.lens_rows is None:
        out.append(not_run("lens", "the layer-wise lens (outputs/lens/layerwise.csv)"))
    else:
        out.append(note("Forget/retain MCQ accuracy and NLL read at every layer through the logit lens and the tuned "
                        "lens, from outputs/lens/layerwise.csv."))
        out.append(csv_table(study, study.lens_rows, limit=400))
    for name in ("lens", "layerwise_lens"):
        out.append(figures_in(study, study.plots / name))
    return "".join(out) + "</section>"


def join_panels(rows: list[dict], colour: str, name_a: str, name_b: str) -> list[tuple[str, list[tuple]]]:
    """The panels of a pair's layer-by-layer figure: [(title, [(key, label, colour, dash), ...])],
    only those with data."""
    panels = [
        ("‖ΔW_k‖ / ‖W_k‖", [("rel_dW", name_b, colour, "bar")]),
        ("‖Δh‖ / ‖h_A‖, row k+1", [("rel_dh_forget", "forget", colour, "-"),
                                   ("rel_dh_retain", "retain", colour, "--")]),
        ("probe AUC / CKA, row k+1", [("probe_auc_a", f"AUC {name_a}", "#000000", "-"),
                                      ("probe_auc_b", f"AUC {name_b}", colour, "-"),
                                      ("cka_forget", "CKA forget", colour, ":"),
                                      ("cka_retain", "CKA retain", "#888888", ":")]),
        ("lens forget MCQ accuracy", []),
    ]
    for k in sorted({k for r in rows for k in r if k.startswith("lens_")}):
        kind, side = k[len("lens_"):-2], k[-1]
        panels[3][1].append((k, f"{kind} {name_a if side == 'a' else name_b}",
                             "#000000" if side == "a" else colour, "--" if kind == "tuned" else "-"))
    return [p for p in panels if any(r.get(key) is not None for key, *_ in p[1] for r in rows)]


def join_figure(rows: list[dict], colour: str, name_a: str, name_b: str) -> bytes | None:
    """A pair's layer-by-layer figure as SVG (drawn here: no plotting library to start, so the
    report stays a matter of seconds): one panel per measure, decoder layer k on the x axis."""
    ks = [r["layer"] for r in rows]
    panels = join_panels(rows, colour, name_a, name_b)
    if not panels or not ks:
        return None
    W, left, right, ph, top, gap = 720, 56, 190, 110, 24, 44
    H = top + len(panels) * (ph + gap) + 16
    pw = W - left - right
    xs = {k: left + (pw * (i + 0.5) / len(ks)) for i, k in enumerate(ks)}
    dash = {"-": "", "--": ' stroke-dasharray="6 3"', ":": ' stroke-dasharray="2 2"'}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'font-family="sans-serif" font-size="11">', f'<rect width="{W}" height="{H}" fill="#ffffff"/>']
    for p, (title, series) in enumerate(panels):
        y0 = top + p * (ph + gap)
        vals = [r.get(key) for key, *_ in series for r in rows if r.get(key) is not None]
        lo, hi = min(vals + [0.0]), max(vals)
        if hi <= lo:
            hi = lo + 1.0
        Y = lambda v: y0 + ph - (v - lo) / (hi - lo) * ph  # noqa: E731
        out.append(f'<text x="{left}" y="{y0 - 6}" font-weight="bold">{E(title)}</text>')
        out.append(f'<rect x="{left}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#999999"/>')
        for v in (lo, (lo + hi) / 2, hi):
            out.append(f'<line x1="{left}" x2="{left + pw}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#eeeeee"/>'
                       f'<text x="{left - 4}" y="{Y(v) + 4:.1f}" text-anchor="end">{E(fmt_num(v, 3))}</text>')
        for k in ks:
            out.append(f'<text x="{xs[k]:.1f}" y="{y0 + ph + 13}" text-anchor="middle">{k}</text>')
        for i, (key, label, c, style) in enumerate(series):
            pts = [(xs[r["layer"]], r.get(key)) for r in rows]
            if all(v is None for _, v in pts):
                continue
            ly = y0 + 8 + 15 * i
            if style == "bar":
                bw = pw / len(ks) * 0.6
                out += [f'<rect x="{x - bw / 2:.1f}" y="{Y(v):.1f}" width="{bw:.1f}" height="{Y(lo) - Y(v):.1f}" '
                        f'fill="{c}"/>' for x, v in pts if v is not None]
                out.append(f'<rect x="{left + pw + 10}" y="{ly - 5}" width="18" height="8" fill="{c}"/>')
            else:
                run: list[str] = []
                for x, v in pts + [(0, None)]:
                    if v is None:
                        if len(run) > 1:
                            out.append(f'<polyline points="{" ".join(run)}" fill="none" stroke="{c}" '
                                       f'stroke-width="1.8"{dash[style]}/>')
                        run = []
                    else:
                        run.append(f"{x:.1f},{Y(v):.1f}")
                        out.append(f'<circle cx="{x:.1f}" cy="{Y(v):.1f}" r="2.5" fill="{c}"/>')
                out.append(f'<line x1="{left + pw + 10}" x2="{left + pw + 28}" y1="{ly - 1}" y2="{ly - 1}" '
                           f'stroke="{c}" stroke-width="1.8"{dash[style]}/>')
            out.append(f'<text x="{left + pw + 32}" y="{ly + 3}">{E(label[:26])}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{H - 4}" text-anchor="middle">decoder layer k</text></svg>')
    return "".join(out).encode("utf-8")


def section_pair(study: Study, name: str, pair: dict) -> str:
    s = slug(name)
    a, b = pair.get("models") or ("A", "B")
    out = [f'<section id="pair-{s}"><h2>{E(a)} → {E(b)}</h2>',
           note(f"Comparison folder {pair['dir']}: model A = {a}, model B = {b}.")]
    plot_dir = study.plots / name
    parts = [
        ("params", "Weight differences", "param_plots", "per-matrix ΔW statistics (param_stats/per_matrix.csv)"),
        ("wgeo", "Weight geometry", "weight_geometry", "weight geometry (weight_geometry/weight_geometry.csv)"),
        ("acts", "Activation norms and differences", "activation_plots",
         "activation statistics (activation_stats/activation_stats.csv)"),
        ("ageo", "Activation geometry", "activation_geometry",
         "activation geometry (activation_geometry/activation_geometry.csv)"),
    ]
    for key, title, plot_sub, what in parts:
        out.append(f'<section id="pair-{s}-{key}"><h3>{E(title)}</h3>')
        if pair.get(key) is None:
            bad = [w for u, w in study.unreadable if u == str(pair[f"{key}_path"])]
            if bad:
                out.append(note(f"Unreadable: {pair[f'{key}_path']} ({bad[0]}).", "missing"))
            else:
                out.append(not_run(key, what))
        elif key == "params":
            m = magnitude(pair[key])
            loc = location(pair[key])
            out.append(note(f"‖ΔW‖_F / ‖W_A‖_F over the decoder layers: {fmt_num(m, 4) if m is not None else '—'}; "
                            f"{len(loc)} (layer, component) cells hold {int(LOCATION_SHARE * 100)}% of Σ‖ΔW‖²: "
                            + ", ".join(f"L{l_} {c} {fmt_num(sh * 100, 3)}%" for l_, c, sh in loc[:10])
                            + (" …" if len(loc) > 10 else "") + "."))
        elif key == "wgeo":
            r = median_eff_rank(pair[key])
            al = median_alignment(pair[key])
            out.append(note(
                (f"Median effective rank of ΔW over {r[1]} changed matrices: {fmt_num(r[0], 3)}. " if r else
                 "No changed matrix. ")
                + (f"Median {al[2]} / random baseline: {fmt_num(al[0], 3)}." if al else "")))
        out.append(figures_in(study, plot_dir / plot_sub))
        out.append("</section>")
    out.append(section_join(study, name, pair))
    return "".join(out) + "</section>"


def section_join(study: Study, name: str, pair: dict) -> str:
    s = slug(name)
    a, b = pair.get("models") or ("A", "B")
    lens_a = [r for r in study.lens_rows or [] if r["model"] == a]
    lens_b = [r for r in study.lens_rows or [] if r["model"] == b]
    n_dec = None
    if pair.get("params"):
        layers = [int(num(r["layer"])) for r in decoder_rows(pair["params"])]
        n_dec = max(layers) + 1 if layers else None
    shift, convention = lens_offset([int(num(r["layer"])) for r in lens_a + lens_b if num(r.get("layer")) is not None],
                                    n_dec)
    rows = layer_join(pair.get("params"), pair.get("acts"), pair.get("ageo"), lens_a, lens_b, shift)
    out = [f'<section id="pair-{s}-join"><h3>Layer by layer</h3>']
    if not rows:
        out.append(note("Nothing to join: neither weight nor activation tables of this pair were read.", "missing"))
        return "".join(out) + "</section>"
    rule = ("Decoder layer k's weights are joined with activation row k+1 (the output of layer k) of "
            "activation_stats.csv and activation_geometry.csv.")
    if lens_a or lens_b:
        rule += (f" The lens table numbers layers as {convention}, so decoder layer k reads lens row "
                 f"{'k+1' if shift else 'k'}.")
    out.append(note(rule))
    keys = [("layer", "decoder layer k"), ("act_row", "activation row"), ("rel_dW", "‖ΔW_k‖/‖W_k‖"),
            ("dW_fro", "‖ΔW_k‖_F"), ("rel_dh_forget", "‖Δh‖/‖h_A‖ forget"), ("rel_dh_retain", "‖Δh‖/‖h_A‖ retain"),
            ("probe_auc_a", f"probe AUC {a}"), ("probe_auc_b", f"probe AUC {b}"), ("cka_forget", "CKA forget"),
            ("cka_retain", "CKA retain")]
    for k in sorted({k for r in rows for k in r if k.startswith("lens_")}):
        kind, side = k[len("lens_"):-2], k[-1]
        keys.append((k, f"{kind} lens forget acc {a if side == 'a' else b}"))
    keys = [(k, h) for k, h in keys if any(r.get(k) is not None for r in rows)]
    body = ["".join(td(r.get(k)) for k, _ in keys) for r in rows]
    out.append(html_table([h for _, h in keys], body, cls="join"))
    i = study.models.index(b) if b in study.models else 1
    try:
        png = join_figure(rows, MODEL_COLOURS[i % len(MODEL_COLOURS)], a, b)
    except Exception as e:  # a figure that cannot be drawn must not cost the page
        png = None
        out.append(note(f"The join figure could not be drawn: {first_line(e)}", "missing"))
    if png:
        uri = "data:image/svg+xml;base64," + base64.b64encode(png).decode("ascii")
        out.append(f'<figure><img src="{uri}" alt="layer join {E(name)}"><figcaption>Layer by layer, {E(a)} → '
                   f'{E(b)}: where the weights moved (top) should line up with where the activations and what the '
                   f'layers know changed.</figcaption></figure>')
    return "".join(out) + "</section>"


def flatten_report(d, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    if isinstance(d, dict):
        for k, v in d.items():
            out += flatten_report(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(d, list) and len(d) <= 8 and all(not isinstance(x, (dict, list)) for x in d):
        out.append((prefix, ", ".join(str(x) for x in d)))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += flatten_report(v, f"{prefix}[{i}]")
    else:
        out.append((prefix, "" if d is None else str(d)))
    return out


def section_runs(study: Study) -> str:
    out = ['<section id="runs"><h2>Settings, versions and data hashes</h2>']
    if not study.run_reports:
        out.append(note("No run report found (run_report.yaml of unlearning runs, the tools' *_report.yaml, "
                        "outputs/eval/<model>/summary.json)."))
    for label, data in study.run_reports:
        items = flatten_report(data)
        rows = [f"<td>{E(k)}</td><td>{E(v[:300])}</td>" for k, v in items[:REPORT_ROWS]]
        more = note(f"{len(items) - REPORT_ROWS} more entries in {label}.") if len(items) > REPORT_ROWS else ""
        out.append(f"<details><summary>{E(label)}</summary>{html_table(['key', 'value'], rows, sortable=False)}{more}"
                   "</details>")
    return "".join(out) + "</section>"


def section_other_figures(study: Study) -> str:
    if not study.plots.is_dir():
        return ""
    rest = [p for p in sorted(study.plots.rglob("*.png")) if p.resolve() not in study.used_pngs]
    if not rest:
        return ""
    return ('<section id="other-figures"><h2>Other figures</h2>'
            + "".join(figure(study, p) for p in rest) + "</section>")


def section_notes(study: Study) -> str:
    items = [f"<li>Unreadable: {E(p)} ({E(why)}).</li>" for p, why in study.unreadable]
    return ('<section id="notes"><h2>Unreadable files and sections</h2>'
            + (f'<ul class="missing">{"".join(items)}</ul>' if items else note("Every file found was read."))
            + "</section>")


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1200px;padding:0 1em 3em;color:#111;line-height:1.4}
h1{font-size:1.6em;margin-top:.8em}h2{border-bottom:1px solid #ccc;margin-top:2em}
nav{background:#f5f5f5;padding:.5em 1em;border-radius:4px}nav a{margin-right:1em}
table{border-collapse:collapse;margin:.5em 0;font-size:.85em;display:block;overflow-x:auto}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
thead th{background:#f0f0f0;cursor:pointer}
table.signature th[scope=row]{white-space:nowrap;background:#fafafa}
.grp{color:#777;font-weight:normal;font-size:.85em;text-transform:uppercase}
td.m{white-space:nowrap}td.nr{color:#a33;font-style:italic}td.ref{color:#777}
.missing{color:#a33}.note{color:#444}
.swatch{display:inline-block;width:.8em;height:.8em;margin-right:.3em;border:1px solid #888}
figure{margin:1em 0}figure img{max-width:min(100%,820px);height:auto;border:1px solid #eee}figcaption{font-size:.85em;color:#333}
td.gen{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;max-width:26em}
details{margin:.3em 0}summary{cursor:pointer}
"""

SORT_JS = """
document.querySelectorAll("table.sortable thead th").forEach(function (th) {
  th.addEventListener("click", function () {
    var tb = th.closest("table").tBodies[0], i = th.cellIndex, asc = th.getAttribute("data-asc") !== "1";
    th.setAttribute("data-asc", asc ? "1" : "0");
    var key = function (r) { var c = r.cells[i]; return c ? (c.getAttribute("data-value") || c.textContent) : ""; };
    Array.prototype.slice.call(tb.rows).sort(function (x, y) {
      var a = key(x), b = key(y), fa = parseFloat(a), fb = parseFloat(b);
      var d = (!isNaN(fa) && !isNaN(fb)) ? fa - fb : a.localeCompare(b);
      return asc ? d : -d;
    }).forEach(function (r) { tb.appendChild(r); });
  });
});
"""


def safe(study: Study, where: str, fn, *args) -> str:
    """A section, or a note when its inputs trip it up: one odd file never costs the whole page."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - the page is written whatever one section meets
        study.unreadable.append((where, f"section not built: {type(e).__name__}: {first_line(e)}"))
        return note(f"The section on {where} could not be built ({type(e).__name__}: {first_line(e)}).", "missing")


def build_page(study: Study, title: str) -> str:
    pairs = sorted(study.pairs.items(), key=lambda kv: (study.models.index(kv[1]["models"][1])
                                                        if kv[1].get("models") and kv[1]["models"][1] in study.models
                                                        else 99, kv[0]))
    nav = [("signature", "Signature"), ("evaluation", "Forgetting"), ("generations", "Generations"),
           ("tamper", "Fine-tuning attack"), ("ablation", "Training-free attacks"), ("lens", "Layer-wise lens")]
    nav += [(f"pair-{slug(n)}", f"{p['models'][1] if p.get('models') else n}") for n, p in pairs]
    nav += [("runs", "Settings"), ("notes", "Unreadable files")]
    missing = []
    for key, path, what in (("eval", "eval/summary.csv", "evaluation"), ("tamper", "tamper/summary.csv", "fine-tuning attack"),
                            ("lens", "lens/layerwise.csv", "layer-wise lens"),
                            ("ablation", "ablation/ablation.csv", "training-free attacks")):
        if key == "eval" and study.eval_from_json:
            missing.append(f"{what} unfinished: no {path} yet ({TOOLS[key][0]})")
        elif not (study.outputs / path).exists():
            missing.append(f"{what} ({TOOLS[key][0]})")
    for key, what in (("params", "weight differences"), ("acts", "activation statistics"),
                      ("wgeo", "weight geometry"), ("ageo", "activation geometry")):
        absent = [n for n, p in study.pairs.items() if not Path(p[f"{key}_path"]).exists()]
        if absent and (len(absent) == len(study.pairs)):
            missing.append(f"{what} ({TOOLS[key][0]})")
    if not study.pairs:
        missing.append(f"every comparison {PAIR_SEP.join(['<A>', '<B>'])} folder ({TOOLS['params'][0]}, "
                       f"{TOOLS['acts'][0]})")
    body = [f"<h1>{E(title)}</h1>",
            note(f"Written by report.py on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from "
                 f"{study.outputs}/ and {study.plots}/. Models: " + ", ".join(study.models)
                 + (f"; reference {study.reference}." if study.reference else ".")),
            "<nav>" + "".join(f'<a href="#{E(i)}">{E(t)}</a>' for i, t in nav) + "</nav>"]
    if missing:
        body.append(note("Not run in this study: " + "; ".join(missing) + ".", "missing"))
    if study.unreadable:
        body.append(f'<p class="missing">{len(study.unreadable)} file(s) could not be read: '
                    f'<a href="#notes">see the list</a>.</p>')
    body.append('<section id="signature"><h2>Signature</h2>' + safe(study, "the signature", signature, study)
                + "</section>")
    body.append(safe(study, "the evaluation", section_eval, study))
    body.append(safe(study, "the fine-tuning attack", section_tamper, study))
    body.append(safe(study, "the training-free attacks", section_ablation, study))
    body.append(safe(study, "the layer-wise lens", section_lens, study))
    for name, pair in pairs:
        body.append(safe(study, f"comparison {name}", section_pair, study, name, pair))
    body.append(safe(study, "the run reports", section_runs, study))
    body.append(safe(study, "the other figures", section_other_figures, study))
    body.append(section_notes(study))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"{GENERATOR}<title>{E(title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + f"<script>{SORT_JS}</script></body></html>\n")


def build_report(outputs, plots, title: str, reference: str | None = None) -> tuple[str, Study]:
    study = Study(Path(outputs), Path(plots))
    study.read_all(reference)
    return build_page(study, title), study


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outputs", default="outputs", help="the study's results folder (default: %(default)s)")
    p.add_argument("--plots", default="plots", help="the study's figures folder (default: %(default)s)")
    p.add_argument("--out", default="report/index.html", help="the HTML file to write (default: %(default)s)")
    p.add_argument("--title", default="model-diffs study report", help="page title (default: %(default)s)")
    p.add_argument("--reference", default=None,
                   help="the model every other is compared with, as the tools name it or as a hub ID/folder "
                        "(default: model A of the comparisons, else the first model the evaluation lists)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


GENERATOR = '<meta name="generator" content="model-diffs report.py">'


def run(args) -> Study:
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a .html path")
    if out.exists():   # replace an earlier report, never another file
        with open(out, "rb") as f:
            if GENERATOR.encode() not in f.read(4096):
                raise UsageError(f"--out {out} exists and is not a report written by report.py; "
                                 "move it away or give another path")
    for flag, d in (("--outputs", args.outputs), ("--plots", args.plots)):
        if Path(d).exists() and not Path(d).is_dir():
            raise UsageError(f"{flag} {d} is not a folder")
    page, study = build_report(args.outputs, args.plots, args.title, args.reference)
    write_atomically({out: page})
    return study


def main(argv=None) -> int:
    args = parse_args(argv)

    def work():
        t0 = time.perf_counter()
        study = run(args)
        size = Path(args.out).stat().st_size
        print(f"wrote {args.out} ({size / 1e6:.1f} MB, {len(study.models)} models, {len(study.pairs)} comparisons, "
              f"{len(study.unreadable)} unreadable file(s), {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        print(args.out)
    return run_tool(work, kept="nothing was written")


if __name__ == "__main__":
    sys.exit(main())
