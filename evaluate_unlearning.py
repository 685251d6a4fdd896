# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "torch>=2.4",
#     "transformers>=5.0,<6",
#     "tokenizers>=0.21",
#     "safetensors>=0.4",
#     "huggingface_hub>=0.30",
#     "accelerate>=1.0",
#     "numpy>=1.24",
#     "scipy>=1.11",
#     "scikit-learn>=1.3",
#     "lm-eval>=0.4.5,<0.5",
#     "tqdm>=4.66",
# ]
# ///
"""Is the knowledge gone? Evaluate one or more models on the same untouched data.

NLL alone cannot tell forgetting from hiding: a model can push the likelihood of the forget text
down while the knowledge stays in its weights. This tool puts five kinds of evidence side by side,
for every model given, on exactly the same lines:

  NLL          mean token negative log-likelihood of forget-test and retain-test lines (never
               trained on by anyone), with a seeded 95% percentile-bootstrap interval.
  MIA          membership inference: can an attacker tell the forget *training* lines from the
               forget *test* lines? ROC AUC of four attacks (LOSS, ZLib, Min-K%, Min-K%++; Shi et
               al. 2024 arXiv:2310.16789, Zhang et al. 2024 arXiv:2404.02936, as in open-unlearning).
               0.5 = indistinguishable; a model that was trained on the lines and only hides them
               keeps an AUC above 0.5.
  MCQ          multiple-choice accuracy through lm-evaluation-harness (local JSONL sets turned into
               lm-eval tasks at run time, plus any standard task such as wmdp_bio or mmlu).
  few-shot     forget-test NLL with k forget-training lines in the context: knowledge that was only
               hidden tends to come back when the model is reminded of it.
  generations  greedy (and seeded sampled) continuations of the test lines' first tokens; distinct-n
               and the repeat rate show a collapsed model (distinct_2 near 0).

One forward pass per batch gives every per-sample statistic (NLL, Min-K%, Min-K%++, ZLib), and each
model is loaded once (lm-eval wraps the loaded model).

Outputs, per model, in ``<outdir>/<model name>/`` (hub ID ``org/name`` -> ``org_name``; a folder ->
its name, or its parent's name when it is an ``unlearned_model`` folder): ``per_sample.csv``
(``split, index, n_tokens, nll, mink, minkpp, zlib``), ``summary.json``, ``generations.jsonl``;
and ``<outdir>/summary.csv`` with one row per model of this run. Each file is written atomically as
soon as it is done: ``per_sample.csv`` after the scoring, ``summary.json`` last (a model's completion
marker), ``summary.csv`` when every model is done (the run's); a stopped run keeps the finished files.

Usage:
    uv run --script evaluate_unlearning.py --model demo/models/demo-unfiltered \\
        --model demo/models/demo-e2e-strong-filter --model demo/models/demo-unfiltered-cb-lat
    uv run --script evaluate_unlearning.py --model EleutherAI/deep-ignorance-unfiltered \\
        --lm-eval-tasks wmdp_bio,mmlu
"""
from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import io
import json
import math
import os
import platform
import re
import signal
import sys
import tempfile
import zlib
from pathlib import Path

SPLITS = ("forget_test", "retain_test", "forget_train")
LOCAL_TASKS = {"forget": "model_diffs_forget_mcq", "retain": "model_diffs_retain_mcq"}
PER_SAMPLE_COLUMNS = ["split", "index", "n_tokens", "nll", "mink", "minkpp", "zlib"]


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


def read_lines(path) -> list[str]:
    """The samples of a text file, one per line, as ``read_numbered_lines`` reads them."""
    return [s for _, s in read_numbered_lines(path)]


def read_mcq(path) -> list[dict]:
    """Multiple-choice items of a JSONL file, validated: one ``{"question": str, "choices": [str, ...],
    "answer": int}`` object per line (blank lines skipped), ``0 <= answer < len(choices)``, at least two
    non-empty choices. Any fault is a UsageError naming the file and the line."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p} does not exist" if not p.exists() else f"{p} is not a file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UsageError(f"{p} is not UTF-8 text (byte {e.start})") from None
    items = []
    for no, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{p}, line {no}"
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as e:
            raise UsageError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(item, dict):
            raise UsageError(f"{where}: expected a JSON object with question, choices and answer")
        q, choices, answer = item.get("question"), item.get("choices"), item.get("answer")
        if not isinstance(q, str) or not q.strip():
            raise UsageError(f"{where}: 'question' must be a non-empty string")
        if (not isinstance(choices, list) or len(choices) < 2
                or not all(isinstance(c, str) and c.strip() for c in choices)):
            raise UsageError(f"{where}: 'choices' must be a list of at least two non-empty strings")
        if isinstance(answer, bool) or not isinstance(answer, int):
            raise UsageError(f"{where}: 'answer' must be the integer index of the right choice")
        if not 0 <= answer < len(choices):
            raise UsageError(f"{where}: answer {answer} is out of range for {len(choices)} choices")
        items.append({"question": q, "choices": choices, "answer": answer})
    if not items:
        raise UsageError(f"{p} is empty (one JSON object per line expected)")
    return items


def sha256_file(path) -> str:
    """The SHA-256 of a file's bytes (read in 1 MiB pieces), as 64 hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pick_device(name: str) -> str:
    """``auto`` -> CUDA > MPS > CPU; an explicitly asked-for device must exist."""
    import torch

    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available")
    if name == "mps" and not mps:
        raise UsageError("--device mps was asked for but MPS is not available")
    return name


