# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "torch>=2.4",
#     "transformers>=5.0,<6",
#     "tokenizers>=0.21",
#     "safetensors>=0.4",
#     "huggingface_hub>=0.30",
#     "accelerate>=1.0",
#     "datasets>=3.0",
# ]
# ///
"""Sanity pass before an unlearning / model-diff experiment.

A wrong forget/retain split or an environment that cannot hold the activation cache is found
hours into a run, or never: a forget line that also sits in the retain set quietly cancels its
own unlearning signal, and a truncated sample is silently measured on its first 512 tokens only.
This script reads the two data files (``data/forget.txt`` and ``data/retain.txt``, one sample per
non-blank line, the format ``create_datasets.py`` writes and ``unlearn.py`` /
``collect_activation_norms.py`` read) and prints one verdict per check:

    PASS  files: forget.txt 500 samples, retain.txt 500 samples
    FAIL  overlap (exact): 50 of 500 forget samples also appear verbatim in retain.txt, e.g. ...
    WARN  balance: ...
    summary: 9 PASS, 1 WARN, 1 FAIL, 4 INFO -> not ready: fix the FAIL lines first

Checks: files present, readable and non-empty; exact and normalised (case, Unicode form and
whitespace) overlap between forget and retain; duplicates inside each set; size balance (beyond
2:1); samples longer than ``--max-length`` tokens (they would be truncated); the model (a
``--model`` that does not exist or cannot be loaded, i.e. no config.json or no complete safetensors
weights, FAILs; a hub ID that cannot be looked up offline WARNs); the environment (torch,
CUDA/MPS, bf16, free disk versus the activation cache the next run needs, package versions); and
settings that hurt reproducibility (gradient accumulation, fp16 activation cache).

Defaults follow the run scripts' environment ($DATA_DIR, $MODEL_A, $MAX_LENGTH, $CACHE_DIR,
$DEVICE, $DTYPE, $GRAD_ACCUM, $CACHE_FP16), so the check describes the run they would start.
Token counts use the model's tokenizer when it is available offline, else an approximation; the
cache size uses its config.json, else (for the study's three models only) the assumed GPT-NeoX
6.9B shape: 32 layers, hidden 4096.

Exit status: 0 when no check FAILs (WARN lines do not fail), 1 otherwise. ``--json`` prints one
JSON object instead of text. torch is imported only for the environment checks, so
``--data-only`` is a sub-second pass over the data.
"""
from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
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


def env_flag(name: str, default: bool = False, environ=None) -> bool:
    """A boolean environment variable (of ``environ``, default ``os.environ``), read the same way
    everywhere (and by ``env_flag`` in common/env.sh): ``1``/``true``/``yes`` on, ``0``/``false``/
    ``no`` or empty off (any case, surrounding blanks ignored), unset -> ``default``; anything else
    is a UsageError."""
    raw = (os.environ if environ is None else environ).get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no", ""):
        return False
    raise UsageError(f"{name}={raw!r} is not a boolean; use 1/true/yes or 0/false/no")


def normalise(text: str) -> str:
    """The key under which two samples count as the same text (duplicates, forget/retain overlap):
    Unicode NFKC, case-folded, whitespace runs collapsed ("The  Cell\\tcycle " = "the cell cycle")."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def read_numbered_lines(path) -> list[tuple[int, str]]:
    """The samples of a text file: ``[(line number from 1, text), ...]``, one sample per line.

    UTF-8 (a leading byte-order mark is dropped), each line stripped, blank lines skipped,
    duplicates kept (``drop_duplicates`` removes them). A missing, unreadable, non-UTF-8 or blank
    file raises UsageError with one line saying why."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p} does not exist")
    if not p.is_file():
        raise UsageError(f"{p} is not a file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UsageError(f"{p} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise UsageError(f"{p} cannot be read ({e.strerror or first_line(e)})") from None
    lines = [(i, s.strip()) for i, s in enumerate(text.splitlines(), start=1) if s.strip()]
    if not lines:
        raise UsageError(f"{p} is empty" + (" (only blank lines)" if text else ""))
    return lines


@functools.lru_cache(maxsize=None)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be asked at all: False when HF_HUB_OFFLINE is set or the
    hub's host does not accept a TCP connection within ``timeout`` s (probed once per process;
    True behind a proxy, which a direct connection cannot judge). Without this an offline
    machine sits through huggingface_hub's retry back-off (tens of seconds per request)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False


HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# --- end shared helpers ---


DEFAULT_MODEL = "EleutherAI/deep-ignorance-unfiltered"
# The three models of the reference study share one architecture, GPT-NeoX 6.9B (Pythia-6.9B
# shape). When their config.json is not available offline we assume these dimensions for the
# activation-cache estimate (and say so in the output).
STUDY_MODELS = (
    "EleutherAI/deep-ignorance-unfiltered",
    "EleutherAI/deep-ignorance-e2e-strong-filter",
    "EleutherAI/deep-ignorance-unfiltered-cb-lat",
)
STUDY_DIMS = {"num_layers": 32, "hidden": 4096, "max_positions": 2048}
PACKAGES = ("torch", "transformers", "accelerate", "safetensors", "datasets", "tokenizers", "huggingface_hub")
REQUIRED_PACKAGES = ("torch", "transformers", "safetensors")
BALANCE_LIMIT = 2.0          # WARN when one set is more than twice the size of the other
DISK_HEADROOM = 0.8          # WARN when the cache would use more than 80 % of the free space


@dataclass
class Check:
    status: str              # PASS, WARN, FAIL or INFO
    name: str
    message: str
    details: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- reading the data

def read_samples_or_reason(path: str | os.PathLike) -> tuple[list[tuple[int, str]] | None, str]:
    """Samples of a data file: ``([(line_number, text), ...], "")`` or ``(None, reason)``.

    The reading of every tool (``read_numbered_lines``: one sample per line, stripped, blank lines
    and a UTF-8 byte-order mark dropped), except that it never raises on a bad file: a missing,
    unreadable or non-UTF-8 file comes back as ``None`` and a one-line reason.
    """
    try:
        return read_numbered_lines(path), ""
    except UsageError as e:
        return None, str(e)


