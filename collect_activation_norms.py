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
#     "tqdm>=4.66",
# ]
# ///
"""Per-layer activation norms of two models, and the norms of their difference, on forget and retain text.

Weight diffs (collect_param_stats.py) say *where* a model changed; activations say whether the change
does what unlearning claims: the representations of hazardous (forget) text should move a lot and
those of general (retain) text hardly at all. For every hidden state l = 0..N (transformers'
``hidden_states[l]``: 0 = the embeddings, l = the output of decoder layer l-1, N = the output of the
last layer *after* the final norm) and each split, this script reports token-weighted means over all
real (non-padding) tokens of

    ||h_A||_1, ||h_A||_2, ||h_B||_1, ||h_B||_2, ||h_B - h_A||_1, ||h_B - h_A||_2, cos(h_A, h_B)

where h_A and h_B are the two models' hidden states at the same token of the same input.

Memory model: the two models are never in memory together (7B pairs on one GPU). Pass 1 runs model A
over all texts and writes the hidden states of real tokens, every layer, to a temporary disk cache
(one safetensors file per batch); model A is freed; pass 2 runs model B over the same token ids in the
same batches and reads the cache back batch by batch. The cache is deleted on success, on error and
on Ctrl-C; one left by a killed run (SIGKILL) is removed by the next run. NaN or inf activations stop
the run with an error (no CSV with blank cells). Only the base model (no LM head) is run: the logits are not needed.

Usage:
    uv run --script collect_activation_norms.py --model-a A --model-b B --outdir outputs/A_vs_B/activation_stats
"""
from __future__ import annotations

import argparse
import functools
import gc
import os
import re
import shutil
import signal
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