def pick_dtype(name: str, device: str) -> str:
    """``auto`` -> bf16 on CUDA, fp16 on MPS, fp32 on CPU; else ``name`` (fp32, fp16 or bf16)."""
    return {"cuda": "bf16", "mps": "fp16"}.get(device, "fp32") if name == "auto" else name


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


# What from_pretrained reads: config, safetensors weights (one file or shards + index) and the tokenizer
# (tokenizer.json, vocab.json + merges.txt, tokenizer.model, *.tiktoken, ...). Never *.bin/*.pt/*.pth pickles.
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]


# files in sub-folders and Mistral-style consolidated.safetensors duplicate the weights: skip them
SKIP_FILES = ["*/*", "consolidated*"]


def resolve_model_dir(spec: str, trust_remote_code: bool = False, weights_only: bool = False) -> Path:
    """A local model directory, or a hub ID resolved to its snapshot in the Hugging Face cache.

    Only configs, safetensors weights and tokenizer files are fetched (``weights_only``: no
    tokenizer; custom ``*.py`` code only with ``trust_remote_code``), nothing is unpickled. When
    ``hub_reachable()`` says no, only the local cache is looked at, so a missing model is one
    sentence at once instead of from_pretrained's retries. Every failure is a UsageError."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UsageError(f"{spec} is a file; pass a model directory or a Hugging Face hub ID")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or not HUB_ID_RE.match(spec):
        raise UsageError(f"model directory {spec} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RepositoryNotFoundError)
    patterns = (["*.json", "*.safetensors"] if weights_only else MODEL_FILES) + (["*.py"] if trust_remote_code else [])
    try:
        return Path(snapshot_download(spec, allow_patterns=patterns, ignore_patterns=SKIP_FILES,
                                      local_files_only=not hub_reachable()))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise UsageError(f"cannot download {spec} from the Hugging Face hub (offline?) and it is not in the "
                         "local cache; pass a local model directory, or try ./pipeline.sh --demo") from exc
    except GatedRepoError as exc:
        raise UsageError(f"{spec} is gated on the Hugging Face hub; accept its licence and log in "
                         "with `hf auth login`") from exc
    except RepositoryNotFoundError as exc:
        raise UsageError(f"{spec} is neither a local directory nor a model on the Hugging Face hub") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise UsageError(f"cannot download {spec}: {first_line(exc)}") from exc


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


def parse_max_memory(text: str | None) -> dict | None:
    """``--max-memory`` as accelerate wants it: ``"0=20GiB,cpu=60GiB"`` -> ``{0: "20GiB", "cpu": "60GiB"}``.

    Keys: a GPU index, ``cpu``, ``mps`` or ``disk``; values: a size with its unit (``GiB``, ``GB``,
    ``MiB``, ...) or a number of bytes. None or empty: no limit (accelerate fills what is free)."""
    if not text:
        return None
    out: dict = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise UsageError(f"--max-memory must look like 0=20GiB,cpu=60GiB, got {text!r}")
        if key.isdigit():
            key = int(key)
        elif key not in ("cpu", "mps", "disk"):
            raise UsageError(f"--max-memory: {key!r} is not a GPU index, cpu, mps or disk")
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?\s*([KMGT]i?B)?", value, flags=re.IGNORECASE):
            raise UsageError(f"--max-memory: {value!r} is not a size such as 20GiB or 512MB")
        out[key] = int(value) if value.isdigit() else value
    return out


def from_pretrained_big(path, *, dtype, device: str, device_map: str | None = None, max_memory: dict | None = None,
                        offload_folder: str | None = None, trust_remote_code: bool = False):
    """A causal LM for reading only (eval mode), its weights loaded once, straight to where they live.

    ``device_map`` None: the whole model on ``device`` (loaded directly there, no CPU detour).
    ``"auto"``: accelerate's big-model inference: decoder layers go to the GPUs while they fit
    ``max_memory`` (``parse_max_memory``), then to the CPU, then to ``offload_folder`` on disk (a
    temporary folder, removed with the model, when None); accelerate's hooks move each layer's
    inputs to its device and the output back to the input's device, so callers need no change.
    transformers builds the model on the meta device and fills every tensor from the safetensors
    file into its final place: the weights are never held twice (disk-offloaded layers are
    memory-mapped and read per forward)."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype, "use_safetensors": True, "trust_remote_code": trust_remote_code}
    tmp = None
    if device_map == "auto":
        if offload_folder is None:
            tmp = tempfile.TemporaryDirectory(prefix="offload-")
            offload_folder = tmp.name
        kwargs.update(device_map="auto", max_memory=max_memory, offload_folder=offload_folder)
    else:
        kwargs["device_map"] = device
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if tmp is not None:
        model._offload_tmp = tmp      # the offload folder lives (and is removed) with the model
    return model.eval()


def big_model_kwargs(args) -> dict:
    """from_pretrained_big's keywords from the parsed --device-map, --max-memory and --offload-folder."""
    if args is None or getattr(args, "device_map", None) is None:
        return {}
    return {"device_map": args.device_map, "max_memory": parse_max_memory(args.max_memory),
            "offload_folder": args.offload_folder}


