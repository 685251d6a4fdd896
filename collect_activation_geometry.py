# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "torch>=2.4",
#     "transformers>=5.0,<6",
#     "accelerate>=1.0",
#     "safetensors>=0.4",
#     "huggingface_hub>=0.30",
#     "numpy>=1.24",
#     "pandas>=2.0",
#     "scikit-learn>=1.3",
#     "scipy>=1.11",
#     "threadpoolctl>=3.1",
#     "pyyaml>=6.0",
#     "tqdm>=4.66",
# ]
# ///
"""How did the representations change? Separability, similarity, rank and where ΔW reads from, per layer.

collect_activation_norms.py says how large h_A, h_B and h_B - h_A are. This tool asks what the
change did to the *geometry* of the representations, on forget and retain text, one row per hidden
state l = 0..N (transformers' ``hidden_states[l]``: 0 = the embeddings, l = the output of decoder
layer l-1, N = the last layer's output after the final norm; the numbering of activation_stats.csv):

  probe_auc_a/_b (+ _std)   forget-vs-retain separability of the per-text features (mean over a text's
                            counted tokens): standardised L2 logistic regression (C = 1, lbfgs),
                            StratifiedKFold(--probe-folds, shuffled with --seed), mean and std of fold ROC AUC
  centroid_cos_a/_b         cosine of the forget and the retain centroid of the per-text features
  cka_forget, cka_retain    linear CKA (Kornblith et al. 2019) of A's and B's per-token activations
  eff_rank_<split>_a/_b     99%-energy rank of the centred per-token covariance
  shift_<split>             ||mu_B - mu_A|| / ||mu_A|| of the per-token means
  dW_read_*_<comp>          where ΔW reads from: the share of model A's input energy (as the matrix sees it,
                            after the layer's norm) in the top-k right singular subspace of ΔW = W_B - W_A,
                            for comp = mlp_in and qkv of decoder layer j, in row j+1

Only real tokens count: padding never enters a statistic and the first --skip-first positions of
every text are left out (attention sinks: the first token's huge activations swamp every mean).
The per-token statistics use all counted tokens, or --max-tokens of them per split drawn with
--seed, the same tokens for both models. Memory: one model at a time (model A's pass, then model
B's); what is kept between them is the per-text features (texts x layers x hidden, fp32) and the
per-token sample (max-tokens x layers x hidden per split, in the model's dtype). See
docs/activation_geometry.md.

Usage:
    uv run --script collect_activation_geometry.py --model-a A --model-b B \\
        --forget-text data/forget.txt --retain-text data/retain.txt
"""
from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


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


def release_memory() -> None:
    """Give a deleted model's memory back (module graphs can hold reference cycles) before the next loads."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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


def load_text_config(path: Path, name: str, trust_remote_code: bool = False):
    """The (text) config of a resolved model directory (``name``: what the user passed), or one sentence why not."""
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise UsageError(f"{name} has no config.json, so it is not a Hugging Face model directory")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:  # unknown architecture, remote code needed, ...
        raise UsageError(f"cannot load the config of {name}: {first_line(e)}") from None
    return config.get_text_config()


def check_compatible(config_a, config_b) -> tuple[int, int]:
    """Both models must have the same number of layers and hidden size; returns (layers, hidden)."""
    la, lb = getattr(config_a, "num_hidden_layers", None), getattr(config_b, "num_hidden_layers", None)
    ha, hb = getattr(config_a, "hidden_size", None), getattr(config_b, "hidden_size", None)
    if la != lb:
        raise UsageError(f"the models have different numbers of layers (A: {la}, B: {lb}); "
                         "their hidden states cannot be compared layer by layer")
    if ha != hb:
        raise UsageError(f"the models have different hidden sizes (A: {ha}, B: {hb}); "
                         "their hidden states cannot be subtracted")
    if la is None or ha is None:
        raise UsageError("cannot read num_hidden_layers / hidden_size from the model configs")
    return la, ha


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:  # causal LMs often ship without one; the id only fills masked slots
        tok.pad_token = tok.eos_token
    return tok


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def has_tokenizer(path: Path) -> bool:
    """Whether a model directory has tokenizer files (AutoTokenizer would otherwise build an empty one)."""
    return any((path / f).is_file() for f in TOKENIZER_FILES)


def token_ids(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, truncated to ``max_length`` (no padding: batches are padded later)."""
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return [list(x) for x in ids]


def check_weights(path: Path, name: str) -> None:
    """Every ``*.safetensors`` file of a model folder opens (its header is whole and covers the file)."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UsageError(f"model {name} has no *.safetensors weights (pickled .bin weights are not loaded)")
    for f in files:
        try:
            with safe_open(f, framework="pt"):
                pass
        except Exception as e:  # noqa: BLE001 - SafetensorError, OSError: all mean "cannot read this file"
            raise UsageError(f"model {name}: {f.name} is damaged or truncated ({first_line(e)})") from None


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (an OOM shows up at once).

    With right padding and a causal mask a real token never sees a padding token, so the hidden
    states of real tokens do not depend on how texts are grouped; sorting only removes padding work.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def base_of(model):
    """The transformer body without the LM head: its ``hidden_states`` equal the causal LM's."""
    return getattr(model, "base_model", model)


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


def load_geometry_model(path: Path, name: str, dtype, device: str, trust_remote_code: bool, big=None):
    """One model through the shared loader (``from_pretrained_big``): the weights loaded once, straight to
    ``device``, or spread by --device-map auto (``big``: the parsed --device-map, --max-memory and
    --offload-folder). ΔW is never read from the loaded model (``dw_directions`` reads the files)."""
    from safetensors import SafetensorError

    try:
        model = from_pretrained_big(path, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                                    **big_model_kwargs(big))
    except (OSError, ValueError, SafetensorError) as e:
        raise UsageError(f"cannot load model {name} as safetensors: {first_line(e)}") from None
    return model.eval()


GEOMETRY_CSV = "activation_geometry.csv"
REPORT_NAME = "geometry_report.yaml"
FEATURES_NAME = "features.safetensors"
GEOMETRY_SPLITS = ("forget", "retain")
COMPONENTS = ("mlp_in", "qkv")
ENERGY = 0.99  # effective rank: the smallest k whose top-k covariance eigenvalues hold >= 99% of the trace
PROBE = {"model": "StandardScaler + LogisticRegression", "penalty": "l2", "C": 1.0, "solver": "lbfgs",
         "max_iter": 1000, "cv": "StratifiedKFold(shuffle=True)", "score": "ROC AUC of decision_function",
         "std": "population (ddof 0) over folds"}