def pad_right(seqs: list[list[int]], pad_id: int):
    """``input_ids`` and ``attention_mask`` (1 = real token) of a right-padded batch."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


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


# The statistics accumulated per (split, hidden-state index); the CSV columns are their means.
SUM_KEYS = ("a_l1", "a_l2", "b_l1", "b_l2", "dh_l1", "dh_l2", "cos")
CSV_COLUMNS = ["layer", "split", "model_a_norm_L1", "model_a_norm_L2", "model_b_norm_L1", "model_b_norm_L2",
               "mean_dh_L1", "mean_dh_L2", "mean_cos_sim", "n_tokens"]
CSV_NAME = "activation_stats.csv"
FP16_MAX = 65504.0  # largest finite float16; anything beyond rounds to inf


# ----------------------------------------------------------------------------------------------------
# Inputs


def read_texts(path: str | os.PathLike, max_samples: int | None = None) -> list[str]:
    """One sample per line (``read_lines``: blank lines skipped), the first ``max_samples`` of them if given."""
    try:
        texts = read_lines(path)
    except UsageError as e:
        raise UsageError(f"text file {e}") from None
    return texts[:max_samples] if max_samples else texts


# ----------------------------------------------------------------------------------------------------
# Batching


def hidden_states(body, input_ids, attention_mask):
    """All N+1 hidden states ([batch, seq, hidden] each) of one batch, as ``output_hidden_states=True``."""
    import torch

    with torch.inference_mode():
        out = body(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
    # --device-map auto: a layer's output stays on that layer's device; bring every state to the input's
    return tuple(h.to(input_ids.device) for h in out.hidden_states)


# ----------------------------------------------------------------------------------------------------
# The math


def norm_sums(h):
    """Sums over tokens of ||h||_1 and ||h||_2 for ``h`` of shape [tokens, hidden] (fp32)."""
    return h.abs().sum(-1).sum(), h.norm(dim=-1).sum()


def diff_sums(h_a, h_b):
    """Sums over tokens of ||h_B||_1, ||h_B||_2, ||dh||_1, ||dh||_2 and cos(h_A, h_B), dh = h_B - h_A.

    Cosine similarity is what circuit breakers (Zou et al. 2024, "Improving Alignment and Robustness
    with Circuit Breakers") push towards zero on harmful text, so it is reported next to the norms.
    """
    import torch

    dh = h_b - h_a
    cos = torch.nn.functional.cosine_similarity(h_a, h_b, dim=-1, eps=1e-12)
    return (*norm_sums(h_b), *norm_sums(dh), cos.sum())


def to_cache_dtype(h, cache_dtype):
    """``h`` in the cache dtype, or in fp32 if it holds values beyond fp16's range (returns tensor, fell_back).

    Massive activations (Sun et al. 2024, "Massive Activations in Large Language Models") reach 1e4-1e5
    in some dimensions; cast to fp16 they would silently become inf.
    """
    import torch

    if cache_dtype == torch.float16 and h.dtype != torch.float16 and h.numel() and bool(h.abs().amax() > FP16_MAX):
        return h.to(torch.float32), True
    return h.to(cache_dtype), False


def cache_bytes(n_tokens: int, n_states: int, hidden: int, itemsize: int) -> int:
    """Size of the cache: every real token's hidden state at every layer."""
    return n_tokens * n_states * hidden * itemsize


def new_sums(n_states: int) -> dict:
    return {k: np.zeros(n_states, dtype=np.float64) for k in SUM_KEYS} | {"n": 0}


def stats_table(sums: dict, splits: list[str]):
    """The CSV rows: token-weighted means (sums / number of real tokens), one row per layer and split."""
    import pandas as pd

    rows = []
    n_states = len(sums[splits[0]]["a_l1"])
    for layer in range(n_states):
        for split in splits:
            s, n = sums[split], max(sums[split]["n"], 1)
            rows.append({"layer": layer, "split": split,
                         "model_a_norm_L1": s["a_l1"][layer] / n, "model_a_norm_L2": s["a_l2"][layer] / n,
                         "model_b_norm_L1": s["b_l1"][layer] / n, "model_b_norm_L2": s["b_l2"][layer] / n,
                         "mean_dh_L1": s["dh_l1"][layer] / n, "mean_dh_L2": s["dh_l2"][layer] / n,
                         "mean_cos_sim": s["cos"][layer] / n, "n_tokens": s["n"]})
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


# ----------------------------------------------------------------------------------------------------
# The two passes




def load_compared_model(path: Path, name: str, dtype, device: str, trust_remote_code: bool, big=None):
    from safetensors import SafetensorError

    kwargs = {}
    if big is not None and getattr(big, "device_map", None):
        kwargs = {"device_map": big.device_map, "max_memory": parse_max_memory(big.max_memory),
                  "offload_folder": big.offload_folder}
    try:
        # device_map puts the weights straight onto the device (no detour through CPU memory)
        model = from_pretrained_big(path, dtype=dtype, device=device, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, SafetensorError) as e:
        raise UsageError(f"cannot load model {name} as safetensors: {first_line(e)}") from None
    return model.eval()


def cache_file(cache_dir: Path, batch: int) -> str:
    """One safetensors file per batch, tensors ``layer_0`` ... ``layer_N`` of shape [real tokens, hidden]."""
    return str(cache_dir / f"batch_{batch:06d}.safetensors")


def pass_one(body, batches, device, cache_dir: Path, cache_dtype, sums, n_states, progress):
    """Model A: accumulate its norms and write the hidden states of real tokens to the cache."""
    import torch
    from safetensors.torch import save_file

    fell_back: set[int] = set()
    writer = ThreadPoolExecutor(max_workers=1)  # disk writes overlap the next forward pass
    pending = None
    try:
        for b, (split, seqs, pad_id) in enumerate(progress(batches, "pass 1/2: model A")):
            ids, mask = pad_right(seqs, pad_id)
            hs = hidden_states(body, ids.to(device), mask.to(device))
            real = mask.to(device).bool()
            if len(hs) != n_states:
                raise UsageError(f"model A returned {len(hs)} hidden states, its config promises {n_states}")
            tensors, per_layer = {}, []
            for layer, h in enumerate(hs):
                h = h[real]  # [tokens, hidden]: real tokens only, row-major over (text, position)
                per_layer.append(torch.stack(norm_sums(h.float())))
                h_cached, fb = to_cache_dtype(h, cache_dtype)
                if fb and layer not in fell_back:
                    fell_back.add(layer)
                    print(f"warning: hidden state {layer} of model A exceeds the fp16 range (max |h| = "
                          f"{h.abs().amax().item():.3g}); cached in fp32 wherever that happens", file=sys.stderr)
                tensors[f"layer_{layer}"] = h_cached.contiguous().cpu()
            acc = torch.stack(per_layer).to("cpu", torch.float64).numpy()
            check_finite(acc, "A", split)
            sums[split]["a_l1"] += acc[:, 0]
            sums[split]["a_l2"] += acc[:, 1]
            sums[split]["n"] += int(mask.sum())
            if pending is not None:
                cache_written(pending, cache_dir)
            pending = writer.submit(save_file, tensors, cache_file(cache_dir, b))
            del hs, tensors
        if pending is not None:
            cache_written(pending, cache_dir)
    finally:
        writer.shutdown(wait=True, cancel_futures=True)


def pass_two(body, batches, device, cache_dir: Path, sums, n_states, progress):
    """Model B: read model A's cached hidden states batch by batch and accumulate B's norms and dh."""
    import torch
    from safetensors.torch import load_file

    reader = ThreadPoolExecutor(max_workers=1)  # the next batch is read while this one is computed

    try:
        nxt = reader.submit(load_file, cache_file(cache_dir, 0)) if batches else None
        for b, (split, seqs, pad_id) in enumerate(progress(batches, "pass 2/2: model B")):
            cached = nxt.result()
            nxt = reader.submit(load_file, cache_file(cache_dir, b + 1)) if b + 1 < len(batches) else None
            ids, mask = pad_right(seqs, pad_id)
            hs = hidden_states(body, ids.to(device), mask.to(device))
            real = mask.to(device).bool()
            if len(hs) != n_states:
                raise UsageError(f"model B returned {len(hs)} hidden states, model A {n_states}")
            per_layer = []
            for layer, h in enumerate(hs):
                h_b = h[real].float()
                h_a = cached[f"layer_{layer}"].to(device).float()
                per_layer.append(torch.stack(diff_sums(h_a, h_b)))
            acc = torch.stack(per_layer).to("cpu", torch.float64).numpy()
            check_finite(acc, "B", split)
            for j, key in enumerate(("b_l1", "b_l2", "dh_l1", "dh_l2", "cos")):
                sums[split][key] += acc[:, j]
            del hs, cached
    finally:
        reader.shutdown(wait=True, cancel_futures=True)


def check_finite(acc, model: str, split: str) -> None:
    """A NaN or inf in a batch's sums ([hidden state, statistic]) would make every mean of that
    hidden state NaN (a blank CSV cell): stop with the first hidden state where it happens."""
    bad = ~np.isfinite(acc).all(axis=1)
    if bad.any():
        raise UsageError(f"model {model}'s hidden state {int(np.argmax(bad))} is not finite (NaN or inf) on {split} "
                         "text: its weights hold NaN/inf, or its dtype overflowed (try --dtype fp32); "
                         "no CSV was written")


def cache_written(future, cache_dir: Path) -> None:
    """Wait for a cache file; a full disk (safetensors' I/O error) becomes one sentence."""
    from safetensors import SafetensorError

    try:
        future.result()
    except (OSError, SafetensorError) as e:
        raise UsageError(f"cannot write the activation cache in {cache_dir.parent} ({first_line(e)}); pass "
                         "--cache-dir on a disk with more room, or --max-samples / --cache-fp16 to cache less") from None


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1000


# ----------------------------------------------------------------------------------------------------
# The run, in phases: flags → texts → output folder → models → tokens → batches → cache → passes → CSV


@dataclass
class Models:
    """The two resolved model folders and what their configs say, checked before anything runs."""
    dir_a: Path
    dir_b: Path
    config_a: object
    config_b: object
    n_states: int  # hidden states per token: embeddings + one per decoder layer
    hidden: int
    device: str
    dtype: object  # torch dtype the models run in


def run(args) -> Path:
    """Check everything that can be checked, run the two passes, write the CSV; returns its path."""
    check_flags(args)
    if args.max_memory and not args.device_map:
        raise UsageError("--max-memory needs --device-map auto")
    parse_max_memory(args.max_memory)          # a malformed --max-memory fails before any model is read
    texts = {"forget": read_texts(args.forget_text, args.max_samples),
             "retain": read_texts(args.retain_text, args.max_samples)}
    models = inspect_models(args)                         # configs agree, weights readable, device, dtype
    out = check_outdir(args.outdir, CSV_NAME, owned=(CSV_NAME,), inputs=(models.dir_a, models.dir_b)) / CSV_NAME
    ids, pad_id = tokenize_texts(args, models, texts)     # model A's ids; B's tokenizer must agree
    batches = make_batches(ids, pad_id, args.batch_size)
    cache_root, cache_dtype = plan_cache(args, models, ids)   # room on disk, leftovers of killed runs
    sums = two_passes(args, models, batches, cache_root, cache_dtype, list(texts))
    table = stats_table(sums, list(texts))
    write_atomically({out: lambda p: table.to_csv(p, index=False)})  # 0644; a failure keeps the old file
    return out


def check_flags(args) -> None:
    if args.max_length <= 0:
        raise UsageError(f"--max-length must be positive, got {args.max_length}")
    if args.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    if args.max_samples is not None and args.max_samples <= 0:
        raise UsageError(f"--max-samples must be positive, got {args.max_samples}")


def inspect_models(args) -> Models:
    """Resolve both models (a hub ID once, to its local snapshot), compare their configs and open
    every weight file's header: a damaged model fails here, before pass 1, not after it."""
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
    return Models(dir_a, dir_b, config_a, config_b, n_layers + 1, hidden, device, dtype)


def tokenize_texts(args, models: Models, texts: dict) -> tuple[dict, int]:
    """Model A's token ids of every text (B is fed the same ids; a tokenizer of B's own must agree on
    every text, and B's vocabulary must hold every id). Returns ({split: ids}, pad id)."""
    try:
        tok = load_tokenizer(models.dir_a, args.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - any failure here means "no usable tokenizer"
        raise UsageError(f"cannot load the tokenizer of model A ({args.model_a}): {first_line(e)}") from None
    max_len = args.max_length
    max_pos = getattr(models.config_a, "max_position_embeddings", None)
    if max_pos and max_len > max_pos:
        print(f"note: --max-length {max_len} exceeds model A's {max_pos} positions; texts are cut at {max_pos}",
              file=sys.stderr)
        max_len = max_pos
    ids = {s: token_ids(tok, t, max_len) for s, t in texts.items()}
    tok_b = None
    if has_tokenizer(models.dir_b):
        try:
            tok_b = load_tokenizer(models.dir_b, args.trust_remote_code)
        except Exception as e:  # noqa: BLE001
            raise UsageError(f"cannot load the tokenizer of model B ({args.model_b}): "
                             f"{first_line(e)}") from None
    else:
        print("note: model B has no tokenizer of its own; it is fed model A's token ids", file=sys.stderr)
    if tok_b is not None:
        for s in texts:
            ids_b = token_ids(tok_b, texts[s], max_len)
            bad = [i for i, (x, y) in enumerate(zip(ids[s], ids_b)) if x != y]
            if bad:
                raise UsageError(f"model B's tokenizer encodes {len(bad)} of {len(ids[s])} {s} texts differently "
                                 f"from model A's (first: {s} text {bad[0] + 1}); the models would see different tokens")
    vocab_b = getattr(models.config_b, "vocab_size", None)
    top = max(max((max(x) for x in ids[s] if x), default=0) for s in texts)
    if vocab_b is not None and top >= vocab_b:
        raise UsageError(f"model A's tokenizer produces token id {top}, beyond model B's vocabulary of {vocab_b}")
    return ids, (tok.pad_token_id if tok.pad_token_id is not None else 0)


def make_batches(ids: dict, pad_id: int, batch_size: int) -> list:
    """[(split, token-id lists, pad id), ...]: length-sorted batches of each split (empty texts dropped)."""
    batches = []
    for s, split_ids in ids.items():
        seqs = [x for x in split_ids if x]
        for idx in length_sorted_batches([len(x) for x in seqs], batch_size):
            batches.append((s, [seqs[i] for i in idx], pad_id))
    return batches


def plan_cache(args, models: Models, ids: dict):
    """The cache's dtype and folder, after removing caches of killed runs there; refuses when the
    disk cannot hold it. Returns (cache root, cache dtype).

    Model A's dtype is lossless (bf16 on GPU: half of fp32 at no cost in accuracy); --cache-fp16
    halves an fp32 model's cache at the price of fp16 rounding."""
    import torch

    cache_root = Path(args.cache_dir or tempfile.gettempdir())
    if not cache_root.is_dir():
        raise UsageError(f"--cache-dir {cache_root} is not a directory")
    dtype = models.dtype
    cache_dtype = torch.float16 if (args.cache_fp16 and dtype == torch.float32) else dtype
    if args.cache_fp16:
        if dtype == torch.float32:
            print("warning: --cache-fp16 rounds model A's hidden states to fp16: mean_dh_* and mean_cos_sim "
                  "change slightly (the model_*_norm_* columns do not); leave it off for final numbers",
                  file=sys.stderr)
        else:
            print(f"note: model A runs in {str(dtype).split('.')[-1]}, so the cache is already 16-bit and "
                  "lossless; --cache-fp16 changes nothing", file=sys.stderr)
    clear_stale_caches(cache_root)
    n_tokens = sum(len(x) for split_ids in ids.values() for x in split_ids)
    itemsize = torch.empty((), dtype=cache_dtype).element_size()
    need = cache_bytes(n_tokens, models.n_states, models.hidden, itemsize)
    free_bytes = shutil.disk_usage(cache_root).free
    shape = f"{n_tokens:,} tokens x {models.n_states} hidden states x {models.hidden} x {itemsize} bytes"
    if need > free_bytes:
        raise UsageError(f"the activation cache needs {human(need)} ({shape}) but {cache_root} has "
                         f"{human(free_bytes)} free; pass --cache-dir on a bigger disk, --max-samples / "
                         "--max-length to cache less, or --cache-fp16")
    print(f"cache: {shape} = {human(need)} ({str(cache_dtype).split('.')[-1]}) under {cache_root} "
          f"({human(free_bytes)} free)", file=sys.stderr)
    return cache_root, cache_dtype


CACHE_PREFIX = "activation_cache_"
CACHE_OWNER = "owner.txt"  # "<host> <pid>" of the run that made the cache


def clear_stale_caches(cache_root: Path) -> None:
    """Remove caches whose run (on this host) is gone, e.g. killed with SIGKILL; name the others."""
    import socket

    for d in sorted(cache_root.glob(f"{CACHE_PREFIX}*")):
        if not d.is_dir():
            continue
        try:
            host, pid = (d / CACHE_OWNER).read_text().split()
            pid = int(pid)
        except (OSError, ValueError):
            host, pid = None, None
        if host == socket.gethostname() and not pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)
            print(f"note: removed {d}, the activation cache of an earlier run (pid {pid}) that was killed",
                  file=sys.stderr)
        else:
            who = f"run {pid} on {host}" if host else "an earlier run"
            print(f"note: {d} ({human(folder_bytes(d))}) is the activation cache of {who}; "
                  "remove it if no run is using it", file=sys.stderr)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def two_passes(args, models: Models, batches: list, cache_root: Path, cache_dtype, splits: list) -> dict:
    """Pass 1: model A, its hidden states to the cache; pass 2: model B against the cache. One model
    in memory at a time; the cache is removed whatever happens. Returns the sums per split."""
    import socket

    sums = {s: new_sums(models.n_states) for s in splits}
    cache_dir = Path(tempfile.mkdtemp(prefix=CACHE_PREFIX, dir=cache_root))
    try:
        (cache_dir / CACHE_OWNER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        model = load_compared_model(models.dir_a, args.model_a, models.dtype, models.device, args.trust_remote_code, args)
        pass_one(base_of(model), batches, models.device, cache_dir, cache_dtype, sums, models.n_states, progress)
        del model  # model A is gone before model B is loaded: one model in memory at a time
        release_memory()
        model = load_compared_model(models.dir_b, args.model_b, models.dtype, models.device, args.trust_remote_code, args)
        pass_two(base_of(model), batches, models.device, cache_dir, sums, models.n_states, progress)
        del model
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return sums


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-a", required=True, help="base model: local directory or hub ID")
    p.add_argument("--model-b", required=True, help="model compared with it: local directory or hub ID")
    p.add_argument("--forget-text", "--forget-data", default="data/forget.txt",
                   help="forget texts, one per line (default: %(default)s)")
    p.add_argument("--retain-text", "--retain-data", default="data/retain.txt",
                   help="retain texts, one per line (default: %(default)s)")
    p.add_argument("--outdir", required=True, help="where activation_stats.csv goes")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"],
                   help="default auto: CUDA > MPS > CPU")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="model dtype; default auto: bf16 on CUDA, fp16 on MPS, fp32 on CPU")
    p.add_argument("--batch-size", type=int, default=8, help="texts per forward pass (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per text, longer texts are truncated (default: %(default)s)")
    p.add_argument("--max-samples", type=int, default=None, help="use only the first N texts of each file (default: all)")
    p.add_argument("--cache-fp16", action="store_true",
                   help="cache an fp32 model's hidden states in fp16 (half the disk; changes numbers slightly)")
    p.add_argument("--cache-dir", default=None, help="parent of the temporary cache directory (default: $TMPDIR)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow models with custom code (off: safe)")
    p.add_argument("--device-map", default=None, choices=["auto"],
                   help="auto: spread a model that does not fit --device over the GPUs, the CPU and disk "
                        "(accelerate's big-model inference; same numbers, slower; docs/scale.md)")
    p.add_argument("--max-memory", default=None,
                   help="with --device-map auto: memory per device, e.g. 0=20GiB,cpu=60GiB (default: what is free)")
    p.add_argument("--offload-folder", default=None,
                   help="with --device-map auto: where layers beyond --max-memory go (default: a temporary folder)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def work() -> None:
        out = run(args)
        print(f"wrote {out}", file=sys.stderr)

    return run_tool(work, kept="the activation cache was removed and no CSV was written",
                    oom_hint="lower --batch-size or --max-length")


if __name__ == "__main__":
    sys.exit(main())