def load_causal_lm(path: Path, name: str, dtype: str, device: str, trust_remote_code: bool, big=None):
    """A causal LM and its tokenizer from a resolved model folder (``name``: what the user passed), in
    eval mode on ``device`` in ``dtype``; every failure is one UsageError sentence. ``big``: parsed
    arguments carrying ``--device-map``/``--max-memory``/``--offload-folder`` (``big_model_kwargs``)."""
    import torch
    from transformers import AutoTokenizer

    if not (path / "config.json").is_file():
        raise UsageError(f"{name} has no config.json, so it is not a Hugging Face model directory")
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = from_pretrained_big(path, dtype=torch_dtype, device=device, trust_remote_code=trust_remote_code,
                                    **big_model_kwargs(big))
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load model {name} as safetensors: {first_line(e)}") from None
    if tok.pad_token_id is None:  # causal LMs often ship without one; it only fills masked slots
        tok.pad_token = tok.eos_token
    return model.eval(), tok


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar length, longest first (so an out-of-memory shows up at once)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def mcq_task_yaml(task: str, data_file: Path) -> str:
    """An lm-eval task config for a local JSONL set: cloze style, context "{question}\\nAnswer:",
    continuation " {choice}" (lm-eval's default target delimiter is one space), acc and acc_norm."""
    path = json.dumps(str(Path(data_file).resolve()))
    return (f"task: {task}\n"
            f"dataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {path}\n"
            f"test_split: test\n"
            f"output_type: multiple_choice\n"
            f'doc_to_text: "{{{{question}}}}\\nAnswer:"\n'
            f'doc_to_choice: "{{{{choices}}}}"\n'
            f'doc_to_target: "{{{{answer}}}}"\n'
            f"metric_list:\n"
            f"  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
            f"  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
            f"metadata:\n  version: 1.0\n")


ATTACKS = ("loss", "zlib", "mink", "minkpp")


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


