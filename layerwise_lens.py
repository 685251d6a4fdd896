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
#     "tqdm>=4.66",
# ]
# ///
"""Is the knowledge still inside? MCQ accuracy, NLL and KL to the output at every layer (logit and tuned lens).

An unlearned model can answer the forget multiple-choice questions at chance at its output while its
middle layers still hold the answer, suppressed only at the end; a model that never learned it shows
nothing at any depth. This tool reads every layer's residual stream through two lenses and scores it
exactly as ``evaluate_unlearning.py`` scores the output:

  logit lens   the model's own final normalisation and unembedding applied to the residual stream
               h_l: logits_l = W_U · norm(h_l). At the last layer this IS the model's output.
  tuned lens   Belrose et al. 2023 (arXiv:2303.08112): per layer an affine translator
               h -> h + A_l h + s_l b_l (A_l = 0, b_l = 0 at the start, i.e. the logit lens), trained with
               the model frozen to minimise KL(p_final || p_lens,l) per token on --lens-train-text
               (never an evaluation file); logits_l = W_U · norm(h_l + A_l h_l + s_l b_l). The last layer
               keeps the identity (its lens is the model's output). Optimiser as in the paper's code:
               SGD with Nesterov momentum 0.9, lr = lr_scale·(1 − 0.9) (lr_scale 1.0), weight decay
               1e-3, linear decay to 0 over --lens-steps (250), no warm-up, one backward pass per layer.
               Changed: --lens-tokens-per-step 4096 instead of 2^18; added: the fixed scale s_l (the RMS
               of layer l's residual stream on the first batch), without which the small-norm embedding
               layer diverged (docs/lens.md).

Layers are numbered as ``hidden_states`` indices: 0 = the embeddings, l = the residual stream after
decoder layer l − 1, L = after the last decoder layer (before the final norm). transformers 5 returns
hidden_states[L] already normalised; this tool takes the last raw stream from the final norm's input
instead, so the norm is applied once at every layer. All layers come from ONE forward pass per batch.

Scores per model × lens × layer, in ``<outdir>/layerwise.csv``:
  mcq_forget_acc, mcq_retain_acc  lm-eval's cloze ``acc`` (context "{question}\\nAnswer:", continuation
                                  " {choice}", argmax of the summed continuation log-likelihood), exactly
                                  the tokens lm-eval scores; equal to evaluate_unlearning.py at the last layer
  forget_nll, retain_nll          mean over lines of the per-line mean token NLL (evaluate_unlearning.py's)
  kl_to_final                     mean per-token KL(p_final || p_lens) on the retain test lines (nats)
  mcq_forget_chance, mcq_retain_chance   mean of 1 / (number of choices)
The tuned lens of each model is saved in ``<outdir>/<model name>/tuned_lens.safetensors`` with a
fingerprint (model weights' SHA-256, training text's SHA-256, every training setting) and reused on a
later run when the fingerprint matches.

Usage:
    uv run --script layerwise_lens.py --model demo/models/demo-unfiltered \\
        --model demo/models/demo-e2e-strong-filter --model demo/models/demo-unfiltered-cb-lat
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
import time
from pathlib import Path

LENSES = ("logit", "tuned")
COLUMNS = ["model", "lens", "layer", "mcq_forget_acc", "mcq_retain_acc", "forget_nll", "retain_nll", "kl_to_final",
           "mcq_forget_chance", "mcq_retain_chance"]
FINAL_NORM_NAMES = ("final_layer_norm", "norm", "ln_f", "final_norm", "norm_f", "final_layernorm")
MOMENTUM = 0.9          # Belrose et al.'s SGD settings (tuned-lens scripts/ingredients.py)
WEIGHT_DECAY = 1e-3
LENS_FORMAT = 1         # bump when the translator file's layout or training changes


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
# The lenses
# ----------------------------------------------------------------------------------------------
def lens_parts(model, name: str = "the model"):
    """(final norm, unembedding) modules of a causal LM: the base model's final normalisation
    (``final_layer_norm`` GPT-NeoX, ``norm`` Llama, ``ln_f`` GPT-2, ...) and ``get_output_embeddings()``.
    A model lacking either is a UsageError naming what is missing."""
    import torch

    get = getattr(model, "get_output_embeddings", None)
    unembed = get() if callable(get) else None
    if not isinstance(unembed, torch.nn.Module):
        raise UsageError(f"{name} has no unembedding (get_output_embeddings() gives nothing), so no lens can "
                         "read its layers")
    base = getattr(model, "base_model", None) or model
    for attr in FINAL_NORM_NAMES:
        norm = getattr(base, attr, None)
        if isinstance(norm, torch.nn.Module):
            return norm, unembed
    raise UsageError(f"{name} has no final normalisation layer this tool can find (looked for "
                     f"{', '.join(type(base).__name__ + '.' + a for a in FINAL_NORM_NAMES)})")


def n_layers_of(model) -> int:
    cfg = model.config
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    if not isinstance(n, int) or n < 1:
        raise UsageError("the model's config gives no number of layers (num_hidden_layers)")
    return n


def residual_streams(model, norm, ids, mask):
    """ONE forward pass: (logits [B, T, V], [h_0, ..., h_L] raw residual streams, each [B, T, H]).

    h_l = ``hidden_states[l]`` for l < L; h_L = the input of the final norm, captured by a hook,
    because transformers 5 returns ``hidden_states[L]`` already normalised (GPT-NeoX, Llama, GPT-2
    alike), and normalising it again would give a wrong last layer."""
    captured = []
    hook = norm.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].clone()))
    try:
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    finally:
        hook.remove()
    if len(captured) != 1:
        raise UsageError(f"the final norm ran {len(captured)} times in one forward pass; cannot find the last "
                         "residual stream")
    # --device-map auto: a layer's output stays on that layer's device; bring every stream to the input's
    return out.logits.to(ids.device), [h.to(ids.device) for h in list(out.hidden_states[:-1]) + [captured[0]]]


def new_tuned_lens(n_layers: int, hidden: int):
    """Belrose et al.'s translators: for each layer 0 .. L−1 an affine map h -> h + A h + s·b with
    A = 0 and b = 0 at the start (the identity). Layer L has none (identity). ``s`` is a fixed scale
    (a buffer, 1 until training sets it to the layer's RMS residual norm), so that a step on b moves
    the normalised output as much at a small-norm layer (the embeddings) as at a large-norm one."""
    import torch

    class Translator(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(hidden, hidden))
            self.bias = torch.nn.Parameter(torch.zeros(hidden))
            self.register_buffer("scale", torch.ones(()))

        def forward(self, x):  # A x + s·b (translate adds x)
            return x @ self.weight.T + self.scale * self.bias

    return torch.nn.ModuleList([Translator() for _ in range(n_layers)])


def translate(lens, layer: int, h):
    """h + A_l h + b_l (in fp32, back in h's dtype); h itself without a lens or at the last layer."""
    if lens is None or layer >= len(lens):
        return h
    x = h.float()
    return (x + lens[layer](x)).to(h.dtype)


def lens_logits(h, norm, unembed, lens=None, layer: int = 0):
    """The lens's logits of residual streams ``h`` [..., H] at ``layer``: W_U · norm(translate(h)), on h's
    device (with --device-map auto the norm and the unembedding may run on another device, or load their
    weights from disk for this call: accelerate's hooks on the two modules do that)."""
    return unembed(norm(translate(lens, layer, h))).to(h.device)


def check_last_layer(logits, h_last, norm, unembed, name: str) -> None:
    """The logit lens at the last layer must be the model's output; else the lens is meaningless
    (e.g. a model that scales or soft-caps its logits after the unembedding)."""
    import torch

    ref = logits.float()
    got = lens_logits(h_last, norm, unembed).float()
    tol = (1e-4 if logits.dtype == torch.float32 else 3e-2) * max(1.0, float(ref.abs().max()))
    diff = float((got - ref).abs().max())
    if not diff <= tol:
        raise UsageError(f"{name}: its final norm + unembedding of the last residual stream differ from its logits "
                         f"by {diff:.3g}; the model changes its logits after the unembedding, so a lens cannot read it")


# ----------------------------------------------------------------------------------------------
# What is scored: sequences with the target tokens of some positions
# ----------------------------------------------------------------------------------------------
def text_sequences(tokenizer, texts: list[str], max_length: int) -> list[dict]:
    """evaluate_unlearning.py's NLL sequences: each line tokenised as the tokenizer does by default
    (special tokens included), cut to ``max_length``; positions 0 .. n−2 predict tokens 1 .. n−1."""
    ids = [list(x) for x in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    return [{"ids": x, "start": 0, "targets": x[1:]} for x in ids]


def lm_eval_encode(tokenizer, string: str) -> list[int]:
    """lm-eval 0.4's ``HFLM.tok_encode`` with its defaults: ``tokenizer.encode(string)`` with the
    tokenizer's own special tokens, none when the string already starts with the BOS (prefix) token."""
    prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    bos = tokenizer.decode(prefix_id) if prefix_id is not None else None
    if bos and string.startswith(bos):
        return list(tokenizer.encode(string, add_special_tokens=False))
    return list(tokenizer.encode(string))


def mcq_sequences(tokenizer, items: list[dict], max_length: int) -> list[dict]:
    """One sequence per (question, choice), as lm-eval scores evaluate_unlearning.py's task yaml:
    context "{question}\\nAnswer:", continuation " {choice}" (target delimiter " "); trailing spaces of
    the context move to the continuation; context tokens = encode(context), continuation tokens =
    encode(context + continuation) after them; the input is (context + continuation)[−(M+1):][:−1]
    and its last len(continuation) positions predict the continuation (lm-eval's
    ``_encode_pair`` and ``_loglikelihood_tokens``, M = max_length)."""
    seqs = []
    for q, item in enumerate(items):
        for c, choice in enumerate(item["choices"]):
            context, continuation = f"{item['question']}\nAnswer:", f" {choice}"
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces:
                continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
            whole = lm_eval_encode(tokenizer, context + continuation)
            head = lm_eval_encode(tokenizer, context)
            cont = whole[len(head):]
            if not cont:
                raise UsageError(f"question {q + 1}, choice {c + 1}: the choice has no token of its own")
            if len(cont) > max_length:
                raise UsageError(f"question {q + 1}, choice {c + 1}: the choice is longer than --max-length")
            full = (head + cont)[-(max_length + 1):]
            seqs.append({"ids": full[:-1], "start": len(full) - 1 - len(cont), "targets": full[-len(cont):],
                         "item": q, "choice": c})
    return seqs


def mcq_accuracy(items: list[dict], seqs: list[dict], loglik) -> float:
    """lm-eval's ``acc``: share of items whose argmax (first on ties, np.argmax) of the summed
    continuation log-likelihood is the answer."""
    import numpy as np

    per_item: dict[int, list[float]] = {}
    for s, ll in zip(seqs, loglik):
        per_item.setdefault(s["item"], []).append(float(ll))
    return float(np.mean([int(np.argmax(per_item[q]) == item["answer"]) for q, item in enumerate(items)]))


def mean_line_nll(loglik, counts) -> float:
    """evaluate_unlearning.py's forget/retain NLL: the mean over lines of −(1/n) Σ log p (lines with no
    scored token left out)."""
    nll = [-float(ll) / n for ll, n in zip(loglik, counts) if n > 0]
    return sum(nll) / len(nll) if nll else math.nan


def layer_scores(model, norm, unembed, seqs: list[dict], layers: list[int], lenses: dict, batch_size: int,
                 pad_id: int, device: str, with_kl: bool = False, progress=None, name: str = "model") -> dict:
    """{lens: {layer: {"loglik": [per sequence Σ log p(target)] (float64), "kl": Σ over the scored
    tokens of KL(p_final || p_lens), "n": number of scored tokens}}} from one forward pass per batch.

    Right padding with an attention mask (causal: padding is invisible to the real tokens); only the
    scored positions go through the norm and the unembedding, and only those of the asked layers."""
    import torch

    n = len(seqs)
    out = {lens: {l: {"loglik": torch.zeros(n, dtype=torch.float64), "kl": 0.0, "n": 0} for l in layers}
           for lens in lenses}
    batches = length_batches([len(s["ids"]) for s in seqs], batch_size)
    checked = False
    with torch.inference_mode():
        for idx in (progress(batches) if progress else batches):
            width = max(len(seqs[i]["ids"]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            rows, cols, targets, owner = [], [], [], []
            for r, i in enumerate(idx):
                s = seqs[i]
                ids[r, :len(s["ids"])] = torch.tensor(s["ids"])
                mask[r, :len(s["ids"])] = 1
                k = len(s["targets"])
                rows += [r] * k
                cols += range(s["start"], s["start"] + k)
                targets += s["targets"]
                owner += [i] * k
            logits, hs = residual_streams(model, norm, ids.to(device), mask.to(device))
            if not checked:
                check_last_layer(logits[mask.to(device).bool()], hs[-1][mask.to(device).bool()], norm, unembed, name)
                checked = True
            if not rows:
                continue
            rows_t, cols_t = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
            tgt = torch.tensor(targets, device=device).unsqueeze(-1)
            owner_t = torch.tensor(owner)
            final = torch.log_softmax(logits[rows_t, cols_t].float(), -1) if with_kl else None
            for lens_name, lens in lenses.items():
                for l in layers:
                    lp = torch.log_softmax(lens_logits(hs[l][rows_t, cols_t], norm, unembed, lens, l).float(), -1)
                    acc = out[lens_name][l]
                    acc["loglik"].index_add_(0, owner_t, lp.gather(-1, tgt).squeeze(-1).double().cpu())
                    acc["n"] += len(rows)
                    if with_kl:
                        acc["kl"] += float((final.exp() * (final - lp)).sum(-1).double().sum())
            del logits, hs
    return out


# ----------------------------------------------------------------------------------------------
# Training the tuned lens
# ----------------------------------------------------------------------------------------------
def model_digest(path: Path) -> str:
    """SHA-256 over the model folder's config.json and *.safetensors files (names and contents)."""
    h = hashlib.sha256()
    for f in sorted([path / "config.json"] + list(path.glob("*.safetensors"))):
        if f.is_file():
            h.update(f"{f.name}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def kl_per_token(target_logp, logp):
    """KL(p || q) per row = Σ_v p_v (log p_v − log q_v), from log-probabilities [N, V]."""
    return (target_logp.exp() * (target_logp - logp)).sum(-1)


def train_tuned_lens(model, norm, unembed, train_ids: list[list[int]], n_layers: int, hidden: int, steps: int,
                     tokens_per_step: int, lr_scale: float, seed: int, batch_size: int, pad_id: int, device: str,
                     progress=None):
    """Belrose et al.'s tuned lens trained on ``train_ids`` (token lists), the model frozen.

    Each step takes the next lines of a seeded shuffle (re-shuffled each epoch) until they hold
    ``tokens_per_step`` tokens, runs the model once on them (no gradient), and for each layer
    l < L takes one gradient of mean_t KL(p_final,t || p_lens,l,t) over every real token t (one
    backward pass per layer: the translators are independent). SGD, Nesterov momentum 0.9,
    lr = lr_scale·(1 − 0.9), weight decay 1e-3, linear decay to 0 over ``steps``.
    Returns (lens, {"seconds": ..., "seconds_per_layer": ..., "final_kl": [per layer, last step]})."""
    import numpy as np
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    lens = new_tuned_lens(n_layers, hidden).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(lens.parameters(), lr=lr_scale * (1 - MOMENTUM), momentum=MOMENTUM, nesterov=True,
                          weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / steps))
    order, pos = rng.permutation(len(train_ids)), 0
    final_kl = [math.nan] * n_layers
    start = time.perf_counter()
    for step in (progress(range(steps)) if progress else range(steps)):
        chosen, tokens = [], 0
        while tokens < tokens_per_step and len(chosen) < len(train_ids):
            if pos == len(order):
                order, pos = rng.permutation(len(train_ids)), 0
            chosen.append(train_ids[order[pos]])
            tokens += len(chosen[-1])
            pos += 1
        hs_parts, target_parts = [[] for _ in range(n_layers)], []
        with torch.no_grad():
            for b in range(0, len(chosen), batch_size):
                group = chosen[b:b + batch_size]
                width = max(len(x) for x in group)
                ids = torch.full((len(group), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(group), width), dtype=torch.long)
                for r, x in enumerate(group):
                    ids[r, :len(x)] = torch.tensor(x)
                    mask[r, :len(x)] = 1
                mask = mask.to(device)
                logits, hs = residual_streams(model, norm, ids.to(device), mask)
                keep = mask.bool()
                target_parts.append(torch.log_softmax(logits[keep].float(), -1))
                for l in range(n_layers):
                    hs_parts[l].append(hs[l][keep])
        target = torch.cat(target_parts)
        if step == 0:  # b's scale: the RMS of each layer's residual stream on the first batch
            with torch.no_grad():
                for l in range(n_layers):
                    lens[l].scale.fill_(float(torch.cat(hs_parts[l]).float().square().mean().sqrt().clamp_min(1e-6)))
        opt.zero_grad(set_to_none=True)
        for l in range(n_layers):
            h = torch.cat(hs_parts[l])
            loss = kl_per_token(target, torch.log_softmax(lens_logits(h, norm, unembed, lens, l).float(), -1)).mean()
            if not torch.isfinite(loss):
                raise UsageError(f"tuned-lens training diverged at step {step + 1} (layer {l}); lower --lens-lr")
            loss.backward()
            final_kl[l] = float(loss.detach())
        opt.step()
        sched.step()
    seconds = time.perf_counter() - start
    lens.eval()
    return lens, {"seconds": seconds, "seconds_per_layer": seconds / n_layers, "final_train_kl": final_kl}


def lens_tensors(lens) -> dict:
    return {f"translators.{k}": v.detach().float().cpu().contiguous() for k, v in lens.state_dict().items()}


def load_tuned_lens(path: Path, fingerprint: dict, n_layers: int, hidden: int, device: str):
    """The saved translators when ``path`` holds them with exactly this ``fingerprint``; else None."""
    import torch
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get("fingerprint")
            if meta is None or json.loads(meta) != fingerprint:
                return None
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # a damaged file is retrained, not trusted
        print(f"warning: {path} cannot be read ({first_line(e)}); training the tuned lens again", file=sys.stderr)
        return None
    lens = new_tuned_lens(n_layers, hidden)
    try:
        lens.load_state_dict({k.removeprefix("translators."): v for k, v in tensors.items()}, strict=True)
    except RuntimeError:
        return None
    if not all(torch.isfinite(v).all() for v in tensors.values()):
        return None
    return lens.to(device).eval()


# ----------------------------------------------------------------------------------------------
# One model
# ----------------------------------------------------------------------------------------------
def parse_layers(spec: str, n_layers: int) -> list[int]:
    """``all`` -> 0 .. L; else comma-separated hidden_states indices, each in 0 .. L."""
    if spec.strip() == "all":
        return list(range(n_layers + 1))
    try:
        layers = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"--layers takes 'all' or comma-separated layer indices (got {spec!r})") from None
    if not layers:
        raise UsageError(f"--layers takes 'all' or comma-separated layer indices (got {spec!r})")
    bad = [l for l in layers if not 0 <= l <= n_layers]
    if bad:
        raise UsageError(f"--layers {bad[0]} is out of range: the model has hidden_states 0 .. {n_layers}")
    return layers


def stage_progress(desc: str):
    """The shared progress display over a stage's iterable (a bar on a terminal, lines in a log)."""
    return lambda items: progress(items, desc=desc, leave=False)


def lens_of_model(spec: str, path: Path, data: dict, args, device: str, dtype: str, outdir: Path) -> list[dict]:
    """Every row of one model (lens × layer); trains or reuses its tuned lens."""
    import torch

    name = model_name(spec)
    torch.manual_seed(args.seed)
    model, tok = load_causal_lm(path, name, dtype, device, args.trust_remote_code, big=args)
    norm, unembed = lens_parts(model, name)
    n_layers = n_layers_of(model)
    hidden = int(model.config.hidden_size)
    layers = parse_layers(args.layers, n_layers)
    lenses: dict = {}
    if "logit" in args.lens:
        lenses["logit"] = None
    if "tuned" in args.lens:
        file = outdir / name / "tuned_lens.safetensors"
        fingerprint = {"format": LENS_FORMAT, "model_sha256": model_digest(path),
                       "train_text_sha256": data["lens_train_sha256"], "steps": args.lens_steps,
                       "tokens_per_step": args.lens_tokens_per_step, "lr_scale": args.lens_lr, "momentum": MOMENTUM,
                       "weight_decay": WEIGHT_DECAY, "seed": args.seed, "max_length": args.max_length,
                       "batch_size": args.batch_size, "dtype": dtype, "n_layers": n_layers, "hidden_size": hidden}
        lens = load_tuned_lens(file, fingerprint, n_layers, hidden, device)
        if lens is not None:
            print(f"    tuned lens: reusing {file}", file=sys.stderr, flush=True)
        else:
            train_ids = [x for x in tok(data["lens_train"], truncation=True, max_length=args.max_length)["input_ids"]
                         if len(x)]
            lens, info = train_tuned_lens(model, norm, unembed, train_ids, n_layers, hidden, args.lens_steps,
                                          args.lens_tokens_per_step, args.lens_lr, args.seed, args.batch_size,
                                          tok.pad_token_id, device,
                                          stage_progress(f"{name}: training the tuned lens ({args.lens_steps} steps)"))
            meta = {"fingerprint": json.dumps(fingerprint, sort_keys=True)}
            tensors = lens_tensors(lens)
            from safetensors.torch import save_file

            write_atomically({
                file: lambda p: save_file(tensors, str(p), metadata=meta),
                file.with_name("tuned_lens.json"): json.dumps({"fingerprint": fingerprint, **info}, indent=2) + "\n",
            })
            print(f"    tuned lens: trained in {info['seconds']:.1f} s ({info['seconds_per_layer']:.2f} s per layer), "
                  f"wrote {file}", file=sys.stderr, flush=True)
        lenses["tuned"] = lens
    common = dict(model=model, norm=norm, unembed=unembed, layers=layers, lenses=lenses, batch_size=args.batch_size,
                  pad_id=tok.pad_token_id, device=device, name=name)
    results: dict = {}
    for split in ("forget", "retain"):
        seqs = text_sequences(tok, data[f"{split}_test"], args.max_length)
        scores = layer_scores(seqs=seqs, with_kl=split == "retain", progress=stage_progress(f"{name}: {split} test"),
                              **common)
        counts = [len(s["targets"]) for s in seqs]
        for lens_name in lenses:
            for l in layers:
                r = results.setdefault((lens_name, l), {})
                s = scores[lens_name][l]
                r[f"{split}_nll"] = mean_line_nll(s["loglik"].tolist(), counts)
                if split == "retain":
                    r["kl_to_final"] = s["kl"] / s["n"] if s["n"] else math.nan
        if f"mcq_{split}" in data:
            items = data[f"mcq_{split}"]
            seqs = mcq_sequences(tok, items, args.max_length)
            scores = layer_scores(seqs=seqs, progress=stage_progress(f"{name}: {split} MCQ"), **common)
            for lens_name in lenses:
                for l in layers:
                    results[(lens_name, l)][f"mcq_{split}_acc"] = mcq_accuracy(items, seqs,
                                                                                scores[lens_name][l]["loglik"].tolist())
    del model
    rows = []
    for (lens_name, l), r in results.items():
        row = {"model": name, "lens": lens_name, "layer": l, **r}
        for split in ("forget", "retain"):
            items = data.get(f"mcq_{split}")
            row[f"mcq_{split}_chance"] = sum(1 / len(i["choices"]) for i in items) / len(items) if items else None
        rows.append(row)
    return rows


def layerwise_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([r["model"], r["lens"], r["layer"]] + [
            "" if r.get(c) is None or (isinstance(r[c], float) and math.isnan(r[c])) else repr(float(r[c]))
            for c in COLUMNS[3:]])
    return buf.getvalue()


def lens_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True,
                   help="model to read: local directory or hub ID (repeat the flag for several)")
    p.add_argument("--mcq-forget", default=None,
                   help="forget multiple-choice JSONL (default data/forget_mcq.jsonl, skipped with a warning "
                        "when absent; '' skips it)")
    p.add_argument("--mcq-retain", default=None,
                   help="retain multiple-choice JSONL (default data/retain_mcq.jsonl, skipped with a warning "
                        "when absent; '' skips it)")
    p.add_argument("--forget-test", default="data/forget_test.txt", help="forget test lines (default: %(default)s)")
    p.add_argument("--retain-test", default="data/retain_test.txt",
                   help="retain test lines; kl_to_final is measured on them (default: %(default)s)")
    p.add_argument("--lens", default="logit,tuned", help="lenses, comma-separated: logit, tuned (default: %(default)s)")
    p.add_argument("--lens-train-text", default="data/retain.txt",
                   help="text the tuned lens is trained on; never an evaluation file (default: %(default)s)")
    p.add_argument("--lens-steps", type=int, default=250, help="tuned-lens SGD steps (default: %(default)s, as Belrose et al.)")
    p.add_argument("--lens-tokens-per-step", type=int, default=4096,
                   help="training tokens per tuned-lens step (default: %(default)s; Belrose et al. used 262144)")
    p.add_argument("--lens-lr", type=float, default=1.0,
                   help="tuned-lens learning-rate scale: SGD lr = scale × (1 − momentum 0.9) (default: %(default)s)")
    p.add_argument("--layers", default="all",
                   help="hidden_states indices to read (0 = embeddings, L = last), comma-separated, or all "
                        "(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per sequence; longer ones are cut (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="tuned-lens initialisation and data order (default: %(default)s)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"], help="default auto: CUDA > MPS > CPU")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="default auto: bf16 on CUDA, fp16 on MPS, fp32 on CPU")
    p.add_argument("--outdir", default="outputs/lens", help="results folder (default: %(default)s)")
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
    for flag, v, low in (("--batch-size", args.batch_size, 1), ("--max-length", args.max_length, 2),
                         ("--lens-steps", args.lens_steps, 1), ("--lens-tokens-per-step", args.lens_tokens_per_step, 1)):
        if v < low:
            raise UsageError(f"{flag} must be at least {low} (got {v})")
    if not (math.isfinite(args.lens_lr) and args.lens_lr > 0):
        raise UsageError(f"--lens-lr must be a positive number (got {args.lens_lr})")
    lenses = [x.strip() for x in args.lens.split(",") if x.strip()]
    unknown = [x for x in lenses if x not in LENSES]
    if not lenses or unknown:
        raise UsageError(f"--lens takes logit, tuned or logit,tuned (got {args.lens!r})")
    args.lens = [x for x in LENSES if x in lenses]
    if args.layers.strip() != "all":
        parse_layers(args.layers, 10 ** 9)  # syntax now; the range per model
    names = [model_name(m) for m in args.model]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"two models would share the results folder {dup[0]}; read them in separate --outdir")
    check_outdir(args.outdir, "layerwise.csv", owned=("layerwise.csv",))


def read_lens_inputs(args) -> dict:
    """Every input file, validated before any model is loaded."""
    data = {"forget_test": read_lines(args.forget_test), "retain_test": read_lines(args.retain_test)}
    for key, given in (("forget", args.mcq_forget), ("retain", args.mcq_retain)):
        if given == "":
            continue
        path = Path(given if given is not None else f"data/{key}_mcq.jsonl")
        if given is None and not path.exists():
            print(f"warning: {path} does not exist; no {key} multiple-choice columns", file=sys.stderr)
            continue
        data[f"mcq_{key}"] = read_mcq(path)
        data[f"mcq_{key}_path"] = path
    if "tuned" in args.lens:
        data["lens_train"] = read_lines(args.lens_train_text)
        train = Path(args.lens_train_text)
        data["lens_train_sha256"] = sha256_file(train)
        for flag, other in (("--forget-test", args.forget_test), ("--retain-test", args.retain_test)):
            if train.resolve() == Path(other).resolve() or data["lens_train_sha256"] == sha256_file(other):
                raise UsageError(f"--lens-train-text {train} is the evaluation file {flag}; train the tuned lens on "
                                 "other text (e.g. data/retain.txt)")
    return data


def run(args) -> Path:
    check_args(args)
    data = read_lens_inputs(args)
    if not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"
    paths = {spec: resolve_model_dir(spec, args.trust_remote_code) for spec in args.model}
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    outdir = Path(args.outdir)
    meta = {"models": args.model, "lenses": args.lens, "layers": args.layers, "device": device, "dtype": dtype,
            "device_map": args.device_map,
            "settings": {k: getattr(args, k) for k in ("lens_steps", "lens_tokens_per_step", "lens_lr", "batch_size",
                                                        "max_length", "seed")},
            "data": {k: {"path": str(getattr(args, k)), "sha256": sha256_file(getattr(args, k))}
                     for k in ("forget_test", "retain_test")},
            "layer_numbering": "hidden_states index: 0 = embeddings, l = after decoder layer l-1, L = last "
                               "(before the final norm)",
            "versions": lens_versions()}
    for key in ("forget", "retain"):
        if f"mcq_{key}_path" in data:
            p = data[f"mcq_{key}_path"]
            meta["data"][f"mcq_{key}"] = {"path": str(p), "sha256": sha256_file(p)}
    if "tuned" in args.lens:
        meta["data"]["lens_train_text"] = {"path": str(args.lens_train_text), "sha256": data["lens_train_sha256"]}
    rows: list[dict] = []
    for spec in args.model:
        print(f"==> {spec}", file=sys.stderr, flush=True)
        got = lens_of_model(spec, paths[spec], data, args, device, dtype, outdir)
        rows += got
        for lens_name in args.lens:
            mine = [r for r in got if r["lens"] == lens_name]
            best = max((r.get("mcq_forget_acc") or 0.0 for r in mine), default=0.0)
            print(f"    {lens_name} lens: best forget MCQ acc over layers {best:.3f}, last-layer forget NLL "
                  f"{mine[-1]['forget_nll']:.3f}", file=sys.stderr, flush=True)
        # after every model, so a stopped run keeps the finished models
        write_atomically({outdir / "layerwise.csv": layerwise_csv(rows),
                          outdir / "layerwise_meta.json": json.dumps(meta, indent=2) + "\n"})
    return outdir


def main(argv=None) -> int:
    args = parse_args(argv)

    def work() -> int:
        out = run(args)
        print(f"wrote {out / 'layerwise.csv'}", file=sys.stderr)
        return 0

    return run_tool(work, kept="results of finished models are kept, nothing half-written",
                    oom_hint="lower --batch-size, --max-length or --lens-tokens-per-step")


if __name__ == "__main__":
    sys.exit(main())