RANK_RTOL = float(np.finfo(np.float32).eps)  # numerical rank of ΔW: sigma_i > sigma_1 * max(rows, cols) * eps32

# Where a decoder layer's input matrices are, by name (checkpoint tensors without ".weight", modules as
# named by named_modules()): (pattern, component, stored transposed). Several matrices of one layer and
# component read the same input (Llama's q/k/v, gate/up): their ΔWs are stacked. GPT-2's Conv1D keeps
# its weight as (in, out), the transpose of nn.Linear's (out, in).
MATRIX_PATTERNS = [
    (re.compile(r"(?:^|\.)layers\.(\d+)\.attention\.query_key_value$"), "qkv", False),   # GPT-NeoX
    (re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.dense_h_to_4h$"), "mlp_in", False),
    (re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.[qkv]_proj$"), "qkv", False),        # Llama, Mistral, Qwen
    (re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.(?:gate|up)_proj$"), "mlp_in", False),
    (re.compile(r"(?:^|\.)h\.(\d+)\.attn\.c_attn$"), "qkv", True),                       # GPT-2 (Conv1D)
    (re.compile(r"(?:^|\.)h\.(\d+)\.mlp\.c_fc$"), "mlp_in", True),
]


def match_matrix(name: str):
    """(decoder layer, component, transposed) of a module / weight name (without ``.weight``), or None."""
    for pattern, comp, transposed in MATRIX_PATTERNS:
        m = pattern.search(name)
        if m:
            return int(m.group(1)), comp, transposed
    return None


# ----------------------------------------------------------------------------------------------------
# Inputs


def read_split(path, max_samples: int | None) -> tuple[list[int], list[str]]:
    """(line numbers, texts) of a text file, one sample per line, the first ``max_samples`` if given."""
    try:
        numbered = read_numbered_lines(path)
    except UsageError as e:
        raise UsageError(f"text file {e}") from None
    numbered = numbered[:max_samples] if max_samples else numbered
    return [n for n, _ in numbered], [t for _, t in numbered]


def parse_state_spec(spec: str, n_states: int) -> list[int]:
    """``all`` or comma-separated hidden-state indices and ranges (``0,4-6``), each in 0..n_states-1."""
    if spec.strip().lower() == "all":
        return list(range(n_states))
    out: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            lo_i, hi_i = int(lo), int(hi) if hi else int(lo)
            if lo_i > hi_i:
                raise ValueError
            out.update(range(lo_i, hi_i + 1))
    except ValueError:
        raise UsageError(f"--layers takes 'all' or hidden-state indices like 0,4-6 (got {spec!r})") from None
    bad = [x for x in sorted(out) if not 0 <= x < n_states]
    if bad:
        raise UsageError(f"--layers {spec}: hidden state {bad[0]} does not exist (0..{n_states - 1}: 0 = embeddings, "
                         f"{n_states - 1} = the last layer's output)")
    return sorted(out)


# ----------------------------------------------------------------------------------------------------
# Which tokens count, and the per-token sample


def counted_positions(length: int, skip_first: int) -> range:
    """Positions of a text of ``length`` tokens that enter the statistics: all but the first ``skip_first``."""
    return range(min(skip_first, length), length)


def choose_sample(lengths: list[int], skip_first: int, max_tokens: int, seed: int, split_index: int):
    """The per-token sample of one split: (text index, position) arrays of the chosen counted tokens,
    in text order. All counted tokens when there are at most ``max_tokens``, else ``max_tokens`` of them
    drawn without replacement by ``numpy.random.default_rng([seed, split_index])``. Depends only on the
    texts' lengths, never on batching or padding, so both models see the same tokens."""
    text = np.concatenate([np.full(len(counted_positions(n, skip_first)), i, dtype=np.int64)
                           for i, n in enumerate(lengths)] + [np.zeros(0, np.int64)])
    pos = np.concatenate([np.arange(min(skip_first, n), n, dtype=np.int64) for n in lengths] + [np.zeros(0, np.int64)])
    if len(text) > max_tokens:
        keep = np.sort(np.random.default_rng([seed, split_index]).choice(len(text), size=max_tokens, replace=False))
        text, pos = text[keep], pos[keep]
    return text, pos


def split_batches(lengths: dict, batch_size: int) -> list[tuple[str, list[int]]]:
    """[(split, text indices), ...]: length-sorted batches of each split (texts without tokens dropped)."""
    batches = []
    for split in GEOMETRY_SPLITS:
        idx = [i for i, n in enumerate(lengths[split]) if n > 0]
        for group in length_sorted_batches([lengths[split][i] for i in idx], batch_size):
            batches.append((split, [idx[g] for g in group]))
    return batches


def pad_texts(seqs: list[list[int]], pad_id: int, side: str = "right"):
    """``input_ids``, ``attention_mask``, ``position_ids`` of a padded batch and each row's offset (where
    its first real token sits). Position ids count real tokens only, so left padding gives every text
    the positions it has alone (transformers would otherwise number the padding too)."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    pos = torch.zeros((len(seqs), width), dtype=torch.long)
    offsets = []
    for i, s in enumerate(seqs):
        off = width - len(s) if side == "left" else 0
        ids[i, off:off + len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, off:off + len(s)] = 1
        pos[i, off:off + len(s)] = torch.arange(len(s))
        offsets.append(off)
    return ids, mask, pos, offsets


def counted_mask(lengths: list[int], offsets: list[int], width: int, skip_first: int):
    """[batch, width] bool: the real tokens of each row except its first ``skip_first``."""
    import torch

    m = torch.zeros((len(lengths), width), dtype=torch.bool)
    for i, (n, off) in enumerate(zip(lengths, offsets)):
        r = counted_positions(n, skip_first)
        m[i, off + r.start:off + r.stop] = True
    return m


# ----------------------------------------------------------------------------------------------------
# The math (pure functions on arrays; the tests hold them to written-out references)


def centred(x):
    """float64 torch tensor minus its column means (a new tensor; ``x`` is never changed)."""
    import torch

    xc = x.to(torch.float64, copy=True)
    return xc.sub_(xc.mean(0, keepdim=True))


def smaller_gram(xc):
    """The Gram matrix of the smaller side of [n, d] ``xc``: X X^T (n x n) when n <= d, else X^T X (d x d).
    Its non-zero eigenvalues are the same either way."""
    return xc @ xc.T if xc.shape[0] <= xc.shape[1] else xc.T @ xc


def centred_for_gram(x):
    """``centred(x)``, as a numpy array on the CPU: numpy runs ``a.T @ a`` as a symmetric rank-k update (half
    the flops; 0.06 s against torch's 0.12 s at 5600 x 512 in float64); a torch tensor on a GPU."""
    xc = centred(x)
    return xc.numpy() if xc.device.type == "cpu" else xc


def as_torch(k):
    import torch

    return torch.from_numpy(k) if isinstance(k, np.ndarray) else k


def centred_grams(x, y):
    """(K_x, K_y, <K_x, K_y>_F) of two [tokens, features] activations of the same tokens, column-centred:
    the Gram matrices of the smaller side (``smaller_gram``) and their Frobenius inner product, computed as
    ||Y_cᵀ X_c||_F² on the d x d side (the same number). One centring and one Gram per activation serve both
    CKA and the effective ranks."""
    xc, yc = centred_for_gram(x), centred_for_gram(y)
    kx, ky = smaller_gram(xc), smaller_gram(yc)
    cross = float((kx * ky).sum()) if xc.shape[0] <= xc.shape[1] else float(((yc.T @ xc) ** 2).sum())
    return as_torch(kx), as_torch(ky), cross


def cka_from_grams(kx, ky, cross: float) -> float:
    """Linear CKA <K_x, K_y> / (||K_x||_F ||K_y||_F); NaN where a side has no variance."""
    den = float(kx.norm() * ky.norm())
    return cross / den if den > 0 else float("nan")


def linear_cka(x, y) -> float:
    """Linear CKA of two [tokens, features] activations of the same tokens (Kornblith et al. 2019,
    "Similarity of Neural Network Representations Revisited", eq. for linear kernels):
    ||Y_cᵀ X_c||_F² / (||X_cᵀ X_c||_F ||Y_cᵀ Y_c||_F), X_c, Y_c column-centred. Computed with the Gram
    matrices of whichever side is smaller (the same number). NaN where a side has no variance."""
    return cka_from_grams(*centred_grams(x, y))


def energy_rank(eigenvalues, energy: float = ENERGY) -> int:
    """The smallest k whose k largest (non-negative) values hold at least ``energy`` of their sum; 0 when all are 0."""
    lam = np.sort(np.clip(np.asarray(eigenvalues, dtype=np.float64), 0, None))[::-1]
    total = lam.sum()
    if total <= 0:
        return 0
    return int(np.searchsorted(np.cumsum(lam) / total, energy - 1e-12) + 1)


def gram_energy_rank(k, energy: float = ENERGY) -> int:
    """``energy_rank`` of the eigenvalues of a (centred) Gram matrix, n x n or d x d: the same non-zero spectrum."""
    import torch

    return energy_rank(torch.linalg.eigvalsh(k).cpu().numpy(), energy)


def effective_rank(x, energy: float = ENERGY) -> int:
    """99%-energy rank of the centred covariance of [tokens, features] ``x``: its eigenvalues are the
    squared singular values of the centred data (over n), read off the smaller Gram matrix."""
    return gram_energy_rank(as_torch(smaller_gram(centred_for_gram(x))), energy)


def mean_shift(x_a, x_b) -> float:
    """||mu_B - mu_A|| / ||mu_A|| of the per-token means; NaN when mu_A = 0."""
    mu_a, mu_b = x_a.double().mean(0), x_b.double().mean(0)
    den = float(mu_a.norm())
    return float((mu_b - mu_a).norm()) / den if den > 0 else float("nan")


def cosine(u, v) -> float:
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    den = np.linalg.norm(u) * np.linalg.norm(v)
    return float(u @ v / den) if den > 0 else float("nan")


def probe_auc(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> tuple[float, float]:
    """Mean and population std over folds of the ROC AUC of a standardised L2 logistic regression
    (C = 1, lbfgs) telling class 1 from class 0, StratifiedKFold(folds, shuffle=True, random_state=seed).
    The standardisation (sklearn's StandardScaler: mean 0, std 1, constant columns left unscaled) is
    fitted on each training fold only; the AUC is the Mann-Whitney statistic of the decision function."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    aucs = []
    # tiny BLAS calls: extra threads only contend (8 ms -> 0.3 ms per L-BFGS step); BLAS only: the probes may
    # run beside a forward pass, whose torch threads are not theirs to change
    with threadpool_limits(1, user_api="blas"):
        for train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y):
            mu, sd = x[train].mean(0), x[train].std(0)
            sd[sd < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mu), 1.0)] = 1.0  # as StandardScaler
            clf = LogisticRegression(C=PROBE["C"], solver=PROBE["solver"], max_iter=PROBE["max_iter"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit((x[train] - mu) / sd, y[train])
            aucs.append(roc_auc(y[test], clf.decision_function((x[test] - mu) / sd)))
    return float(np.mean(aucs)), float(np.std(aucs))


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC = P(score of a random positive > score of a random negative) + P(tie) / 2 (Mann-Whitney U)."""
    from scipy.stats import rankdata

    ranks = rankdata(score)
    pos = np.asarray(y) == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def top_right_subspace(dw, top_k: int):
    """Top right singular vectors of ΔW ([out, in], any float dtype) from the float64 eigh of ΔWᵀΔW:
    (V [in, k] float64, k, numerical rank), k = min(top_k, rank), rank = #{sigma_i > sigma_1 * max(out, in) * eps32};
    None when ΔW = 0."""
    import torch

    dw = dw.double()
    lam, vec = torch.linalg.eigh(dw.T @ dw)  # ascending
    sigma = lam.clamp(min=0).sqrt().flip(0)
    vec = vec.flip(1)
    if float(sigma[0]) == 0.0:
        return None
    rank = int((sigma > sigma[0] * max(dw.shape) * RANK_RTOL).sum())
    k = min(top_k, rank)
    return vec[:, :k].contiguous(), k, rank


def read_share_sums(x, v) -> tuple[float, float]:
    """(sum ||Vᵀx||², sum ||x||²) over the rows x of [tokens, in]: the energy inside span(V) and all of it."""
    x = x.float()
    return float((x @ v.to(x.device, x.dtype)).double().square().sum()), float(x.double().square().sum())


# ----------------------------------------------------------------------------------------------------
# ΔW: the top right singular subspaces, streamed from the two checkpoints


class one_thread_if_small:
    """Run small CPU linear algebra (hidden size <= 1024) on one torch thread and one BLAS thread (numpy's
    Grams): a 128 x 128 eigh on two threads of a busy machine took 0.5-1 s instead of milliseconds. Large or
    GPU work keeps its threads."""

    def __init__(self, device: str, side: int):
        self.active = device == "cpu" and side <= 1024

    def __enter__(self):
        import torch
        from threadpoolctl import threadpool_limits

        if self.active:
            self.before = torch.get_num_threads()
            torch.set_num_threads(1)
            self.blas = threadpool_limits(1)
        return self

    def __exit__(self, *exc):
        import torch

        if self.active:
            torch.set_num_threads(self.before)
            self.blas.restore_original_limits()
        return False


def weight_index(path: Path) -> dict[str, Path]:
    """{tensor name: file} over a model folder's safetensors files."""
    from safetensors import safe_open

    index = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, framework="pt") as h:
            for key in h.keys():
                index[key] = f
    return index


def read_tensor(index: dict, name: str):
    from safetensors import safe_open

    with safe_open(index[name], framework="pt") as h:
        return h.get_tensor(name)


def dw_directions(dir_a: Path, dir_b: Path, decoder_layers: set, top_k: int, device: str) -> dict:
    """{(decoder layer, component): (V [in, k] float32, k, rank, d_in) or None where ΔW = 0} for the
    layers asked for. Reads one matrix of each checkpoint at a time (the models are never loaded)."""
    import torch

    ia, ib = weight_index(dir_a), weight_index(dir_b)
    groups: dict[tuple[int, str], list[tuple[str, bool]]] = {}
    for name in sorted(ia):
        if not name.endswith(".weight"):
            continue
        hit = match_matrix(name[:-len(".weight")])
        if hit and hit[0] in decoder_layers:
            groups.setdefault(hit[:2], []).append((name, hit[2]))
    out = {}
    for key in sorted(groups):
        parts = []
        for name, transposed in groups[key]:
            if name not in ib:
                raise UsageError(f"model B has no weight {name} (model A has); the checkpoints do not match")
            wa, wb = read_tensor(ia, name), read_tensor(ib, name)
            if wa.shape != wb.shape:
                raise UsageError(f"weight {name} has shape {tuple(wa.shape)} in model A and {tuple(wb.shape)} in model B")
            dw = wb.to(device, torch.float64) - wa.to(device, torch.float64)
            if not torch.isfinite(dw).all():
                raise UsageError(f"weight {name} is not finite (NaN or inf) in model A or B")
            parts.append(dw.T if transposed else dw)
        dw = torch.cat(parts, 0)  # [sum of outs, in]: matrices that read the same input, stacked
        if not bool(dw.any()):  # unchanged (most layers of a LoRA or layer-targeted unlearning): no eigh
            out[key] = None
            continue
        with one_thread_if_small(device, dw.shape[1]):
            sub = top_right_subspace(dw, top_k)
        out[key] = None if sub is None else (sub[0].float(), sub[1], sub[2], dw.shape[1])
        del dw, parts
    return out


# ----------------------------------------------------------------------------------------------------
# The two passes


@dataclass
class GeometryPlan:
    """Everything both passes share: token ids, batches, which tokens count, the sample, the layers."""
    ids: dict            # split -> token-id lists
    lines: dict          # split -> line numbers of the texts
    pad_id: int
    batches: list
    layers: list         # hidden-state indices reported
    skip_first: int
    sample: dict         # split -> (text index array, position array)
    slot: dict           # split -> {(text, position): row of the sample}
    padding_side: str = "right"


@dataclass
class PassResult:
    features: dict = field(default_factory=dict)  # split -> [texts, layers, hidden] fp32 (mean over counted tokens)
    sample: dict = field(default_factory=dict)    # split -> [layers, sample tokens, hidden] in the model dtype
    reads: dict = field(default_factory=dict)     # (decoder layer, comp, split) -> [inside, total] energy


def forward_pass(model, plan: GeometryPlan, device: str, hidden: int, which: str, directions: dict | None = None):
    """One model over every batch: per-text features and the per-token sample of the reported layers,
    and (``directions``: model A) the read-share sums of ΔW's subspaces from forward pre-hooks."""
    import torch

    body = base_of(model)
    res = PassResult()
    n_l = len(plan.layers)
    for split in GEOMETRY_SPLITS:
        res.features[split] = torch.zeros((len(plan.ids[split]), n_l, hidden), dtype=torch.float32)
        res.sample[split] = torch.zeros((n_l, len(plan.sample[split][0]), hidden), dtype=model.dtype)
    state = {}
    hooks = []
    if directions:
        modules = {}
        for name, module in body.named_modules():
            hit = match_matrix(name)
            if hit and (hit[0], hit[1]) in directions and (hit[0], hit[1]) not in modules:
                modules[(hit[0], hit[1])] = module
        for key, d in directions.items():
            if d is None:
                continue
            if key not in modules:
                raise UsageError(f"model A has weights for decoder layer {key[0]}'s {key[1]} but no module that reads them")
            v = d[0].to(device)

            def hook(module, args, kwargs, key=key, v=v):
                x = args[0] if args else next(iter(kwargs.values()))
                if x.shape[-1] != v.shape[0]:
                    raise UsageError(f"decoder layer {key[0]}'s {key[1]} reads inputs of size {x.shape[-1]}, "
                                     f"its ΔW has {v.shape[0]} columns")
                # --device-map auto: the module's input is where the previous layer ran
                inside, total = read_share_sums(x[state["counted"].to(x.device)], v)
                acc = res.reads.setdefault((key[0], key[1], state["split"]), [0.0, 0.0])
                acc[0] += inside
                acc[1] += total

            hooks.append(modules[key].register_forward_pre_hook(hook, with_kwargs=True))
    try:
        for split, idx in progress(plan.batches, f"model {which}", unit="batch"):
            seqs = [plan.ids[split][i] for i in idx]
            lengths = [len(s) for s in seqs]
            ids, mask, pos, offsets = pad_texts(seqs, plan.pad_id, plan.padding_side)
            counted = counted_mask(lengths, offsets, ids.shape[1], plan.skip_first).to(device)
            state.update(counted=counted, split=split)
            with torch.inference_mode():
                out = body(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                           output_hidden_states=True, use_cache=False)
            # --device-map auto: a layer's output stays on that layer's device; bring every state to the input's
            hs = tuple(h.to(device) for h in out.hidden_states)
            # the sampled tokens of this batch: (row in batch, column) -> row of the sample
            rows, cols, dest = [], [], []
            slot = plan.slot[split]
            for r, (t, off) in enumerate(zip(idx, offsets)):
                for p in counted_positions(len(plan.ids[split][t]), plan.skip_first):
                    s = slot.get((t, p))
                    if s is not None:
                        rows.append(r), cols.append(off + p), dest.append(s)
            rows_t, cols_t = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)
            dest_t = torch.tensor(dest, dtype=torch.long)
            n_counted = counted.sum(1, keepdim=True).clamp(min=1).float()
            weights = counted.float().unsqueeze(-1)
            idx_t = torch.tensor(idx, dtype=torch.long)
            for li, layer in enumerate(plan.layers):
                h = hs[layer]
                feats = (h.float() * weights).sum(1) / n_counted  # [batch, hidden]
                if not torch.isfinite(feats).all():
                    raise UsageError(f"model {which}'s hidden state {layer} is not finite (NaN or inf) on {split} text: "
                                     "its weights hold NaN/inf or its dtype overflowed (try --dtype fp32); nothing was written")
                res.features[split][idx_t, li] = feats.cpu()
                if len(dest):
                    res.sample[split][li, dest_t] = h[rows_t.to(h.device), cols_t.to(h.device)].to("cpu", model.dtype)
            del out, hs
    finally:
        for h in hooks:
            h.remove()
    return res


# ----------------------------------------------------------------------------------------------------
# The table


def text_mask(plan: GeometryPlan) -> dict:
    """{split: bool per text}: the texts with at least one counted token (the others have no feature)."""
    return {s: np.array([len(counted_positions(len(x), plan.skip_first)) > 0 for x in plan.ids[s]])
            for s in GEOMETRY_SPLITS}


def text_features(res: PassResult, valid: dict, li: int) -> tuple[np.ndarray, np.ndarray]:
    """(forget, retain) per-text features of reported state ``li``, the texts without counted tokens
    (``valid``: text_mask) left out."""
    return (res.features["forget"][:, li].numpy()[valid["forget"]],
            res.features["retain"][:, li].numpy()[valid["retain"]])


def probe_inputs(plan: GeometryPlan, res: PassResult) -> tuple[np.ndarray, np.ndarray]:
    """(x [texts, states, hidden] float32, y [texts]): the per-text features of the texts with counted tokens,
    forget (y = 1) then retain (y = 0)."""
    valid = text_mask(plan)
    x = np.concatenate([res.features[s].numpy()[valid[s]] for s in GEOMETRY_SPLITS])
    return x, np.r_[np.ones(valid["forget"].sum(), dtype=int), np.zeros(valid["retain"].sum(), dtype=int)]


def probes_of(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> list[tuple[float, float]]:
    """probe_auc at every reported state of probe_inputs' x."""
    return [probe_auc(x[:, li], y, folds, seed) for li in range(x.shape[1])]


# The probe process: runs this file's probes_of on the features the tool hands it (a .npz path per line,
# one JSON line back per request), so that importing scikit-learn and the layers x folds L-BFGS fits
# (Python-bound) run on another core, beside the tool's next forward pass and its per-token statistics.
PROBE_PROCESS = r"""
import importlib.util, json, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the tool's to handle: it ends this process
import numpy as np
spec = importlib.util.spec_from_file_location("_activation_geometry", sys.argv[1])
tool = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # registered: its dataclasses look it up
spec.loader.exec_module(tool)
folds, seed = int(sys.argv[2]), int(sys.argv[3])
import sklearn.linear_model, sklearn.model_selection  # imported while the tool's forward pass runs
for line in sys.stdin:
    with np.load(line.rstrip("\n"), allow_pickle=False) as data:
        out = tool.probes_of(data["x"], data["y"], folds, seed)
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""


class ProbeProcess:
    """The probes in a second process (PROBE_PROCESS), started with the tool: ``submit`` hands it one model's
    features (through a temporary .npz) and returns at once; ``result`` waits for that model's
    {state index: (mean AUC, std)}. Its numbers are probes_of's, computed the same way in another
    interpreter. One BLAS thread, as probe_auc asks; SIGINT ignored (the tool stops it)."""

    def __init__(self, folds: int, seed: int):
        import subprocess

        self.tmp = tempfile.TemporaryDirectory(prefix="probes_")
        self.err = open(Path(self.tmp.name) / "stderr.txt", "w+b")
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-c", PROBE_PROCESS, str(Path(__file__).resolve()), str(folds),
                                      str(seed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                     env=env, text=True)
        self.sent = 0

    def submit(self, x: np.ndarray, y: np.ndarray) -> None:
        path = Path(self.tmp.name) / f"features_{self.sent}.npz"
        np.savez(path, x=x, y=y)
        self.sent += 1
        try:
            self.proc.stdin.write(f"{path}\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it has stopped: result() says why

    def result(self) -> dict:
        import json

        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.err.seek(0)
            lines = self.err.read().decode(errors="replace").strip().splitlines()
            raise UsageError(f"the probe process stopped (exit {self.proc.returncode}): "
                             f"{lines[-1] if lines else 'no message'}")
        return {li: tuple(v) for li, v in enumerate(json.loads(line))}

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self.err.close()
        self.tmp.cleanup()


def start_probes(plan: GeometryPlan, res: PassResult, folds: int, seed: int, worker: ProbeProcess | None):
    """The forget-vs-retain probes of one model at every reported state: a function that returns
    {state index: (mean AUC, std)}. With a ``worker`` (ProbeProcess) they are handed to it now and run
    beside what the tool does next (model B's forward pass, the per-token statistics); without, here."""
    x, y = probe_inputs(plan, res)
    if worker is not None:
        worker.submit(x, y)
        return worker.result
    done = dict(enumerate(probes_of(x, y, folds, seed)))
    return lambda: done


def geometry_rows(plan: GeometryPlan, res_a: PassResult, res_b: PassResult, reads: dict, directions: dict,
                  device: str, probes: dict) -> list[dict]:
    """One dict per reported hidden state: every column of activation_geometry.csv (None = empty).
    ``probes``: {"a": ..., "b": ...}, the functions start_probes returned."""
    import torch

    valid = text_mask(plan)
    rows = []
    for li, layer in enumerate(plan.layers):
        row: dict = {"layer": layer}
        for tag, res in (("a", res_a), ("b", res_b)):
            f, r = text_features(res, valid, li)
            row[f"centroid_cos_{tag}"] = cosine(f.astype(np.float64).mean(0), r.astype(np.float64).mean(0))
        for split in GEOMETRY_SPLITS:
            xa = res_a.sample[split][li].to(device)
            xb = res_b.sample[split][li].to(device)
            n = xa.shape[0]
            row[f"cka_{split}"] = row[f"eff_rank_{split}_a"] = row[f"eff_rank_{split}_b"] = None
            if n > 1:
                ka, kb, cross = centred_grams(xa, xb)
                row[f"cka_{split}"] = cka_from_grams(ka, kb, cross)
                row[f"eff_rank_{split}_a"], row[f"eff_rank_{split}_b"] = gram_energy_rank(ka), gram_energy_rank(kb)
                del ka, kb
            row[f"shift_{split}"] = mean_shift(xa, xb) if n else None
            del xa, xb
        j = layer - 1  # decoder layer j writes hidden state j + 1
        for comp in COMPONENTS:
            d = directions.get((j, comp))
            vals = dict.fromkeys(("forget", "retain", "selectivity", "random"))
            k = None
            if d is not None:
                inside = {s: reads.get((j, comp, s), (0.0, 0.0)) for s in GEOMETRY_SPLITS}
                share = {s: inside[s][0] / inside[s][1] if inside[s][1] > 0 else None for s in GEOMETRY_SPLITS}
                vals["forget"], vals["retain"] = share["forget"], share["retain"]
                if share["forget"] is not None and share["retain"]:
                    vals["selectivity"] = share["forget"] / share["retain"]
                k = d[1]
                vals["random"] = d[1] / d[3]
            for key, v in vals.items():
                row[f"dW_read_{key}_{comp}"] = v
            row[f"dW_k_{comp}"] = k
        row["tokens_forget"] = int(len(plan.sample["forget"][0]))
        row["tokens_retain"] = int(len(plan.sample["retain"][0]))
        rows.append(row)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    for tag in ("a", "b"):
        aucs = probes[tag]()
        for li, row in enumerate(rows):
            row[f"probe_auc_{tag}"], row[f"probe_auc_{tag}_std"] = aucs[li]
    return rows


def csv_columns() -> list[str]:
    cols = ["layer"]
    for tag in ("a", "b"):
        cols += [f"probe_auc_{tag}", f"probe_auc_{tag}_std"]
    cols += ["centroid_cos_a", "centroid_cos_b", "cka_forget", "cka_retain",
             "eff_rank_forget_a", "eff_rank_forget_b", "eff_rank_retain_a", "eff_rank_retain_b",
             "shift_forget", "shift_retain"]
    for comp in COMPONENTS:
        cols += [f"dW_read_forget_{comp}", f"dW_read_retain_{comp}", f"dW_read_selectivity_{comp}",
                 f"dW_read_random_{comp}", f"dW_k_{comp}"]
    return cols + ["tokens_forget", "tokens_retain"]


def csv_text(rows: list[dict]) -> str:
    """The CSV: floats with 10 significant digits (repr-stable), empty cells for None/NaN."""
    cols = csv_columns()

    def cell(v):
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return ""
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return str(int(v))
        return f"{float(v):.10g}"

    lines = [",".join(cols)] + [",".join(cell(r.get(c)) for c in cols) for r in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
# The run: flags → texts → models → output folder → tokens → plan → ΔW → pass A → pass B → table


@dataclass
class ModelPair:
    dir_a: Path
    dir_b: Path
    config_a: object
    config_b: object
    n_layers: int
    hidden: int
    device: str
    dtype: object


def check_geometry_flags(args) -> None:
    if args.max_memory and not args.device_map:
        raise UsageError("--max-memory needs --device-map auto")
    parse_max_memory(args.max_memory)          # a malformed --max-memory fails before any model is read
    for flag, value in (("--max-length", args.max_length), ("--batch-size", args.batch_size),
                        ("--max-tokens", args.max_tokens), ("--top-k", args.top_k)):
        if value <= 0:
            raise UsageError(f"{flag} must be positive, got {value}")
    if args.max_samples is not None and args.max_samples <= 0:
        raise UsageError(f"--max-samples must be positive, got {args.max_samples}")
    if args.skip_first < 0:
        raise UsageError(f"--skip-first must be 0 or more, got {args.skip_first}")
    if args.probe_folds < 2:
        raise UsageError(f"--probe-folds must be at least 2, got {args.probe_folds}")


def check_folds(counts: dict, folds: int, what: str = "texts") -> None:
    for split, n in counts.items():
        if n < folds:
            raise UsageError(f"{split} has {n} {what}, fewer than --probe-folds {folds}: every fold needs a "
                             f"{split} text; add texts or lower --probe-folds")


def inspect_pair(args) -> ModelPair:
    import torch

    dir_a = resolve_model_dir(args.model_a, args.trust_remote_code)
    dir_b = resolve_model_dir(args.model_b, args.trust_remote_code)
    config_a = load_text_config(dir_a, args.model_a, args.trust_remote_code)
    config_b = load_text_config(dir_b, args.model_b, args.trust_remote_code)
    n_layers, hidden = check_compatible(config_a, config_b)
    check_weights(dir_a, args.model_a)
    check_weights(dir_b, args.model_b)
    device = pick_device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[pick_dtype(args.dtype, device)]
    return ModelPair(dir_a, dir_b, config_a, config_b, n_layers, hidden, device, dtype)


def tokenize_splits(args, models: ModelPair, texts: dict) -> tuple[dict, int]:
    """Model A's token ids of every text; model B's tokenizer, if it has one, must agree on every text."""
    try:
        tok = load_tokenizer(models.dir_a, args.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - any failure here means "no usable tokenizer"
        raise UsageError(f"cannot load the tokenizer of model A ({args.model_a}): {first_line(e)}") from None
    max_len = args.max_length
    max_pos = getattr(models.config_a, "max_position_embeddings", None) or getattr(models.config_a, "n_positions", None)
    if max_pos and max_len > max_pos:
        print(f"note: --max-length {max_len} exceeds model A's {max_pos} positions; texts are cut at {max_pos}",
              file=sys.stderr)
        max_len = max_pos
    ids = {s: token_ids(tok, t, max_len) for s, t in texts.items()}
    if has_tokenizer(models.dir_b):
        try:
            tok_b = load_tokenizer(models.dir_b, args.trust_remote_code)
        except Exception as e:  # noqa: BLE001
            raise UsageError(f"cannot load the tokenizer of model B ({args.model_b}): {first_line(e)}") from None
        for s in texts:
            ids_b = token_ids(tok_b, texts[s], max_len)
            bad = [i for i, (x, y) in enumerate(zip(ids[s], ids_b)) if x != y]
            if bad:
                raise UsageError(f"model B's tokenizer encodes {len(bad)} of {len(ids[s])} {s} texts differently "
                                 f"from model A's (first: {s} text {bad[0] + 1}); the models would see different tokens")
    else:
        print("note: model B has no tokenizer of its own; it is fed model A's token ids", file=sys.stderr)
    vocab_b = getattr(models.config_b, "vocab_size", None)
    top = max(max((max(x) for x in ids[s] if x), default=0) for s in texts)
    if vocab_b is not None and top >= vocab_b:
        raise UsageError(f"model A's tokenizer produces token id {top}, beyond model B's vocabulary of {vocab_b}")
    return ids, (tok.pad_token_id if tok.pad_token_id is not None else 0)


def make_geometry_plan(args, ids: dict, lines: dict, pad_id: int, layers: list) -> GeometryPlan:
    lengths = {s: [len(x) for x in ids[s]] for s in GEOMETRY_SPLITS}
    counts = {s: sum(1 for n in lengths[s] if len(counted_positions(n, args.skip_first))) for s in GEOMETRY_SPLITS}
    dropped = {s: len(lengths[s]) - counts[s] for s in GEOMETRY_SPLITS}
    for s in GEOMETRY_SPLITS:
        if dropped[s]:
            print(f"note: {dropped[s]} {s} texts have no token after the first {args.skip_first} "
                  "(--skip-first); they enter no statistic", file=sys.stderr)
    check_folds(counts, args.probe_folds, f"texts with tokens after the first {args.skip_first} (--skip-first)")
    sample, slot = {}, {}
    for i, s in enumerate(GEOMETRY_SPLITS):
        t, p = choose_sample(lengths[s], args.skip_first, args.max_tokens, args.seed, i)
        sample[s] = (t, p)
        slot[s] = {(int(a), int(b)): r for r, (a, b) in enumerate(zip(t, p))}
    return GeometryPlan(ids=ids, lines=lines, pad_id=pad_id, batches=split_batches(lengths, args.batch_size), layers=layers,
                skip_first=args.skip_first, sample=sample, slot=slot, padding_side=args.padding_side)


def run(args) -> Path:
    t_start = time.perf_counter()
    if args.outdir is None:
        args.outdir = str(geometry_outdir(args))
    check_geometry_flags(args)
    lines, texts = {}, {}
    for s, path in (("forget", args.forget_text), ("retain", args.retain_text)):
        lines[s], texts[s] = read_split(path, args.max_samples)
    check_folds({s: len(texts[s]) for s in GEOMETRY_SPLITS}, args.probe_folds)
    models = inspect_pair(args)
    # the marker is this tool's CSV: collect_weight_geometry.py writes a geometry_report.yaml too
    outdir = check_outdir(args.outdir, GEOMETRY_CSV, owned=(GEOMETRY_CSV, REPORT_NAME, FEATURES_NAME),
                          inputs=(models.dir_a, models.dir_b))
    layers = parse_state_spec(args.layers, models.n_layers + 1)
    ids, pad_id = tokenize_splits(args, models, texts)
    plan = make_geometry_plan(args, ids, lines, pad_id, layers)
    stats_device = "cuda" if models.device == "cuda" else "cpu"  # float64 maths: not on MPS

    print("ΔW: top right singular subspaces of mlp_in and qkv", file=sys.stderr, flush=True)
    decoder_layers = {layer - 1 for layer in layers if layer >= 1}
    directions = dw_directions(models.dir_a, models.dir_b, decoder_layers, args.top_k, stats_device)
    if not directions:
        print("note: no mlp_in / qkv matrices of a known naming scheme (GPT-NeoX, Llama, GPT-2) were found; "
              "the dW_read_* columns stay empty", file=sys.stderr)
    timings = {}
    # the probes run in a second process, beside the passes and statistics, unless those use every CPU
    # thread (large hidden size on the CPU: it would take cores from them for nothing)
    concurrent = stats_device != "cpu" or one_thread_if_small(stats_device, models.hidden).active
    worker = ProbeProcess(args.probe_folds, args.seed) if concurrent else None
    try:
        t0 = time.perf_counter()
        gc.freeze()  # the imports' objects are never garbage: release_memory's collection then scans the models only
        try:
            model = load_geometry_model(models.dir_a, args.model_a, models.dtype, models.device, args.trust_remote_code,
                                        big=args)
            res_a = forward_pass(model, plan, models.device, models.hidden, "A", directions)
            del model  # one model in memory at a time
            release_memory()
            probes = {"a": start_probes(plan, res_a, args.probe_folds, args.seed, worker)}
            timings["pass_a_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            model = load_geometry_model(models.dir_b, args.model_b, models.dtype, models.device, args.trust_remote_code,
                                        big=args)
            res_b = forward_pass(model, plan, models.device, models.hidden, "B")
            del model
            release_memory()
            probes["b"] = start_probes(plan, res_b, args.probe_folds, args.seed, worker)
            timings["pass_b_s"] = time.perf_counter() - t0
        finally:
            gc.unfreeze()
        reads = res_a.reads
        t0 = time.perf_counter()
        print("statistics: probes, CKA, effective ranks", file=sys.stderr, flush=True)
        with one_thread_if_small(stats_device, models.hidden):
            rows = geometry_rows(plan, res_a, res_b, reads, directions, stats_device, probes)
    finally:
        if worker is not None:
            worker.close()
    timings["statistics_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    files = {outdir / GEOMETRY_CSV: csv_text(rows),
             outdir / REPORT_NAME: report_text(args, models, plan, directions, timings)}
    if args.save_features:
        files[outdir / FEATURES_NAME] = features_bytes(plan, res_a, res_b)
    write_atomically(files)
    if not args.save_features and (outdir / FEATURES_NAME).exists():
        (outdir / FEATURES_NAME).unlink()  # an earlier run's features would not match this CSV
    return outdir / GEOMETRY_CSV


def features_bytes(plan: GeometryPlan, res_a: PassResult, res_b: PassResult) -> bytes:
    """The per-text features, ``a.forget`` [texts, layers, hidden] etc., the reported ``layers`` and the
    texts' line numbers ``forget_line`` / ``retain_line`` (texts without counted tokens are left out)."""
    import torch
    from safetensors.torch import save

    tensors = {"layers": torch.tensor(plan.layers, dtype=torch.long)}
    valid = text_mask(plan)
    for s in GEOMETRY_SPLITS:
        keep = torch.from_numpy(valid[s])
        tensors[f"{s}_line"] = torch.tensor(plan.lines[s], dtype=torch.long)[keep]
        tensors[f"a.{s}"] = res_a.features[s][keep].contiguous()
        tensors[f"b.{s}"] = res_b.features[s][keep].contiguous()
    return save(tensors, metadata={"layer_numbering": "hidden_states index: 0 = embeddings, l = output of decoder layer l-1",
                                   "feature": f"mean over each text's real tokens after the first {plan.skip_first}"})


def package_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "scikit-learn", "numpy", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def report_text(args, models: ModelPair, plan: GeometryPlan, directions: dict, timings: dict) -> str:
    import yaml

    def model_entry(spec, path):
        cfg = path / "config.json"
        return {"model": spec, "path": str(path), "config_sha256": sha256_file(cfg) if cfg.is_file() else None}

    data = {s: {"path": str(p), "sha256": sha256_file(p), "texts": len(plan.ids[s]),
                "texts_counted": sum(1 for x in plan.ids[s] if len(counted_positions(len(x), plan.skip_first))),
                "tokens_counted": sum(len(counted_positions(len(x), plan.skip_first)) for x in plan.ids[s]),
                "tokens_sampled": int(len(plan.sample[s][0]))}
            for s, p in (("forget", args.forget_text), ("retain", args.retain_text))}
    changed = {f"{j}.{c}": {"k": d[1], "rank": d[2], "d_in": d[3]} if d else None
               for (j, c), d in sorted(directions.items())}
    report = {
        "ModelPair": {"a": model_entry(args.model_a, models.dir_a), "b": model_entry(args.model_b, models.dir_b)},
        "Data": data,
        "Settings": {"layers": plan.layers, "max_samples": args.max_samples, "max_length": args.max_length,
                     "batch_size": args.batch_size, "padding_side": args.padding_side, "max_tokens": args.max_tokens,
                     "skip_first": args.skip_first, "probe_folds": args.probe_folds, "top_k": args.top_k,
                     "seed": args.seed, "device": models.device, "device_map": args.device_map, "dtype": str(models.dtype).split(".")[-1]},
        "Probe": {**PROBE, "folds": args.probe_folds, "random_state": args.seed},
        "Definitions": {
            "layer": "hidden_states index: 0 = embeddings, l = output of decoder layer l-1 (last: after the final norm)",
            "counted_tokens": f"real (non-padding) tokens after each text's first {args.skip_first}",
            "effective_rank": f"smallest k with >= {ENERGY:.0%} of the centred covariance's trace in its top k eigenvalues",
            "dW_read": "decoder layer j in row j+1; share of model A's input energy in the top-k right singular "
                       "subspace of ΔW (k = min(top_k, numerical rank), rank tolerance sigma_1 * max(shape) * eps32)",
        },
        "Delta_W": changed,
        "Timings_s": {k: round(v, 3) for k, v in timings.items()},
        "Versions": package_versions(),
    }
    return yaml.safe_dump(report, sort_keys=False, allow_unicode=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-a", required=True, help="base model: local directory or hub ID")
    p.add_argument("--model-b", required=True, help="model compared with it: local directory or hub ID")
    p.add_argument("--forget-text", "--forget-data", default="data/forget.txt", help="forget texts, one per line")
    p.add_argument("--retain-text", "--retain-data", default="data/retain.txt", help="retain texts, one per line")
    p.add_argument("--outdir", default=None,
                   help="where the outputs go (default: outputs/<A>_vs_<B>/activation_geometry)")
    p.add_argument("--layers", default="all", help="hidden-state indices to report: all, or e.g. 0,4-6")
    p.add_argument("--max-samples", type=int, default=256, help="use only the first N texts of each file")
    p.add_argument("--max-length", type=int, default=512, help="tokens per text; longer texts are truncated")
    p.add_argument("--batch-size", type=int, default=8, help="texts per forward pass")
    p.add_argument("--max-tokens", type=int, default=8192, help="per-token sample per split (CKA, rank, shift)")
    p.add_argument("--skip-first", type=int, default=1,
                   help="leave out the first N positions of every text (attention sinks)")
    p.add_argument("--probe-folds", type=int, default=5, help="cross-validation folds of the probe")
    p.add_argument("--top-k", type=int, default=20, help="dimension of ΔW's top right singular subspace")
    p.add_argument("--seed", type=int, default=0, help="seed of the token sample and the probe's folds")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"], help="auto: CUDA > MPS > CPU")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto: bf16 on CUDA, fp16 on MPS, fp32 on CPU")
    p.add_argument("--padding-side", default="right", choices=["right", "left"],
                   help="how batches are padded (the numbers do not depend on it)")
    p.add_argument("--save-features", action="store_true", help=f"also write the per-text features to {FEATURES_NAME}")
    p.add_argument("--trust-remote-code", action="store_true", help="allow models with custom code (off: safe)")
    p.add_argument("--device-map", default=None, choices=["auto"],
                   help="auto: spread a model that does not fit --device over the GPUs, the CPU and disk "
                        "(accelerate's big-model inference; same numbers, slower; docs/scale.md)")
    p.add_argument("--max-memory", default=None,
                   help="with --device-map auto: memory per device, e.g. 0=20GiB,cpu=60GiB (default: what is free)")
    p.add_argument("--offload-folder", default=None,
                   help="with --device-map auto: where layers beyond --max-memory go (default: a temporary folder)")
    return p


def geometry_outdir(args) -> Path:
    """outputs/<A>_vs_<B>/activation_geometry, the folder study.sh's comparison_name gives the pair."""
    return Path("outputs") / f"{model_name(args.model_a)}_vs_{model_name(args.model_b)}" / "activation_geometry"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> int:
        out = run(args)
        print(f"wrote {out}", file=sys.stderr)
        return 0

    return run_tool(work, kept="nothing was written",
                    oom_hint="lower --batch-size, --max-length or --max-tokens")


if __name__ == "__main__":
    sys.exit(main())