class LineProgress:
    """What ``progress`` gives when stderr is not a terminal (CI, nohup, Slurm): a line when the
    stage starts, one at most every ``every`` seconds while it runs, one when it ends; the parts of
    tqdm's interface the tools use (iteration, ``update``, ``set_postfix``, ``write``, ``close``,
    ``with``)."""

    def __init__(self, iterable=None, desc: str = "", total=None, unit: str = "it", every: float = 60.0,
                 disable: bool = False, **_ignored):
        import time

        self.iterable, self.desc, self.unit, self.every, self.disable = iterable, desc or "progress", unit, every, disable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.postfix, self.closed = total, 0, "", False
        self.start = self.last = time.monotonic()
        of = f" of {total} {unit}" if total is not None else ""
        self._say(f"{self.desc}: started{of}")

    def _say(self, text: str) -> None:
        if not self.disable:
            print(text, file=sys.stderr, flush=True)

    def _status(self, state: str = "") -> str:
        import time

        done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        post = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {state}{done} {self.unit} in {time.monotonic() - self.start:.0f} s{post}"

    def update(self, n: int = 1) -> None:
        import time

        self.n += n
        if time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            self._say(self._status())

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def write(self, text: str, file=None) -> None:
        print(text, file=file or sys.stderr, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._say(self._status("done, "))

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()


def progress(iterable=None, desc: str = "", total=None, unit: str = "it", **kwargs):
    """A progress display for a stage: a tqdm bar when stderr is a terminal, else a LineProgress
    (one line per stage and a periodic line, so logs stay readable). Use it like tqdm: iterate over
    it, or ``update()`` a ``total``; keyword arguments go to tqdm (``leave``, ``disable``, ...)."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, desc=desc, total=total, unit=unit, **kwargs)
    return LineProgress(iterable, desc=desc, total=total, unit=unit, **kwargs)
# --- end shared helpers ---


# ----------------------------------------------------------------------------------------------
# Per-token statistics (one forward pass) and the per-sample scores built from them
# ----------------------------------------------------------------------------------------------
def token_stats(logits, targets):
    """Per-position statistics of one sequence, in fp32.

    ``logits``: [n, V], the model's outputs at the positions that predict ``targets`` ([n] ids).
    Returns (logp, mu, sigma), each [n]:
      logp_t  = log p(x_t | x_<t)                        (log-softmax in fp32)
      mu_t    = E_{v~p}[log p_v]  = Σ_v p_v log p_v
      sigma_t = sqrt(E_{v~p}[(log p_v)²] − mu_t²), the variance clamped at ≥ 1e-6
    (mu and sigma are the Min-K%++ normalisers of Zhang et al. 2024, arXiv:2404.02936, eq. 3.)"""
    import torch

    logp_all = torch.log_softmax(logits.float(), dim=-1)
    p = logp_all.exp()
    logp = logp_all.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    mu = (p * logp_all).sum(-1)
    # Σ_v p_v (log p_v − mu)², the same quantity as Σ_v p_v (log p_v)² − mu² without its cancellation
    var = (p * (logp_all - mu.unsqueeze(-1)).square()).sum(-1)
    return logp, mu, var.clamp_min(1e-6).sqrt()


def nll_score(logp) -> float:
    """Mean negative log-likelihood: NLL = −(1/n) Σ_t log p(x_t | x_<t) over the n scored tokens."""
    return -float(sum(map(float, logp))) / len(logp)


def min_k_mean(values, k: float) -> float:
    """Mean of the lowest max(1, ⌊k·n⌋) of the n ``values`` (the Min-K% statistic; Shi et al. 2024,
    arXiv:2310.16789: "the average log-likelihood of the k% tokens with minimum probability")."""
    vals = sorted(float(v) for v in values)
    m = max(1, math.floor(k * len(vals)))
    return sum(vals[:m]) / m


def mink_score(logp, k: float) -> float:
    """Min-K% membership score: mean of the lowest max(1, ⌊k·n⌋) token log-probs (higher = member)."""
    return min_k_mean(logp, k)


def minkpp_score(logp, mu, sigma, k: float) -> float:
    """Min-K%++ membership score (Zhang et al. 2024, arXiv:2404.02936): Min-K% over the normalised
    log-probs z_t = (log p(x_t) − mu_t) / sigma_t (see ``token_stats``)."""
    return min_k_mean([(float(a) - float(b)) / float(c) for a, b, c in zip(logp, mu, sigma)], k)


def zlib_score(logp, text: str) -> float:
    """ZLib membership score (Carlini et al. 2021, arXiv:2012.07805, as in open-unlearning):
    −(Σ_t token NLL) / len(zlib.compress(text as UTF-8)) = Σ_t log p(x_t) / zlib length."""
    return float(sum(map(float, logp))) / len(zlib.compress(text.encode("utf-8")))


def sample_scores(logp, mu, sigma, text: str, k: float) -> dict:
    """Every per-sample statistic of one scored line (``nll``, ``mink``, ``minkpp``, ``zlib``);
    NaN when the line has no scored token (a one-token line)."""
    if len(logp) == 0:
        return {"nll": math.nan, "mink": math.nan, "minkpp": math.nan, "zlib": math.nan}
    return {"nll": nll_score(logp), "mink": mink_score(logp, k), "minkpp": minkpp_score(logp, mu, sigma, k),
            "zlib": zlib_score(logp, text)}


def mia_scores(rows: list[dict]) -> dict:
    """The four attacks' membership scores of scored rows (higher = "more likely a member"):
    LOSS = −nll, ZLib, Min-K%, Min-K%++ (the row values)."""
    return {"loss": [-r["nll"] for r in rows], "zlib": [r["zlib"] for r in rows],
            "mink": [r["mink"] for r in rows], "minkpp": [r["minkpp"] for r in rows]}


def mia_auc(member_scores, nonmember_scores) -> float:
    """ROC AUC of an attack with members as label 1 and non-members as label 0 (scikit-learn's
    ``roc_auc_score``): the probability that a random member outscores a random non-member.
    0.5 = the attacker cannot tell them apart."""
    from sklearn.metrics import roc_auc_score

    y = [1] * len(member_scores) + [0] * len(nonmember_scores)
    return float(roc_auc_score(y, list(member_scores) + list(nonmember_scores)))


def bootstrap_ci(values, seed: int, n_resamples: int = 2000, level: float = 0.95) -> list[float]:
    """Seeded percentile-bootstrap interval of the mean of ``values`` (scipy.stats.bootstrap,
    method 'percentile'; Efron & Tibshirani 1993, ch. 13): resample the samples with replacement
    ``n_resamples`` times, take the (1−level)/2 and (1+level)/2 quantiles of the resampled means."""
    import numpy as np
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return [float(x.mean()), float(x.mean())] if len(x) else [math.nan, math.nan]
    res = bootstrap((x,), np.mean, n_resamples=n_resamples, confidence_level=level, method="percentile",
                    random_state=np.random.default_rng(seed), vectorized=True)
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


# ----------------------------------------------------------------------------------------------
# Generation metrics
# ----------------------------------------------------------------------------------------------
def distinct_n(seqs: list[list[int]], n: int) -> float:
    """Distinct-n (Li et al. 2016, arXiv:1510.03055): unique n-grams / all n-grams, over the n-grams
    inside each continuation of ``seqs`` (token ids), pooled. NaN when there is no n-gram."""
    grams = [tuple(s[i:i + n]) for s in seqs for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


def repeat_rate(seqs: list[list[int]]) -> float:
    """Share of tokens that repeat the token just before them: Σ #{t ≥ 2 : x_t = x_{t−1}} / Σ (len − 1),
    pooled over the continuations. NaN when no token has a predecessor."""
    pairs = sum(max(len(s) - 1, 0) for s in seqs)
    reps = sum(1 for s in seqs for a, b in zip(s, s[1:]) if a == b)
    return reps / pairs if pairs else math.nan


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
def parse_int_list(spec: str, flag: str) -> list[int]:
    """``"0,1,4"`` -> [0, 1, 4] (sorted, unique); anything else is a UsageError."""
    try:
        values = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, e.g. 0,1,4 (got {spec!r})") from None
    if not values or values[0] < 0:
        raise UsageError(f"{flag} takes non-negative integers (got {spec!r})")
    return values


def few_shot_sequence(context_ids: list[int], line_ids: list[int], bos_prefix: int, max_length: int):
    """(ids, n_scored) for one test line with ``context_ids`` before it.

    ``line_ids``: the line as the tokenizer encodes it alone (``bos_prefix`` leading special tokens
    that the tokenizer adds, e.g. a BOS). Its scored tokens are always the same ones as without
    context: the last len(line_ids) − 1. With context the line's special prefix is dropped (the context
    starts with it instead) and the context is cut from the left to fit ``max_length``. Empty context
    gives ``line_ids`` unchanged, so k = 0 is exactly the plain score."""
    n_scored = len(line_ids) - 1
    if not context_ids:
        return list(line_ids), n_scored
    body = line_ids[bos_prefix:]
    room = max(0, max_length - len(body))
    ctx = context_ids[len(context_ids) - room:] if room < len(context_ids) else context_ids
    if not ctx:
        return list(line_ids), n_scored
    return list(ctx) + list(body), n_scored


# ----------------------------------------------------------------------------------------------
# Model passes
# ----------------------------------------------------------------------------------------------
def forward_token_stats(model, seqs: list[list[int]], n_scored: list[int], batch_size: int, pad_id: int,
                        device: str, with_pp: bool = True, desc: str = "scoring"):
    """For every sequence, (logp, mu, sigma) of its last ``n_scored`` tokens, from one forward pass per
    batch (right padding; a causal mask makes padding invisible to the real tokens). ``with_pp=False``
    skips mu/sigma (None)."""
    import torch

    out: list = [None] * len(seqs)
    batches = length_batches([len(s) for s in seqs], batch_size)
    with torch.inference_mode():
        for idx in progress(batches, desc=desc, unit="batch", mininterval=2.0, leave=False):
            width = max(len(seqs[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, :len(seqs[i])] = torch.tensor(seqs[i])
                mask[r, :len(seqs[i])] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for r, i in enumerate(idx):
                n, L = n_scored[i], len(seqs[i])
                if n <= 0:
                    out[i] = ([], [], [])
                    continue
                # logits at positions L-1-n .. L-2 predict tokens L-n .. L-1
                lg = logits[r, L - 1 - n:L - 1]
                tgt = ids[r, L - n:L].to(lg.device)
                if with_pp:
                    logp, mu, sigma = token_stats(lg, tgt)
                    out[i] = (logp.cpu().tolist(), mu.cpu().tolist(), sigma.cpu().tolist())
                else:
                    logp = torch.log_softmax(lg.float(), -1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
                    out[i] = (logp.cpu().tolist(), None, None)
            del logits
    return out


def score_lines(model, tokenizer, texts: list[str], args, device: str, desc: str) -> list[dict]:
    """Per-line ``n_tokens`` (the line's tokens after truncation to --max-length) and scores."""
    ids = [list(x) for x in tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]]
    stats = forward_token_stats(model, ids, [len(x) - 1 for x in ids], args.batch_size, tokenizer.pad_token_id,
                                device, desc=desc)
    return [{"n_tokens": len(x), **sample_scores(lp, mu, sg, t, args.mink_k)}
            for x, (lp, mu, sg), t in zip(ids, stats, texts)]