def shorten(text: str, width: int = 60) -> str:
    """One-line preview of a sample for the report."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


# ----------------------------------------------------------------------------- data checks

def find_overlap(forget: list[tuple[int, str]], retain: list[tuple[int, str]], key=None) -> list[tuple[int, int, str]]:
    """Forget samples whose ``key(text)`` also occurs in retain, as ``(forget_line, retain_line, text)``.

    ``key=None`` is exact matching (identical stripped line); ``key=normalise`` matches after
    lowercasing and whitespace collapsing. Every matching forget line is counted (a text that
    occurs twice in forget counts twice), in forget order; ``retain_line`` is the first retain match.
    """
    key = key or (lambda s: s)
    first_in_retain: dict[str, int] = {}
    for line_no, text in retain:
        first_in_retain.setdefault(key(text), line_no)
    return [(i, first_in_retain[key(t)], t) for i, t in forget if key(t) in first_in_retain]


def count_duplicates(samples: list[tuple[int, str]], key=None) -> tuple[int, int]:
    """``(extra_copies, distinct_repeated)``: how many samples repeat an earlier one, and of how many texts.

    A text that occurs 3 times contributes 2 extra copies and 1 repeated text.
    """
    counts = Counter((key or (lambda s: s))(t) for _, t in samples)
    repeated = [c for c in counts.values() if c > 1]
    return sum(c - 1 for c in repeated), len(repeated)


def balance_ratio(n_forget: int, n_retain: int) -> float:
    """Size ratio larger / smaller (>= 1); ``inf`` when one set is empty."""
    lo, hi = sorted((n_forget, n_retain))
    return math.inf if lo == 0 else hi / lo


def approx_token_count(text: str) -> int:
    """Tokenizer-free token estimate: ``ceil(max(1.3 * words, utf8_bytes / 4))``.

    BPE tokenizers of English LMs (GPT-2/NeoX/Llama) average ~1.3 tokens per word on prose and
    ~4 bytes per token; technical text (numbers, names, formulas) has more tokens per word, so the
    larger of the two estimates is taken, erring towards reporting truncation.
    """
    return math.ceil(max(1.3 * len(text.split()), len(text.encode("utf-8")) / 4))


def truncation_stats(lengths: list[int], max_length: int) -> dict:
    """How many samples exceed ``max_length`` tokens, their share, and tokens kept after truncation.

    ``kept_tokens = sum(min(n, max_length))`` is what a run with ``--max-length`` actually sees.
    """
    over = sum(1 for n in lengths if n > max_length)
    return {
        "samples": len(lengths),
        "truncated": over,
        "share": over / len(lengths) if lengths else 0.0,
        "longest": max(lengths, default=0),
        "kept_tokens": sum(min(n, max_length) for n in lengths),
    }


def activation_cache_bytes(tokens: int, num_layers: int, hidden: int, bytes_per_value: int) -> int:
    """Size of model A's hidden-state cache: ``tokens x (num_layers + 1) x hidden x bytes``.

    ``collect_activation_norms.py`` keeps every hidden state (embeddings + one per layer, the
    ``output_hidden_states`` tuple) of every real (non-padding) token on disk while model B runs,
    in model A's dtype: 4 bytes per value in fp32 (CPU), 2 in bf16 (CUDA) / fp16 (MPS, or
    ``--cache-fp16`` on an fp32 model; values beyond fp16's range fall back to fp32 there).
    """
    return tokens * (num_layers + 1) * hidden * bytes_per_value


def cache_dtype(dtype: str, device: str, cache_fp16: bool) -> tuple[str, int]:
    """``(name, bytes per value)`` of the activation cache, as collect_activation_norms.py picks it.

    The cache holds model A's dtype: ``--dtype auto`` is bf16 on CUDA, fp16 on MPS, fp32 on CPU;
    ``--cache-fp16`` turns an fp32 cache into fp16 and leaves a 16-bit one as it is.
    """
    if dtype == "auto":
        dtype = {"cuda": "bf16", "mps": "fp16"}.get(device, "fp32")
    if cache_fp16 and dtype == "fp32":
        dtype = "fp16"
    return dtype, 4 if dtype == "fp32" else 2


def disk_status(need: int, free: int) -> str:
    """``PASS`` when the cache fits with headroom (need <= 80 % of free), else ``WARN``.

    Not FAIL: the estimate is for one cache directory and one model, and the data may be fine.
    """
    return "PASS" if need <= DISK_HEADROOM * free else "WARN"


def dims_from_config(config: dict) -> dict | None:
    """``{"num_layers", "hidden", "max_positions"}`` from a config.json dict (NeoX/Llama/GPT-2 naming).

    ``max_positions`` (``max_position_embeddings`` / ``n_positions``) is ``None`` when absent;
    collect_activation_norms.py cuts texts at ``min(--max-length, max_positions)``.
    """
    cfg = config["text_config"] if isinstance(config.get("text_config"), dict) else config
    first = lambda keys: next((cfg[k] for k in keys if isinstance(cfg.get(k), int)), None)  # noqa: E731
    layers = first(("num_hidden_layers", "n_layer", "num_layers"))
    hidden = first(("hidden_size", "n_embd", "d_model"))
    if not (layers and hidden):
        return None
    return {"num_layers": layers, "hidden": hidden, "max_positions": first(("max_position_embeddings", "n_positions"))}


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def repro_settings(args_grad_accum: int | None, args_cache_fp16: bool, environ: dict) -> list[Check]:
    """Reproducibility flags: gradient accumulation > 1 and an fp16 activation cache.

    Read from the command line (``--grad-accum-steps``, ``--cache-fp16``) or from the environment
    variables the run scripts use (``GRAD_ACCUM`` for run_unlearn.sh, ``CACHE_FP16`` for
    run_activations.sh); the flag wins over the variable.
    """
    checks = []
    source = "--grad-accum-steps"
    steps = args_grad_accum
    if steps is None and environ.get("GRAD_ACCUM", "").strip():
        source, raw = "GRAD_ACCUM", environ["GRAD_ACCUM"].strip()
        try:
            steps = int(raw)
        except ValueError:
            checks.append(Check("WARN", "grad accumulation", f"GRAD_ACCUM={raw!r} is not an integer number of steps"))
            steps = None
    if steps is not None and steps > 1:
        checks.append(Check("WARN", "grad accumulation", (
            f"{steps} steps ({source}={steps}): accumulating {steps} micro-batches is not equivalent to one "
            f"{steps}x larger batch (the loss is averaged per micro-batch, so samples and tokens are weighted "
            "differently, and the numbers are not comparable with a run without it); fine for exploration, "
            "use 1 for final experiments"), {"steps": steps, "source": source}))
    elif not checks:
        checks.append(Check("PASS", "grad accumulation", "off (1 step per optimiser update)", {"steps": steps or 1}))

    env_fp16 = env_flag("CACHE_FP16", environ=environ)
    if args_cache_fp16 or env_fp16:
        source = "--cache-fp16" if args_cache_fp16 else f"CACHE_FP16={environ.get('CACHE_FP16')}"
        checks.append(Check("WARN", "activation cache dtype", (
            f"fp16 ({source}): model A's hidden states are rounded to fp16 (~3 significant digits, "
            "overflow above 65504) before Δh = h_B - h_A is taken, so the activation norms and diffs "
            "change; use the fp32 default for final numbers"), {"dtype": "fp16", "source": source}))
    else:
        checks.append(Check("PASS", "activation cache dtype", "--cache-fp16 off: the cache keeps model A's dtype, lossless (default)",
                            {"dtype": "model"}))
    return checks


# ----------------------------------------------------------------------------- model files, offline-safe

def find_model_file(model: str, filename: str) -> str | None:
    """Path of ``filename`` for ``model``: a local directory, else the Hugging Face cache, else the hub.

    The hub is asked only when ``HF_HUB_OFFLINE`` is not set and its host answers (the file then
    lands in the HF cache, like any download); any failure (offline, unknown repo, invalid ID)
    is ``None``, never an exception.
    """
    local = Path(model).expanduser()
    if local.is_dir():
        f = local / filename
        return str(f) if f.is_file() else None
    if local.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        return None            # a path that is not a model directory: nothing on the hub either
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
        cached = try_to_load_from_cache(model, filename)
        if isinstance(cached, str):
            return cached
        if not hub_reachable():
            return None
        return hf_hub_download(model, filename)
    except Exception:
        return None


def load_token_counter(name: str):
    """``(count_fn, description)`` for tokenizer ``name`` (directory or hub ID), or ``(None, reason)``.

    Uses the fast tokenizer's ``tokenizer.json`` through the ``tokenizers`` library (what
    transformers' fast tokenizers run, special tokens included, without importing torch); models
    that ship only a slow tokenizer fall back to ``transformers.AutoTokenizer``.
    """
    path = find_model_file(name, "tokenizer.json")
    if path is not None:
        try:
            from tokenizers import Tokenizer
            tok = Tokenizer.from_file(path)
            tok.no_truncation()
            tok.no_padding()
            return (lambda texts: [len(e.ids) for e in tok.encode_batch(texts)]), f"tokenizer.json of {name}"
        except Exception as e:
            return None, f"cannot read tokenizer.json of {name} ({type(e).__name__})"
    local = Path(name).expanduser()
    if local.is_dir() and any((local / f).is_file() for f in ("tokenizer_config.json", "tokenizer.model", "vocab.json")):
        try:
            from transformers import AutoTokenizer
            from transformers.utils import logging as hf_logging
            hf_logging.set_verbosity_error()
            tok = AutoTokenizer.from_pretrained(str(local), local_files_only=True)
            return (lambda texts: [len(ids) for ids in tok(texts, add_special_tokens=True)["input_ids"]]), f"tokenizer of {name}"
        except Exception as e:
            return None, f"cannot load the tokenizer of {name} ({type(e).__name__})"
    where = "in that directory" if local.is_dir() else "locally or in the Hugging Face cache" + (
        " (offline)" if not hub_reachable() else ", nor on the hub")
    return None, f"no tokenizer for {name} {where}"


def model_folder_problem(folder: Path) -> str | None:
    """Why the tools could not load the model folder ``folder``, or None when they can.

    What ``from_pretrained(use_safetensors=True)`` needs, checked without importing torch:
    a config.json (JSON naming a ``model_type``) and safetensors weights (every shard of
    ``model.safetensors.index.json``, else every ``*.safetensors``), each with a readable header
    (8-byte little-endian length + JSON) and at least as many bytes as its tensors' data offsets say.
    """
    config = folder / "config.json"
    if not config.is_file():
        return "no config.json (not a Hugging Face model folder)"
    try:
        if not json.loads(config.read_text(encoding="utf-8")).get("model_type"):
            return "its config.json names no model_type"
    except (OSError, ValueError, AttributeError) as e:
        return f"its config.json cannot be read ({first_line(e)})"
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            return f"its {index.name} cannot be read ({first_line(e)})"
    else:
        shards = sorted(p.name for p in folder.glob("*.safetensors"))
    if not shards:
        return "no .safetensors weights (the tools never load pickled .bin/.pt files)"
    for name in shards:
        shard = folder / name
        if not shard.is_file():
            return f"{name}, listed in {index.name}, is missing"
        try:
            with open(shard, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                size = shard.stat().st_size
                if n <= 0 or 8 + n > size:
                    return f"{name} is truncated or not a safetensors file"
                header = json.loads(f.read(n))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            return f"{name} is not a readable safetensors file ({first_line(e)})"
        if 8 + n + end > size:
            return f"{name} is truncated ({size} bytes, its header promises {8 + n + end})"
    return None


def check_model(model: str) -> Check:
    """Can the next run load ``--model``? A local folder is checked in full (``model_folder_problem``);
    a hub ID through its config.json, from the local cache or, when it can be reached, the hub."""
    local = Path(model).expanduser()
    if local.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1 or not HUB_ID_RE.match(model):
        if not local.exists():
            return Check("FAIL", "model", f"{model} does not exist")
        if not local.is_dir():
            return Check("FAIL", "model", f"{model} is a file, not a model folder")
        problem = model_folder_problem(local)
        if problem:
            return Check("FAIL", "model", f"{model} cannot be loaded: {problem}", {"model": model})
        return Check("PASS", "model", f"{model}: config.json and safetensors weights readable", {"model": model})
    config = find_model_file(model, "config.json")
    if config is None:
        if hub_reachable():
            return Check("FAIL", "model", f"{model} is neither a local folder nor a model on the Hugging Face hub")
        return Check("WARN", "model", f"{model} is not in the local Hugging Face cache and the hub cannot be reached "
                                      "(offline): not verified", {"model": model})
    try:
        ok = bool(json.loads(Path(config).read_text(encoding="utf-8")).get("model_type"))
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        return Check("FAIL", "model", f"{model} cannot be loaded: its config.json is unreadable or names no model_type")
    return Check("PASS", "model", f"{model}: config.json found (weights are fetched by the run)", {"model": model})


def model_dims(model: str) -> tuple[dict | None, str]:
    """``(dims, source)``: layer count and hidden size of ``model`` from its config.json.

    Falls back to the reference study's GPT-NeoX 6.9B shape (32 layers, hidden 4096) for the
    study's three hub models when their config is not available offline.
    """
    path = find_model_file(model, "config.json")
    if path is not None:
        try:
            dims = dims_from_config(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError):
            dims = None
        if dims:
            return dims, f"config.json of {model}"
    if model.rstrip("/") in STUDY_MODELS:
        return dict(STUDY_DIMS), "the reference study's GPT-NeoX 6.9B shape (assumed: config.json not available offline)"
    return None, f"no config.json for {model} found locally" + ("" if not hub_reachable() else " or on the hub")


# ----------------------------------------------------------------------------- the checks

def check_data(args, counter, counter_note: str, max_positions: int | None = None) -> tuple[list[Check], dict]:
    """Files, overlap, duplicates, balance and truncation. Returns the checks and token stats.

    Texts are cut at ``min(--max-length, max_positions)``: the activation tool never feeds a
    model more positions than it has.
    """
    checks: list[Check] = []
    forget, f_err = read_samples_or_reason(args.forget_data)
    retain, r_err = read_samples_or_reason(args.retain_data)
    f_name, r_name = Path(args.forget_data).name, Path(args.retain_data).name
    if forget is None or retain is None:
        parts = [f_err or f"{f_name} {len(forget)} samples", r_err or f"{r_name} {len(retain)} samples"]
        hint = " (create them with create_datasets.py, or pass --forget-data / --retain-data)"
        checks.append(Check("FAIL", "files", "; ".join(parts) + hint,
                            {"forget_error": f_err or None, "retain_error": r_err or None}))
        return checks, {}
    checks.append(Check("PASS", "files", f"{f_name} {len(forget)} samples, {r_name} {len(retain)} samples",
                        {"forget_samples": len(forget), "retain_samples": len(retain)}))

    # Overlap: a forget sample that is also in retain is trained both up and down at once.
    exact = find_overlap(forget, retain)
    norm = find_overlap(forget, retain, key=normalise)

    def examples(hits):
        return "; ".join(f'forget:{i}=retain:{j} "{shorten(t)}"' for i, j, t in hits[:3])

    if exact:
        checks.append(Check("FAIL", "overlap (exact)", (
            f"{len(exact)} of {len(forget)} forget samples also appear verbatim in {r_name}, e.g. {examples(exact)}"),
            {"count": len(exact), "examples": [{"forget_line": i, "retain_line": j, "text": t} for i, j, t in exact[:3]]}))
    else:
        checks.append(Check("PASS", "overlap (exact)", f"no forget sample appears verbatim in {r_name}", {"count": 0}))
    if norm:
        exact_lines = {i for i, _, _ in exact}
        only_norm = [h for h in norm if h[0] not in exact_lines]
        extra = f" ({len(only_norm)} of them only after normalising)" if exact else ""
        checks.append(Check("FAIL", "overlap (normalised)", (
            f"{len(norm)} of {len(forget)} forget samples match a {r_name} sample after lowercasing and "
            f"collapsing whitespace{extra}, e.g. {examples(only_norm or norm)}"),
            {"count": len(norm), "only_after_normalising": len(only_norm),
             "examples": [{"forget_line": i, "retain_line": j, "text": t} for i, j, t in (only_norm or norm)[:3]]}))
    else:
        checks.append(Check("PASS", "overlap (normalised)", "no match after lowercasing and collapsing whitespace", {"count": 0}))

    for split, samples, fname in (("forget", forget, f_name), ("retain", retain, r_name)):
        extra, texts = count_duplicates(samples, key=normalise)
        exact_extra, _ = count_duplicates(samples)
        if extra:
            checks.append(Check("WARN", f"duplicates ({split})", (
                f"{extra} of {len(samples)} samples in {fname} repeat an earlier one ({texts} distinct texts; "
                f"{exact_extra} exact copies): they weigh more in training and in the activation means"),
                {"count": extra, "exact": exact_extra, "distinct": texts}))
        else:
            checks.append(Check("PASS", f"duplicates ({split})", f"none in {fname}", {"count": 0}))

    ratio = balance_ratio(len(forget), len(retain))
    sizes = f"{len(forget)} forget vs {len(retain)} retain samples"
    if ratio > BALANCE_LIMIT:
        checks.append(Check("WARN", "balance", (
            f"{sizes} ({ratio:.2f}:1, beyond {BALANCE_LIMIT:.0f}:1): when forget and retain batches are paired "
            "the smaller set is seen more often (or the larger one cut), and the forget and retain means rest "
            "on unequal sample sizes"), {"ratio": ratio}))
    else:
        checks.append(Check("PASS", "balance", f"{sizes} ({ratio:.2f}:1)", {"ratio": ratio}))

    # Truncation: token counts with the model's tokenizer when it is available, else approximate.
    lengths = {}
    for split, samples in (("forget", forget), ("retain", retain)):
        texts = [t for _, t in samples]
        lengths[split] = counter(texts) if counter else [approx_token_count(t) for t in texts]
    limit = min(args.max_length, max_positions or args.max_length)
    stats = {s: truncation_stats(lengths[s], limit) for s in lengths}
    how = "" if counter else "; approximate counts, max(words x 1.3, bytes / 4): pass --tokenizer for exact ones"
    per_split = ", ".join(f"{st['truncated']} of {st['samples']} {s} ({100 * st['share']:.1f}%)" for s, st in stats.items())
    limit_text = (f"--max-length {limit} tokens" if limit == args.max_length
                  else f"the model's {limit} positions (below --max-length {args.max_length})")
    longest = max(st["longest"] for st in stats.values())
    details = {"max_length": args.max_length, "limit": limit, "exact": counter is not None,
               "counted_with": counter_note, **stats}
    if any(st["truncated"] for st in stats.values()):
        checks.append(Check("WARN", "truncation", (
            f"{per_split} samples exceed {limit_text} and would be cut (longest {longest} tokens){how}"), details))
    else:
        checks.append(Check("PASS", "truncation", f"all samples fit in {limit_text} (longest {longest}){how}", details))
    return checks, stats


def check_environment(args, token_stats: dict, dims: dict | None, dims_source: str, environment: dict) -> list[Check]:
    """torch, devices, bf16, package versions, and free disk versus the activation cache."""
    checks: list[Check] = []
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    environment["packages"] = versions
    missing = [p for p in REQUIRED_PACKAGES if versions[p] is None]
    listed = ", ".join(f"{p} {v or 'missing'}" for p, v in versions.items())
    checks.append(Check("FAIL" if missing else "INFO", "packages",
                        (f"missing {', '.join(missing)} (run `uv run --script check_experiment.py`); " if missing else "") + f"python {platform.python_version()}, {listed}",
                        {"python": platform.python_version(), **versions}))

    device = "cpu"
    try:
        import torch
    except Exception as e:                      # torch missing or broken: no run can start; report, do not crash
        checks.append(Check("FAIL", "torch", f"cannot import torch ({type(e).__name__}: {e})"))
        environment["torch"] = None
    else:
        cuda = torch.cuda.is_available()
        mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        env_t = {"version": torch.__version__, "cuda": cuda, "cuda_version": torch.version.cuda, "mps": mps,
                 "devices": [], "bf16": None}
        checks.append(Check("INFO", "torch", f"{torch.__version__} (built for CUDA {torch.version.cuda or 'none'})"))
        if cuda:
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                env_t["devices"].append({"name": p.name, "memory_bytes": p.total_memory})
            kinds = Counter(f"{d['name']} ({human_bytes(d['memory_bytes'])})" for d in env_t["devices"])
            checks.append(Check("PASS", "device", "CUDA available: " + ", ".join(f"{n} x {k}" for k, n in kinds.items())))
            env_t["bf16"] = bool(torch.cuda.is_bf16_supported())
            if env_t["bf16"]:
                checks.append(Check("PASS", "bf16", "supported on CUDA (--dtype auto uses bf16)"))
            else:
                checks.append(Check("WARN", "bf16", "not supported by this GPU but --dtype auto picks bf16 on CUDA: "
                                    "pass --dtype fp16 or --dtype fp32"))
        elif mps:
            try:
                torch.ones(1, dtype=torch.bfloat16, device="mps")
                env_t["bf16"] = True
            except Exception:
                env_t["bf16"] = False
            checks.append(Check("PASS", "device", "Apple MPS available (--dtype auto uses fp16)"))
            checks.append(Check("INFO", "bf16", f"{'supported' if env_t['bf16'] else 'not supported'} on MPS"))
        else:
            checks.append(Check("INFO", "device", "no CUDA or MPS: CPU only (fine for --demo; the 6.9B study needs a GPU)"))
            checks.append(Check("INFO", "bf16", "not used on CPU (--dtype auto uses fp32 there)"))
        environment["torch"] = env_t
        device = "cuda" if cuda else "mps" if mps else "cpu"
    if args.device != "auto":
        device = args.device

    # Free disk versus model A's hidden-state cache for the next collect_activation_norms.py run
    # (which refuses to start when the cache does not fit).
    cache_dir = Path(args.cache_dir).expanduser()
    probe = cache_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    dtype, itemsize = cache_dtype(args.dtype, device, args.cache_fp16 or env_flag("CACHE_FP16"))
    disk = {"cache_dir": str(cache_dir), "free_bytes": free, "needed_bytes": None, "dims": dims,
            "dims_source": dims_source, "device": device, "cache_dtype": dtype, "bytes_per_value": itemsize}
    environment["disk"] = disk
    if not cache_dir.is_dir():
        checks.append(Check("WARN", "disk", f"--cache-dir {cache_dir} is not a directory: collect_activation_norms.py "
                                            "will refuse it", disk))
        return checks
    if dims is None or not token_stats:
        why = f"{dims_source}: pass --model DIR" if dims is None else "the data files are unusable"
        checks.append(Check("WARN" if dims is None else "INFO", "disk", (f"{human_bytes(free)} free in {cache_dir}; the activation cache could "
                                             f"not be estimated ({why})"), disk))
        return checks
    tokens = sum(st["kept_tokens"] for st in token_stats.values())
    need = activation_cache_bytes(tokens, dims["num_layers"], dims["hidden"], itemsize)
    disk["needed_bytes"], disk["tokens"] = need, tokens
    what = (f"activation cache ~{human_bytes(need)} ({tokens} tokens x {dims['num_layers'] + 1} hidden states x "
            f"{dims['hidden']} x {itemsize} B, {dtype} on {device}; dims from {dims_source})")
    status = disk_status(need, free)
    if need > free:
        what += (f" exceeds the {human_bytes(free)} free in {cache_dir}: collect_activation_norms.py will refuse to "
                 "start; point --cache-dir / $CACHE_DIR / $TMPDIR at a bigger disk or lower --max-length")
    elif status == "WARN":
        what += f" uses over {DISK_HEADROOM:.0%} of the {human_bytes(free)} free in {cache_dir}"
    else:
        what += f"; {human_bytes(free)} free in {cache_dir}"
    checks.append(Check(status, "disk", what, disk))
    return checks


# ----------------------------------------------------------------------------- the memory plan
# Bytes per TRAINABLE parameter of each training precision mode (weights + gradients + AdamW's two
# moments + what the mode adds), shared with unlearn.py's --precision (issue 26):
#   fp32       4 weights + 4 grads + 8 Adam moments (fp32)                          = 16
#   mixed      4 fp32 master + 4 grads + 8 moments + 2 transient half copy (autocast) = 18
#   bf16       2 bf16 weights + 2 grads + 2 + 2 moments + 2 Kahan compensation      = 10
#   bf16_pure  2 + 2 + 2 + 2, no compensation (today's --dtype bf16 in unlearn.py/tamper_attack.py) = 8
BYTES_PER_TRAINABLE = {"fp32": 16, "mixed": 18, "bf16": 10, "bf16_pure": 8}
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
# Bytes per trained parameter of the optimizer step's temporary (torch.optim.AdamW, foreach on CUDA:
# sqrt of the second moment for every tensor at once); absent = one tensor at a time (compensated bf16)
OPTIMIZER_TEMP_BYTES = {"fp32": 4, "mixed": 4, "bf16_pure": 2}
# Saved activations of one decoder layer in training, in elements per token: ACT_PER_HIDDEN x hidden
# + ACT_PER_INTERMEDIATE x intermediate (layer-norm inputs and outputs, q/k/v and the rotary copies,
# the attention output, the MLP's pre- and post-activation). Attention probabilities are not stored:
# transformers 5 uses SDPA (flash / memory-efficient kernels). Checked against measured CPU peaks
# (tests/test_memory_plan.py) within 25 %.
ACT_PER_HIDDEN = 10
ACT_PER_INTERMEDIATE = 2
GPU_RESERVED = 2**30          # CUDA context, cuBLAS workspace and allocator slack, per GPU
# peft's default LoRA targets per architecture (peft.utils.constants), for the adapter size
LORA_DEFAULT_TARGETS = {"gpt_neox": ("query_key_value",), "llama": ("q_proj", "v_proj"), "mistral": ("q_proj", "v_proj"),
                        "qwen2": ("q_proj", "v_proj"), "gpt2": ("c_attn",), "gptj": ("q_proj", "v_proj")}
# The reference study's model when its config.json is not available offline (Pythia-6.9B shape)
STUDY_CONFIG = {"model_type": "gpt_neox", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                "intermediate_size": 16384, "vocab_size": 50304, "max_position_embeddings": 2048,
                "tie_word_embeddings": False}


@dataclass
class StepSettings:
    """What one step of the study does with the model, as far as memory goes.

    kind: ``train`` (forward, backward, AdamW step), ``infer`` (no-grad forward) or ``stream``
    (collect_param_stats.py: one tensor pair at a time). dtype: the weights' dtype when loaded.
    precision: training mode (a key of BYTES_PER_TRAINABLE). sequences: forward passes whose
    activations are alive at once (forget + retain = 2). trainable_layers: None = every parameter,
    else the number of decoder layers trained (rmu/cb: the --layer-id layers). layers_run: decoder
    layers the forward goes through (a truncated forward stops at the top target layer).
    frozen_copy: the method keeps a copy of the trainable parameters (rmu/cb without LoRA).
    shard: training parameters, gradients and optimizer states are split over ``gpus`` (FSDP
    FULL_SHARD, configs/accelerate_fsdp.yaml); inference splits the layers (device_map auto).
    offload: optimizer states on the CPU (training) / layers beyond the GPU on the CPU (inference).
    """
    step: str
    kind: str = "infer"
    dtype: str = "bf16"
    precision: str | None = None
    batch: int = 8
    length: int = 512
    sequences: int = 1
    lora_r: int = 0
    lora_targets: tuple[str, ...] | None = None
    trainable_layers: int | None = None
    layers_run: int | None = None
    gradient_checkpointing: bool = False
    logits: bool = True
    hidden_states: bool = False
    frozen_copy: bool = False
    gpus: int = 1
    shard: bool = False
    offload: bool = False


def model_shape(config) -> dict:
    """Parameter counts of a model built from ``config`` alone (a transformers config object or a
    config.json dict), on the meta device: no weights are read or allocated.

    Returns ``{"params", "embedding_params" (input and output embeddings, not in a decoder layer),
    "layer_params" (one decoder layer), "largest_tensor", "hidden", "intermediate", "layers",
    "vocab", "model_type", "linears": [(name, in, out) of one decoder layer]}``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if isinstance(config, dict):
        kw = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "transformers_version")}
        config = AutoConfig.for_model(config["model_type"], **kw)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layers = None
    for path in ("gpt_neox.layers", "model.layers", "transformer.h", "model.decoder.layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None:
            layers = obj
            break
    text = getattr(config, "text_config", None) or config
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd")
    inter = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden
    params = sum(p.numel() for p in model.parameters())
    layer_params = sum(p.numel() for p in layers[0].parameters()) if layers is not None else 0
    linears = []
    if layers is not None:
        for name, mod in layers[0].named_modules():
            w = getattr(mod, "weight", None)
            if w is not None and w.dim() == 2 and not isinstance(mod, torch.nn.Embedding):
                # nn.Linear stores (out, in); GPT-2's Conv1D stores (in, out)
                fan_in, fan_out = (w.shape[0], w.shape[1]) if type(mod).__name__ == "Conv1D" else (w.shape[1], w.shape[0])
                linears.append((name.rsplit(".", 1)[-1], int(fan_in), int(fan_out)))
    n_layers = len(layers) if layers is not None else getattr(text, "num_hidden_layers", 0)
    return {"params": params, "layer_params": layer_params,
            "embedding_params": params - n_layers * layer_params,
            "largest_tensor": max(p.numel() for p in model.parameters()),
            "hidden": hidden, "intermediate": inter, "layers": n_layers, "vocab": text.vocab_size,
            "model_type": getattr(config, "model_type", ""), "linears": linears}


def lora_params(shape: dict, r: int, targets: tuple[str, ...] | None) -> int:
    """Adapter parameters: r x (fan_in + fan_out) per adapted matrix, in every decoder layer.
    ``targets`` None: peft's default for the architecture; ``("all-linear",)``: every matrix."""
    if targets is None:
        targets = LORA_DEFAULT_TARGETS.get(shape["model_type"], ("all-linear",))
    per_layer = sum(r * (i + o) for name, i, o in shape["linears"] if "all-linear" in targets or name in targets)
    return per_layer * shape["layers"]


def estimate_memory(shape: dict, s: StepSettings) -> dict:
    """Peak memory of one step on one device, in bytes, and its parts. THE formulas of the memory
    plan (docs/scale.md explains each; tests/test_memory_plan.py checks them against measured peaks).

    P = parameters, P_t = trained parameters, w = bytes per weight of s.dtype, a = bytes per
    activation (2 for bf16/fp16 and the mixed mode's autocast, else 4), T = tokens alive at once
    = batch x length x sequences, h / I / V / L = hidden, intermediate, vocabulary, layers run.

      train, full     states  = P_t x BYTES_PER_TRAINABLE[precision] + (P - P_t) x w
      train, LoRA     states  = P x w + adapters x 16 (fp32 adapters and AdamW)
      frozen copy     + P_t x w (rmu/cb keep the trained parameters' initial values)
      activations     no checkpointing: L x T x (10 h + 2 I) x a
                      checkpointing:    L x T x h x a + T x (10 h + 2 I) x a (one layer recomputed)
      logits          T x V x (a + 4 + 4) (logits, their fp32 log-softmax, its gradient)
      infer           P x w + T x (2 h + I) x a + T x V x (a + 4) [+ (L + 1) x T x h x a hidden states]
      stream          6 x largest tensor x 4 (two fp32 matrices, their difference, SVD workspace)
      sharded (N GPUs)   states / N + 2 x one layer's parameters x w (gathered layer and prefetch)
      offload (train)    the optimizer moments on the CPU: states - P_t x 8 (fp32 / mixed) or x 4 (bf16)
      offload (infer)    one decoder layer (and the embeddings) on the GPU at a time
      peak = states + max(activations + logits, optimizer step temporary: P_t x 4 (fp32, mixed, LoRA),
                                       P_t x 2 (bf16_pure), 6 x largest tensor x 4 (bf16, per tensor))

    Returns ``{"weights_and_states", "activations", "logits", "total"}`` (bytes, per device)."""
    P, L_all = shape["params"], shape["layers"]
    h, I, V = shape["hidden"], shape["intermediate"], shape["vocab"]
    w = DTYPE_BYTES[s.dtype]
    half = s.dtype in ("bf16", "fp16") or s.precision in ("mixed", "bf16", "bf16_pure")
    a = 2 if half else 4
    T = s.batch * s.length * s.sequences
    L = L_all if s.layers_run is None else min(s.layers_run, L_all)
    per_layer_act = T * (ACT_PER_HIDDEN * h + ACT_PER_INTERMEDIATE * I) * a
    out = {"weights_and_states": 0, "activations": 0, "logits": 0}
    if s.kind == "stream":
        out["weights_and_states"] = 6 * shape["largest_tensor"] * 4
    elif s.kind == "infer":
        weights = P * w
        if s.offload:
            weights = (shape["embedding_params"] + shape["layer_params"]) * w
        elif s.shard and s.gpus > 1:
            weights = math.ceil(P / s.gpus) * w
        out["weights_and_states"] = weights
        out["activations"] = T * (2 * h + I) * a + ((L_all + 1) * T * h * a if s.hidden_states else 0)
        out["logits"] = T * V * (a + 4) if s.logits else 0
    else:
        precision = s.precision or {"fp32": "fp32", "fp16": "mixed", "bf16": "bf16_pure"}[s.dtype]
        if s.lora_r:
            trained = lora_params(shape, s.lora_r, s.lora_targets)
            states = P * w + trained * BYTES_PER_TRAINABLE["fp32"]
            moments = trained * 8
        else:
            trained = P if s.trainable_layers is None else min(s.trainable_layers, L_all) * shape["layer_params"]
            states = trained * BYTES_PER_TRAINABLE[precision] + (P - trained) * w
            if s.frozen_copy:
                states += trained * w
            moments = trained * (8 if precision in ("fp32", "mixed") else 4)
        if s.offload:
            states -= moments
        if s.shard and s.gpus > 1:
            states = math.ceil(states / s.gpus) + 2 * shape["layer_params"] * w
        out["weights_and_states"] = states
        if s.gradient_checkpointing:
            out["activations"] = L * T * h * a + per_layer_act
        else:
            out["activations"] = L * per_layer_act
        out["logits"] = T * V * (a + 8) if s.logits else 0
        # torch's foreach AdamW (CUDA) makes one temporary the size of all moments (the square root of
        # the second moment); the compensated bf16 optimizer updates one tensor at a time
        if s.lora_r:
            transient = trained * 4
        elif precision in OPTIMIZER_TEMP_BYTES:
            transient = trained * OPTIMIZER_TEMP_BYTES[precision]
        else:   # CompensatedAdamW: per tensor, ~6 fp32 temporaries (g, m, v, denominator, update, weight)
            transient = 6 * shape["largest_tensor"] * 4
        if s.shard and s.gpus > 1:
            transient = math.ceil(transient / s.gpus)
        out["total"] = states + max(out["activations"] + out["logits"], transient)
        return out
    out["total"] = out["weights_and_states"] + out["activations"] + out["logits"]
    return out


def parse_size(text: str) -> int:
    """``80GB`` / ``80G`` / ``24GiB`` / ``81920MiB`` / a plain number of bytes -> bytes (GB = 10^9,
    GiB = 2^30; a bare G counts as GiB, as nvidia-smi's sizes do)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B?)\s*", text.upper())
    if not m or not float(m.group(1)) > 0:
        raise UsageError(f"--gpu-memory must be a size such as 80GB, 24GiB or 81920MiB, got {text!r}")
    number, prefix, suffix = float(m.group(1)), m.group(2), m.group(3)
    power = "_KMGT".index(prefix) if prefix else 0
    base = 1000 if suffix == "B" else 1024
    return int(number * base ** power)


def fits(shape: dict, s: StepSettings, gpu_bytes: int) -> tuple[bool, dict]:
    """Whether the step fits: its estimate plus GPU_RESERVED within one GPU's memory."""
    est = estimate_memory(shape, s)
    return est["total"] + GPU_RESERVED <= gpu_bytes, est


def cheapest_fix(shape: dict, s: StepSettings, gpu_bytes: int, max_gpus: int = 8) -> tuple[str, StepSettings] | None:
    """The cheapest change that makes a step that does not fit fit, as ``(advice, new settings)``, or
    None. Tried in this order, cheapest first: settings that keep the method and the hardware
    (gradient checkpointing, the compensated bf16 mode), then LoRA (r=16), then more GPUs (sharded,
    the fewest that fit), then offload (optimizer states / layers on the CPU, slowest)."""
    from dataclasses import replace

    tries: list[tuple[str, StepSettings]] = []
    if s.kind == "train":
        if not s.gradient_checkpointing:
            tries.append(("--gradient-checkpointing", replace(s, gradient_checkpointing=True)))
        gc = replace(s, gradient_checkpointing=True)
        if not s.lora_r and (s.precision or "") not in ("bf16", "bf16_pure") and s.dtype != "bf16":
            tries.append(("--precision bf16 (compensated bf16: 10 bytes per trained parameter)",
                          replace(gc, precision="bf16", dtype="bf16")))
        if not s.lora_r:
            tries.append(("LoRA (--lora-r 16)", replace(gc, lora_r=16, dtype="bf16" if s.dtype == "fp32" else s.dtype)))
    if s.kind in ("train", "infer"):
        for n in range(max(2, s.gpus + 1), max_gpus + 1):
            what = ("accelerate launch --config_file configs/accelerate_fsdp.yaml (FSDP, sharded)" if s.kind == "train"
                    else "--device-map auto over the GPUs")
            tries.append((f"{n} GPUs: {what}", replace(s, gpus=n, shard=True)))
        tries.append(("offload: optimizer states on the CPU (FSDP cpu_offload / DeepSpeed ZeRO offload)" if s.kind == "train"
                      else "offload: --device-map auto --max-memory (layers beyond the GPU on the CPU)",
                      replace(s, offload=True, gradient_checkpointing=s.kind == "train" or s.gradient_checkpointing)))
    for advice, new in tries:
        if fits(shape, new, gpu_bytes)[0]:
            return advice, new
    return None


def study_steps(args, environ: dict) -> list[StepSettings]:
    """The steps the study runs on its model, each with the settings it will get on a GPU (the
    tools' defaults, overridden as the run scripts do from the environment and the flags)."""
    length = args.max_length
    dtype = args.dtype if args.dtype != "auto" else "bf16"        # --dtype auto is bf16 on CUDA
    batch = lambda var, default: int(environ.get(var) or default)  # noqa: E731
    method = args.method
    precision = args.precision
    if precision in (None, "auto"):   # unlearn.py's resolve_precision: mixed unless it does not fit 80 % of the GPU
        if dtype == "fp32":
            precision = "fp32"
        else:
            p_total = args.model_params or 0
            precision = "bf16" if dtype == "bf16" and 18 * p_total > 0.8 * args.gpu_memory else "mixed"
    lora_r = args.lora_r
    repr_method = method in ("rmu", "cb", "lat", "cb_lat")
    layer_ids = [int(x) for x in re.findall(r"\d+", environ.get("LAYER_ID", "5,6,7"))] or [7]
    unlearn = StepSettings(
        f"unlearn.py --method {method}" + (f" --lora-r {lora_r}" if lora_r else "") + (f" --precision {precision}" if precision else ""),
        kind="train", dtype="bf16" if precision in ("bf16", "bf16_pure") else "fp32",
        precision=precision, batch=batch("BATCH_SIZE", 4), length=length,
        sequences=1 if method in ("ga_simple", "ga") else 2, lora_r=lora_r,
        trainable_layers=len(layer_ids) if repr_method else None,
        layers_run=max(layer_ids) + 1 if method in ("rmu", "cb", "cb_lat") else None,
        gradient_checkpointing=environ.get("GRADIENT_CHECKPOINTING", "1").strip().lower() not in ("0", "false", "no", "off"),
        logits=not repr_method or method == "lat", frozen_copy=method in ("rmu", "cb", "cb_lat") and not lora_r,
        gpus=args.gpus, shard=args.gpus > 1)
    tamper_lora = int(environ.get("TAMPER_LORA_R") or 0)
    return [
        StepSettings("collect_param_stats.py", kind="stream", dtype="fp32"),
        StepSettings("collect_activation_norms.py", kind="infer", dtype=dtype, batch=batch("BATCH_SIZE", 8), length=length,
                     logits=False, hidden_states=True, gpus=args.gpus, shard=args.gpus > 1),
        StepSettings("evaluate_unlearning.py", kind="infer", dtype=dtype, batch=batch("BATCH_SIZE", 8), length=length,
                     gpus=args.gpus, shard=args.gpus > 1),
        StepSettings("tamper_attack.py" + (f" --lora-r {tamper_lora}" if tamper_lora else ""), kind="train", dtype=dtype,
                     batch=batch("TAMPER_BATCH_SIZE", 4), length=length, lora_r=tamper_lora, gpus=args.gpus, shard=args.gpus > 1),
        unlearn,
    ]


def check_memory(args, environ: dict) -> tuple[list[Check], dict]:
    """One check per study step: its estimated peak per GPU against ``--gpu-memory``, and, when it
    does not fit, the cheapest change that makes it fit."""
    config, source = model_config(args.model)
    if config is None:
        return [Check("WARN", "memory", f"no estimate: {source}")], {"source": source}
    try:
        shape = model_shape(config)
    except Exception as e:  # an architecture transformers cannot build
        return [Check("WARN", "memory", f"no estimate: cannot build {args.model} from its config ({first_line(e)})")], {}
    gpu = args.gpu_memory
    plan = {"gpu_memory_bytes": gpu, "gpus": args.gpus, "config_source": source,
            "params": shape["params"], "steps": []}
    checks = [Check("INFO", "memory plan", (
        f"{args.model}: {shape['params'] / 1e9:.2f}B parameters ({source}); {args.gpus} x {human_bytes(gpu)} GPU; "
        f"estimates per GPU include {human_bytes(GPU_RESERVED)} reserved (docs/scale.md)"),
        {"params": shape["params"], "config_source": source})]
    args.model_params = shape["params"]
    for s in study_steps(args, environ):
        ok, est = fits(shape, s, gpu)
        entry = {"step": s.step, "fits": ok, "estimate_bytes": est["total"] + GPU_RESERVED, "parts": est,
                 "settings": asdict(s), "fix": None}
        parts = (f"states {human_bytes(est['weights_and_states'])} + activations {human_bytes(est['activations'])}"
                 + (f" + logits {human_bytes(est['logits'])}" if est["logits"] else ""))
        desc = (f"{s.kind}, {s.precision or s.dtype}" + (f", LoRA r={s.lora_r}" if s.lora_r else "")
                + (f", batch {s.batch} x {s.length}" if s.kind != "stream" else "")
                + (", gradient checkpointing" if s.gradient_checkpointing else "")
                + (f", sharded over {s.gpus} GPUs" if s.shard and s.gpus > 1 else ""))
        total = human_bytes(est["total"] + GPU_RESERVED)
        if ok:
            checks.append(Check("PASS", f"memory: {s.step}", f"~{total} of {human_bytes(gpu)} ({desc}; {parts})", entry))
        else:
            fix = cheapest_fix(shape, s, gpu)
            if fix:
                new_total = estimate_memory(shape, fix[1])["total"] + GPU_RESERVED
                entry["fix"] = {"advice": fix[0], "estimate_bytes": new_total}
                advice = f"; cheapest fix: {fix[0]} (~{human_bytes(new_total)})"
            else:
                advice = "; nothing tried fits (a smaller --batch-size or --max-length, or a bigger GPU)"
            checks.append(Check("FAIL", f"memory: {s.step}",
                                f"~{total} does not fit {human_bytes(gpu)} ({desc}; {parts}){advice}", entry))
        plan["steps"].append(entry)
    return checks, plan


def model_config(model: str):
    """``(config.json dict, source)`` of ``model``, the study's assumed 6.9B config for its hub
    models offline, or ``(None, reason)``."""
    path = find_model_file(model, "config.json")
    if path is not None:
        try:
            config = json.loads(Path(path).read_text(encoding="utf-8"))
            if isinstance(config, dict) and config.get("model_type"):
                return config, f"config.json of {model}"
        except (OSError, ValueError):
            pass
    if model.rstrip("/") in STUDY_MODELS:
        return dict(STUDY_CONFIG), "the reference study's GPT-NeoX 6.9B config (assumed: config.json not available offline)"
    return None, f"no usable config.json for {model}"


def run_checks(args) -> dict:
    """All checks for parsed ``args``: ``{"checks": [...], "summary": {...}, "environment": {...}}``."""
    tokenizer_name = args.tokenizer or args.model
    counter, note = load_token_counter(tokenizer_name)
    checks: list[Check] = []
    if counter:
        tok_check = Check("INFO", "tokenizer", f"exact token counts with the {note}")
    else:
        # An explicitly requested tokenizer that cannot be found is worth a WARN; the default
        # model's tokenizer missing offline is the normal laptop case.
        tok_check = Check("WARN" if args.tokenizer else "INFO", "tokenizer",
                          f"{note}: token counts are approximate")
    dims, dims_source = model_dims(args.model)
    data_checks, token_stats = check_data(args, counter, note, (dims or {}).get("max_positions"))
    checks += data_checks
    if token_stats:
        checks.append(tok_check)
    checks += repro_settings(args.grad_accum_steps, args.cache_fp16, os.environ)
    environment = {"python": platform.python_version(), "platform": platform.platform()}
    if not args.data_only:
        checks.append(check_model(args.model))
        checks += check_environment(args, token_stats, dims, dims_source, environment)
    memory = None
    if args.gpu_memory is not None:
        memory_checks, memory = check_memory(args, os.environ)
        checks += memory_checks
    tally = Counter(c.status for c in checks)
    summary = {s.lower(): tally.get(s, 0) for s in ("PASS", "WARN", "FAIL", "INFO")}
    summary["ok"] = summary["fail"] == 0
    return {"checks": [asdict(c) for c in checks], "summary": summary, "environment": environment, "memory": memory,
            "inputs": {"forget_data": str(args.forget_data), "retain_data": str(args.retain_data),
                       "max_length": args.max_length, "model": args.model, "tokenizer": tokenizer_name,
                       "exact_token_counts": counter is not None}}


def format_line(check: dict) -> str:
    """``PASS  name: message``: the status padded to five characters, so the names line up."""
    return f"{check['status']:<5} {check['name']}: {check['message']}"


def summary_line(summary: dict) -> str:
    verdict = "ready" if summary["ok"] else "not ready: fix the FAIL lines first"
    counts = ", ".join(f"{summary[s]} {s.upper()}" for s in ("pass", "warn", "fail", "info"))
    return f"summary: {counts} -> {verdict}"


def parse_args(argv=None):
    data_dir = os.environ.get("DATA_DIR", "data")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Exit status: 0 when nothing FAILs, 1 otherwise.")
    p.add_argument("--forget-data", default=f"{data_dir}/forget.txt", help="forget texts, one per line (default: %(default)s)")
    p.add_argument("--retain-data", default=f"{data_dir}/retain.txt", help="retain texts, one per line (default: %(default)s)")
    p.add_argument("--model", default=os.environ.get("MODEL_A", DEFAULT_MODEL),
                   help="model of the next run, hub ID or directory: its tokenizer and config.json size the "
                        "truncation and disk checks (default: $MODEL_A or %(default)s)")
    p.add_argument("--tokenizer", default=None, help="tokenizer to count tokens with (default: --model's)")
    p.add_argument("--max-length", default=os.environ.get("MAX_LENGTH", "512"),
                   help="max tokens per sample of the next run (default: $MAX_LENGTH or 512)")
    p.add_argument("--cache-dir", default=os.environ.get("CACHE_DIR") or tempfile.gettempdir(),
                   help="where the activation cache goes, for the free-disk check (default: $CACHE_DIR or $TMPDIR, "
                        "here %(default)s)")
    p.add_argument("--device", choices=("auto", "cuda", "mps", "cpu"), default=os.environ.get("DEVICE", "auto"),
                   help="device of the next run; with --dtype it sets the cache dtype (default: $DEVICE or auto)")
    p.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16"), default=os.environ.get("DTYPE", "auto"),
                   help="dtype of the next run: auto is bf16 on CUDA, fp16 on MPS, fp32 on CPU (default: $DTYPE or auto)")
    p.add_argument("--grad-accum-steps", type=int, default=None, help="gradient accumulation of the next run (else $GRAD_ACCUM)")
    p.add_argument("--cache-fp16", action="store_true", help="the next activation run caches in fp16 (else $CACHE_FP16)")
    p.add_argument("--data-only", action="store_true", help="skip the environment checks (torch, devices, disk, versions)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    mem = p.add_argument_group("memory plan (docs/scale.md): estimated peak per GPU of every study step, from the "
                                  "model's config alone")
    mem.add_argument("--gpu-memory", default=None, metavar="SIZE",
                     help="memory of one GPU, e.g. 80GB, 24GiB: turns the memory plan on")
    mem.add_argument("--gpus", type=int, default=1, help="GPUs of the run; above 1 training is sharded (FSDP) and "
                                                        "inference splits the layers (default: %(default)s)")
    mem.add_argument("--method", default=os.environ.get("METHOD", "npo"),
                     help="the unlearning method to plan for (default: $METHOD or %(default)s)")
    mem.add_argument("--lora-r", type=int, default=int(os.environ.get("LORA_R") or 0),
                     help="LoRA rank of the unlearning run, 0 = full (default: $LORA_R or 0)")
    mem.add_argument("--precision", default=os.environ.get("PRECISION") or "auto",
                     choices=("auto", "fp32", "mixed", "bf16"),
                     help="unlearn.py's --precision (default: $PRECISION or auto: fp32 for --dtype fp32, else mixed, "
                          "or bf16 when mixed does not fit 80%% of the GPU, as unlearn.py decides)")
    args = p.parse_args(argv)
    if args.gpu_memory is not None:
        args.gpu_memory = parse_size(args.gpu_memory)
    if args.gpus < 1:
        raise UsageError(f"--gpus must be at least 1, got {args.gpus}")
    if args.lora_r < 0:
        raise UsageError(f"--lora-r must be 0 or more, got {args.lora_r}")
    try:
        args.max_length = int(args.max_length)
    except ValueError:
        raise UsageError(f"--max-length must be a whole number of tokens, got {args.max_length!r}") from None
    for flag, value, choices in (("--device", args.device, ("auto", "cuda", "mps", "cpu")),
                                 ("--dtype", args.dtype, ("auto", "fp32", "fp16", "bf16"))):
        if value not in choices:      # argparse does not check defaults taken from $DEVICE / $DTYPE
            raise UsageError(f"{flag} (or ${flag[2:].upper()}) must be one of {', '.join(choices)}, got {value!r}")
    if args.max_length < 1:
        raise UsageError(f"--max-length must be a positive number of tokens, got {args.max_length}")
    if args.grad_accum_steps is not None and args.grad_accum_steps < 1:
        raise UsageError(f"--grad-accum-steps must be at least 1, got {args.grad_accum_steps}")
    return args


def main(argv=None) -> int:
    return run_tool(lambda: report_checks(parse_args(argv)), kept="nothing was written (this tool only reads)")


def report_checks(args) -> int:
    """Run the checks and print them; 0 when every check passed, else 1."""
    report = run_checks(args)
    try:
        if args.json:
            print(json.dumps(report, indent=2, default=str))
        else:
            for c in report["checks"]:
                print(format_line(c))
            print(summary_line(report["summary"]))
        sys.stdout.flush()
    except BrokenPipeError:                     # e.g. `... | head`: stop quietly, as other CLI tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0 if report["summary"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