def bos_prefix_len(tokenizer) -> int:
    """How many special tokens the tokenizer puts before a text (e.g. 1 for a BOS-adding tokenizer)."""
    with_special = tokenizer("a b")["input_ids"]
    plain = tokenizer("a b", add_special_tokens=False)["input_ids"]
    for i in range(len(with_special) - len(plain) + 1):
        if with_special[i:i + len(plain)] == plain:
            return i
    return 0


def few_shot_nll(model, tokenizer, test: list[str], train: list[str], ks: list[int], args, device: str) -> dict:
    """{k: mean forget-test NLL with the first k training lines (joined by newlines, then a newline)
    before each test line}; only the test line's own scored tokens count."""
    line_ids = [list(x) for x in tokenizer(test, truncation=True, max_length=args.max_length)["input_ids"]]
    prefix = bos_prefix_len(tokenizer)
    result = {}
    for k in ks:
        ctx = list(tokenizer("\n".join(train[:k]) + "\n")["input_ids"]) if k else []
        pairs = [few_shot_sequence(ctx, x, prefix, args.max_length) for x in line_ids]
        stats = forward_token_stats(model, [s for s, _ in pairs], [n for _, n in pairs], args.batch_size,
                                    tokenizer.pad_token_id, device, with_pp=False, desc=f"few-shot k={k}")
        nlls = [nll_score(lp) for lp, _, _ in stats if len(lp)]
        result[str(k)] = sum(nlls) / len(nlls) if nlls else math.nan
    return result


def generate(model, tokenizer, texts: list[str], split: str, args, device: str):
    """Greedy and ``--generate`` seeded sampled continuations (``--gen-tokens`` new tokens) of each
    line's first ``--prompt-tokens`` tokens (fewer for a shorter line). Returns (records, token lists)."""
    import torch
    from transformers import GenerationConfig

    ids = [list(x) for x in tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]]
    prompts = [x[:max(1, min(args.prompt_tokens, len(x) - 1))] for x in ids]
    eos = tokenizer.eos_token_id
    common = dict(max_new_tokens=args.gen_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
    modes = [("greedy", GenerationConfig(do_sample=False, **common), 1)]
    if args.generate:
        modes.append(("sample", GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                                 num_return_sequences=args.generate, **common), args.generate))
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)   # equal lengths: no padding needed
    records, token_lists = [], []
    for mode, config, n_ret in modes:
        torch.manual_seed(args.seed)
        conts: dict[int, list[list[int]]] = {}
        groups = [(L, idx[j:j + args.batch_size]) for L, idx in sorted(by_len.items())
                  for j in range(0, len(idx), args.batch_size)]
        with torch.inference_mode():
            for L, idx in progress(groups, desc=f"generate {split} ({mode})", unit="batch", mininterval=2.0,
                               leave=False):
                inp = torch.tensor([prompts[i] for i in idx], device=device)
                out = model.generate(input_ids=inp, attention_mask=torch.ones_like(inp),
                                     generation_config=config).cpu().tolist()
                for r, seq in enumerate(out):
                    cont = seq[L:]
                    if eos is not None and eos in cont:
                        cont = cont[:cont.index(eos)]
                    conts.setdefault(idx[r // n_ret], []).append(cont)
        for i in range(len(prompts)):
            for j, cont in enumerate(conts[i]):
                token_lists.append(cont)
                records.append({"split": split, "index": i, "mode": mode, "sample": j if mode == "sample" else None,
                                "prompt": tokenizer.decode(prompts[i], skip_special_tokens=True),
                                "continuation": tokenizer.decode(cont, skip_special_tokens=True)})
    return records, token_lists


# ----------------------------------------------------------------------------------------------
# Multiple choice through lm-evaluation-harness
# ----------------------------------------------------------------------------------------------
def lm_eval_progress_lines() -> None:
    """A log is not a terminal: lm-eval's tqdm bars ("Building contexts", "Tokenizing inputs", "Running
    loglikelihood requests") become LineProgress lines (a line when a stage starts, one a minute, one
    when it ends), so a long MCQ evaluation is never silent and writes no carriage returns."""
    if sys.stderr.isatty():
        return
    import importlib

    for name in ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface"):
        module = importlib.import_module(name)
        if hasattr(module, "tqdm"):
            module.tqdm = LineProgress


class McqBenchmarks:
    """The lm-eval side: task configs written to a temporary folder, a TaskManager that finds them
    (and lm-eval's own tasks when standard ones are asked for), checked before any model is loaded."""

    def __init__(self, local_sets: dict, standard: list[str], workdir: Path):
        import logging

        self.local_sets, self.standard = local_sets, standard
        for name in ("lm-eval", "lm_eval"):
            logging.getLogger(name).setLevel(logging.ERROR)
        for key, path in local_sets.items():
            (workdir / f"{LOCAL_TASKS[key]}.yaml").write_text(mcq_task_yaml(LOCAL_TASKS[key], path))
        from lm_eval.tasks import TaskManager

        self.tm = TaskManager(include_path=str(workdir), include_defaults=bool(standard))
        unknown = [t for t in standard if t not in self.tm.all_tasks]
        if unknown:
            raise UsageError(f"unknown lm-eval task {', '.join(unknown)} (see `lm-eval ls tasks`)")
        self.names = [LOCAL_TASKS[k] for k in local_sets] + standard
        self.chance = {}
        if not self.names:
            return
        try:
            loaded = self.tm.load(self.names)
        except Exception as e:  # datasets raises many kinds when a hub dataset cannot be reached
            tasks = ", ".join(standard) or ", ".join(self.names)
            raise UsageError(f"cannot load the data of lm-eval task {tasks} ({type(e).__name__}: {first_line(e)[:160]}); "
                             "offline, only tasks whose data is in the local Hugging Face cache can run") from None
        for key in local_sets:
            self.chance[key] = self._chance([loaded["tasks"][LOCAL_TASKS[key]]])
        for name in standard:
            leaves = self._leaves(name, loaded)
            self.chance[name] = self._chance(leaves) if leaves else None

    @staticmethod
    def _leaves(name: str, loaded: dict) -> list:
        if name in loaded["tasks"]:
            return [loaded["tasks"][name]]
        out, todo = [], list(loaded.get("group_map", {}).get(name, []))
        while todo:
            child = todo.pop()
            if child in loaded["tasks"]:
                out.append(loaded["tasks"][child])
            else:
                todo += loaded.get("group_map", {}).get(child, [])
        return out

    @staticmethod
    def _chance(tasks) -> float | None:
        """Expected accuracy of a uniform guess: mean over the documents of 1 / (number of choices)."""
        try:
            inv = [1 / len(t.doc_to_choice(d)) for t in tasks for d in t.eval_docs]
        except Exception:
            return None
        return sum(inv) / len(inv) if inv else None

    def evaluate(self, model, tokenizer, args) -> dict:
        """{set or task: {acc, acc_stderr, acc_norm, acc_norm_stderr}} of the loaded ``model``."""
        if not self.names:
            return {}
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, max_length=args.max_length)
        if getattr(model, "hf_device_map", None):
            # --device-map auto: HFLM takes model.device, the meta device when a layer is offloaded (torch.autocast
            # then fails); the inputs go to --device and accelerate's hooks move them on
            import torch
            lm._device = torch.device(pick_device(args.device))
        lm_eval_progress_lines()
        res = lm_eval.simple_evaluate(model=lm, tasks=self.names, task_manager=self.tm, num_fewshot=0,
                                      bootstrap_iters=1000, log_samples=False, random_seed=args.seed,
                                      numpy_random_seed=args.seed, torch_random_seed=args.seed,
                                      fewshot_random_seed=args.seed)
        out = {}
        keys = {LOCAL_TASKS[k]: k for k in self.local_sets}
        for name in self.names:
            r = res["results"].get(name, {})

            def get(metric):
                v = r.get(f"{metric},none")
                return float(v) if isinstance(v, (int, float)) else None

            out[keys.get(name, name)] = {"acc": get("acc"), "acc_stderr": get("acc_stderr"),
                                         "acc_norm": get("acc_norm"), "acc_norm_stderr": get("acc_norm_stderr")}
        return out


# ----------------------------------------------------------------------------------------------
# One model
# ----------------------------------------------------------------------------------------------
def evaluate_model(spec: str, path: Path, data: dict, mcq: McqBenchmarks, args, device: str, dtype: str,
                   on_scored=None):
    """Every statistic of one model: (per-sample rows, summary dict, generation records).
    ``on_scored(rows)``, when given, is called with the per-sample rows as soon as they are done."""
    import torch

    torch.manual_seed(args.seed)
    model, tok = load_causal_lm(path, spec, dtype, device, args.trust_remote_code, big=args)
    rows, scored = [], {}
    for split in SPLITS:
        scores = score_lines(model, tok, data[split], args, device, desc=f"{model_name(spec)} {split}")
        scored[split] = scores
        rows += [{"split": split, "index": i, **s} for i, s in enumerate(scores)]
    if on_scored is not None:
        on_scored(rows)
    ok = {s: [r for r in scored[s] if not math.isnan(r["nll"])] for s in SPLITS}
    summary: dict = {}
    for split, key in (("forget_test", "forget"), ("retain_test", "retain")):
        nll = [r["nll"] for r in ok[split]]
        summary[f"{key}_nll"] = sum(nll) / len(nll) if nll else math.nan
        summary[f"{key}_nll_ci95"] = bootstrap_ci(nll, args.seed)
    members, nonmembers = mia_scores(ok["forget_train"]), mia_scores(ok["forget_test"])
    summary["mia"] = {a: mia_auc(members[a], nonmembers[a]) for a in ATTACKS}
    summary["mcq"] = mcq.evaluate(model, tok, args)
    summary["few_shot"] = few_shot_nll(model, tok, data["forget_test"], data["forget_train"], args.few_shot,
                                       args, device)
    gens, summary["generation"] = [], {}
    for split in ("forget_test", "retain_test"):
        records, toks = generate(model, tok, data[split], split, args, device)
        gens += records
        summary["generation"][split] = {"distinct_1": distinct_n(toks, 1), "distinct_2": distinct_n(toks, 2),
                                        "repeat_rate": repeat_rate(toks)}
    del model
    return rows, summary, gens


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "lm_eval", "scikit-learn", "scipy", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def json_clean(x):
    """NaN/inf -> None, so summary.json is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_clean(v) for v in x]
    return x


def eval_per_sample_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PER_SAMPLE_COLUMNS)
    for r in rows:
        w.writerow([r["split"], r["index"], r["n_tokens"]] + [repr(float(r[c])) for c in PER_SAMPLE_COLUMNS[3:]])
    return buf.getvalue()


def summary_row(name: str, s: dict) -> dict:
    """The headline numbers of one model, flattened for ``summary.csv``."""
    row = {"model": name}
    for key in ("forget", "retain"):
        row[f"{key}_nll"] = s[f"{key}_nll"]
        row[f"{key}_nll_ci95_low"], row[f"{key}_nll_ci95_high"] = s[f"{key}_nll_ci95"]
    row.update({f"mia_{a}": s["mia"][a] for a in ATTACKS})
    for task, m in s["mcq"].items():
        row[f"mcq_{task}_acc"], row[f"mcq_{task}_acc_norm"] = m["acc"], m["acc_norm"]
    row.update({f"few_shot_{k}": v for k, v in s["few_shot"].items()})
    for split, g in s["generation"].items():
        row.update({f"{split}_{k}": v for k, v in g.items()})
    return row


def summary_csv(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in r.items()})
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True,
                   help="model to evaluate: local directory or hub ID (repeat the flag for several)")
    p.add_argument("--forget-test", default="data/forget_test.txt", help="forget test lines (default: %(default)s)")
    p.add_argument("--retain-test", default="data/retain_test.txt", help="retain test lines (default: %(default)s)")
    p.add_argument("--forget-train", default="data/forget.txt",
                   help="forget training lines: the members for membership inference and the few-shot "
                        "context (default: %(default)s)")
    p.add_argument("--mcq-forget", default=None,
                   help="forget multiple-choice JSONL (default data/forget_mcq.jsonl, skipped with a warning "
                        "when absent; '' skips it)")
    p.add_argument("--mcq-retain", default=None,
                   help="retain multiple-choice JSONL (default data/retain_mcq.jsonl, skipped with a warning "
                        "when absent; '' skips it)")
    p.add_argument("--lm-eval-tasks", default="",
                   help="standard lm-eval tasks, comma-separated (e.g. wmdp_bio,mmlu); their data must be on "
                        "the hub or in the local cache")
    p.add_argument("--few-shot", default="0,1,4", help="forget-training lines in context, e.g. 0,1,4 (default: %(default)s)")
    p.add_argument("--generate", type=int, default=8,
                   help="sampled continuations per prompt besides the greedy one (default: %(default)s)")
    p.add_argument("--gen-tokens", type=int, default=32, help="new tokens per continuation (default: %(default)s)")
    p.add_argument("--prompt-tokens", type=int, default=8, help="prompt: a test line's first N tokens (default: %(default)s)")
    p.add_argument("--mink-k", type=float, default=0.4, help="Min-K%% fraction k in (0, 1] (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="bootstrap, sampling and lm-eval seed (default: %(default)s)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"], help="default auto: CUDA > MPS > CPU")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="default auto: bf16 on CUDA, fp16 on MPS, fp32 on CPU")
    p.add_argument("--batch-size", type=int, default=8, help="lines per forward pass (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per line; longer lines are cut (default: %(default)s)")
    p.add_argument("--outdir", default="outputs/eval", help="results folder (default: %(default)s)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow models with custom code (off: safe)")
    p.add_argument("--device-map", default=None, choices=["auto"],
                   help="auto: spread a model that does not fit --device over the GPUs, the CPU and disk "
                        "(accelerate's big-model inference; same numbers, slower; docs/scale.md)")
    p.add_argument("--max-memory", default=None,
                   help="with --device-map auto: memory per device, e.g. 0=20GiB,cpu=60GiB (default: what is free)")
    p.add_argument("--offload-folder", default=None,
                   help="with --device-map auto: where layers beyond --max-memory go (default: a temporary folder)")
    return p.parse_args(argv)


def check_args(args) -> None:
    if args.max_memory and not args.device_map:
        raise UsageError("--max-memory needs --device-map auto")
    parse_max_memory(args.max_memory)          # a malformed --max-memory fails before any model is read
    if not 0 < args.mink_k <= 1:
        raise UsageError(f"--mink-k must be in (0, 1] (got {args.mink_k})")
    for flag, v, low in (("--batch-size", args.batch_size, 1), ("--max-length", args.max_length, 2),
                         ("--generate", args.generate, 0), ("--gen-tokens", args.gen_tokens, 1),
                         ("--prompt-tokens", args.prompt_tokens, 1)):
        if v < low:
            raise UsageError(f"{flag} must be at least {low} (got {v})")
    names = [model_name(m) for m in args.model]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"two models would share the results folder {dup[0]}; evaluate them in separate --outdir")
    # the marker is this tool's own per-model summary.json: a bare summary.csv could be
    # aggregate_runs.py's or tamper_attack.py's, which this run must not overwrite
    check_outdir(args.outdir, "*/summary.json", owned=("summary.csv",))


def local_mcq_sets(args) -> dict:
    """{'forget'|'retain': path} of the local MCQ sets to run (validated)."""
    sets = {}
    for key, given in (("forget", args.mcq_forget), ("retain", args.mcq_retain)):
        if given == "":
            continue
        path = Path(given if given is not None else f"data/{key}_mcq.jsonl")
        if given is None and not path.exists():
            print(f"warning: {path} does not exist; no {key} multiple-choice set", file=sys.stderr)
            continue
        read_mcq(path)
        sets[key] = path
    return sets


def write_per_sample(outdir: Path, name: str, rows: list[dict]) -> None:
    """A model's per_sample.csv, written (atomically) as soon as its scoring is done, so a stopped
    run keeps it. Before it, the marks of an earlier finished run go: the model's summary.json and
    the run's summary.csv (written last, when every model is done), so the folder never looks
    finished while it holds parts of two runs."""
    for stale in (outdir / "summary.csv", outdir / name / "summary.json", outdir / name / "generations.jsonl"):
        stale.unlink(missing_ok=True)
    write_atomically({outdir / name / "per_sample.csv": eval_per_sample_csv(rows)})


def run(args) -> Path:
    check_args(args)
    args.few_shot = parse_int_list(args.few_shot, "--few-shot")
    files = {"forget_test": args.forget_test, "retain_test": args.retain_test, "forget_train": args.forget_train}
    data = {split: read_lines(path) for split, path in files.items()}
    if args.few_shot[-1] > len(data["forget_train"]):
        raise UsageError(f"--few-shot {args.few_shot[-1]} needs that many lines in {args.forget_train} "
                         f"(it has {len(data['forget_train'])})")
    sets = local_mcq_sets(args)
    standard = [t.strip() for t in args.lm_eval_tasks.split(",") if t.strip()]
    if not hub_reachable():  # datasets and lm-eval would otherwise retry for a long time
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    paths = {spec: resolve_model_dir(spec, args.trust_remote_code) for spec in args.model}
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    outdir = Path(args.outdir)
    meta_data = {split: {"path": str(files[split]), "sha256": sha256_file(files[split]), "lines": len(data[split])}
                 for split in SPLITS}
    meta_data.update({f"mcq_{k}": {"path": str(p), "sha256": sha256_file(p)} for k, p in sets.items()})
    settings = {k: getattr(args, k) for k in ("few_shot", "generate", "gen_tokens", "prompt_tokens", "mink_k", "seed",
                                               "batch_size", "max_length")}
    settings.update(device=device, dtype=dtype, lm_eval_tasks=standard, bootstrap_resamples=2000)
    rows_csv = []
    with tempfile.TemporaryDirectory(prefix="model-diffs-lm-eval-") as work:
        mcq = McqBenchmarks(sets, standard, Path(work))
        for spec in args.model:
            name = model_name(spec)
            print(f"==> {spec} -> {outdir / name}", file=sys.stderr, flush=True)
            rows, summary, gens = evaluate_model(spec, paths[spec], data, mcq, args, device, dtype,
                                                 on_scored=lambda rows: write_per_sample(outdir, name, rows))
            summary = {**summary, "mcq_chance": mcq.chance, "model": spec, "model_name": name,
                       "n_samples": {s: len(data[s]) for s in SPLITS}, "data": meta_data,
                       "settings": settings, "versions": versions()}
            # each file atomically, summary.json (the model's completion marker) last
            write_atomically({
                outdir / name / "generations.jsonl": "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in gens)})
            write_atomically({outdir / name / "summary.json": json.dumps(json_clean(summary), indent=2) + "\n"})
            rows_csv.append(summary_row(name, summary))
            print(f"    forget NLL {summary['forget_nll']:.3f}, retain NLL {summary['retain_nll']:.3f}, "
                  f"MIA AUC (loss) {summary['mia']['loss']:.3f}"
                  + "".join(f", MCQ {k} acc {v['acc']:.3f}" for k, v in summary["mcq"].items() if v["acc"] is not None),
                  file=sys.stderr, flush=True)
    write_atomically({outdir / "summary.csv": summary_csv(rows_csv)})
    return outdir


def main(argv=None) -> int:
    args = parse_args(argv)

    def work() -> None:
        out = run(args)
        print(f"wrote {out / 'summary.csv'}", file=sys.stderr)

    return run_tool(work, kept="results of finished models are kept, nothing half-written",
                    oom_hint="lower --batch-size or --max-length")


if __name__ == "__main__":
    sys.exit(main())
