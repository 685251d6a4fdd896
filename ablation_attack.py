# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "torch>=2.4",
#     "transformers>=5.0,<6",
#     "tokenizers>=0.21",
#     "safetensors>=0.4",
#     "huggingface_hub>=0.30",
#     "accelerate>=1.0",
#     "lm-eval>=0.4.5,<0.5",
#     "tqdm>=4.66",
#     "pyyaml>=6.0",
# ]
# ///
"""Can it come back without training? Three training-free attacks on every model of a study.

    uv run --script ablation_attack.py --reference ORIGINAL --model M [--model M2 ...] \\
        [--attacks direction,delta_rank,quantize] ...

Every attacked model is measured before and after each attack with the evaluation tool's
definitions (evaluate_unlearning.py): ``forget_nll``/``retain_nll`` = mean over the lines of a test
file of the line's mean token NLL of tokens 2..T (fp32 log-softmax, right padding masked), and
``mcq_forget_acc``/``mcq_retain_acc`` = lm-evaluation-harness accuracy on the local MCQ sets
(context "{question}\\nAnswer:", continuation " {choice}").

  direction   (Arditi et al. 2024; Łucki et al. 2024) per residual-stream position l (l = 0 the
              embedding output, l = k+1 the output of decoder layer k), the difference of mean
              activations over counted tokens (padding and the first --skip-first positions of a
              line excluded): forget minus retain text in the attacked model (``contrast``: what an
              attacker has) or the attacked model minus the reference on forget text
              (``reference``). For each candidate l, r̂ = r_l/‖r_l‖ is projected out,
              h <- h - (h·r̂) r̂, at every position of every line at the embedding output (the input
              of decoder layer 0) and at the output of every decoder layer (forward hooks), so no
              residual-stream state between two blocks keeps a component along r̂. Inside a block
              of a sequential architecture (Llama, GPT-2, GPT-NeoX without parallel residual) the
              state between attention and MLP is not projected; with GPT-NeoX's parallel residual
              (the study's models) this is exactly Arditi et al.'s ablation. The best candidate is
              the one with the lowest score on the direction data (never the test files): forget
              NLL change + positive part of the retain NLL change. Every candidate is reported.
  delta_rank  (a diagnostic: needs the reference's weights) W' = W_ref + ΔW - (top-r SVD part of
              ΔW) = W - U_r S_r V_rᵀ for every 2-D weight that differs from the reference (SVD in
              float64), for each r of --ranks: r = 0 is the model, r >= rank(ΔW) the reference
              (1-D tensors, biases and norms, keep the model's values; the report counts them).
  quantize    round-to-nearest symmetric per-group quantisation, de-quantised back (Zhang et al.
              2024 quantise with RTN/AWQ/GPTQ): for every nn.Linear and GPT-2 Conv1D weight except
              the output head (lm_head, as GPTQ/AWQ/bitsandbytes leave it), groups of --group-size
              consecutive input columns of a row share s = absmax/(2^(b-1)-1), w' = s·clamp(round(w/s),
              ±(2^(b-1)-1)) (round half to even, fp32); embeddings and norms are not quantised.
              --bnb nf4,int8 also loads each model through bitsandbytes (CUDA only; off by default).

Outputs (--outdir, default outputs/ablation; written at the end, atomically; never in a model folder):
  ablation.csv            one row per model x attack x setting (reference and unattacked rows too):
                          model, role, attack, setting, value, forget_nll, retain_nll,
                          mcq_forget_acc, mcq_retain_acc, recovered, selected,
                          direction_forget_nll, direction_retain_nll
                          recovered = (nll_model - nll_attacked) / (nll_model - nll_reference) on
                          forget-test NLL; empty when |nll_model - nll_reference| < --min-gap
  directions.safetensors  per attacked model, ``<model name>``: [N+1, d] float32 mean differences
                          r_l (row l = residual position l, unnormalised)
  ablation_report.yaml    settings, input hashes, ΔW ranks, timings, versions

One model is in memory at a time (the reference is read tensor by tensor for delta_rank, and its
mean activations are kept for the ``reference`` direction); attacks that change weights restore
them from the model's own safetensors files afterwards.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import gc
import hashlib
import io
import json
import math
import os
import platform
import re
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


def mean_of_lines(values) -> float:
    """NLL of a split: the plain mean over lines of the per-line mean token NLL."""
    values = [float(v) for v in values]
    return math.fsum(values) / len(values)


@contextlib.contextmanager
def quiet():
    """Silence lm-eval's and datasets' chatter (progress bars and info lines) on stdout/stderr."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        yield
# --- end shared helpers ---

ABLATION_ATTACKS = ("direction", "delta_rank", "quantize")


ABLATION_COLUMNS = ["model", "role", "attack", "setting", "value", "forget_nll", "retain_nll", "mcq_forget_acc",
               "mcq_retain_acc", "recovered", "selected", "direction_forget_nll", "direction_retain_nll"]
MCQ_TASKS = {"forget": "ablation_mcq_forget", "retain": "ablation_mcq_retain"}
FP32_EPS = 2.0 ** -23


# ----------------------------------------------------------------------------------------------
# Copied pieces: the evaluation tool's definitions (so the numbers are the same)
# ----------------------------------------------------------------------------------------------
# Adapted from tamper_attack.py: line_nlls (the same definition; torch imported inside)
def token_nlls_per_line(logits, input_ids, attention_mask):
    """Per line, the mean token NLL of tokens 2..T: (1/(T−1)) Σ_{t=2..T} −log p(x_t | x_<t).

    Same definition as evaluate_unlearning.py (fp32 log-softmax; position t of ``logits``
    predicts token t+1; right padding, attention_mask == 0, is excluded). Returns [B] float64.
    """
    import torch
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = attention_mask[:, 1:].to(tok.dtype)
    return ((tok * mask).sum(1) / mask.sum(1).clamp(min=1)).double()


# ----------------------------------------------------------------------------------------------
# The math: pure functions
# ----------------------------------------------------------------------------------------------
def recovered_share(nll_model: float, nll_attacked: float, nll_reference: float, min_gap: float):
    """Share of the model's forget-NLL gap to the reference that an attack closes:
    (nll_model − nll_attacked) / (nll_model − nll_reference). 1 = back at the reference, 0 = no
    change, < 0 = further away. None when |nll_model − nll_reference| < ``min_gap`` (nothing to
    recover) or a value is not finite."""
    vals = (nll_model, nll_attacked, nll_reference)
    if any(v is None or not math.isfinite(v) for v in vals):
        return None
    gap = nll_model - nll_reference
    if abs(gap) < min_gap:
        return None
    return (nll_model - nll_attacked) / gap


def ablation_counted_mask(attention_mask, skip_first: int):
    """The tokens that count for mean activations: real tokens (attention_mask 1, right padding)
    from position ``skip_first`` on (the first positions of a line carry the attention-sink
    activations that do not depend on the text)."""
    mask = attention_mask.clone().bool()
    mask[:, :skip_first] = False
    return mask


def project_out(h, r_hat):
    """Directional ablation: h − (h·r̂) r̂ over the last dimension (r̂ a unit vector, cast to h)."""
    r = r_hat.to(device=h.device, dtype=h.dtype)
    return h - (h @ r).unsqueeze(-1) * r


def unit(r):
    """r / ‖r‖ in float32 (a zero vector stays zero: nothing to ablate)."""
    import torch
    r = r.double()
    n = torch.linalg.vector_norm(r)
    return (r / n if n > 0 else r).float()


def selection_score(forget_nll: float, retain_nll: float, base_forget: float, base_retain: float) -> float:
    """How well an ablation recovers on the direction data (lower = better): the change of the
    forget NLL plus the positive part of the change of the retain NLL (an ablation that only wrecks
    the model is not a recovery)."""
    return (forget_nll - base_forget) + max(0.0, retain_nll - base_retain)


def delta_factors(dW, max_rank: int):
    """SVD of ΔW (float64): (U_R·S_R [m, R], V_Rᵀ [R, n], all singular values), R = min(max_rank, m, n)."""
    import torch
    U, S, Vh = torch.linalg.svd(dW.double(), full_matrices=False)
    R = min(max_rank, S.numel())
    return U[:, :R] * S[:R], Vh[:R].clone(), S      # clone: a view would keep all of Vh alive


def numerical_rank(S, shape) -> int:
    """Rank of a matrix of fp32 origin from its singular values: count of σ > σ₁·max(m, n)·2⁻²³."""
    if S.numel() == 0 or float(S[0]) == 0.0:
        return 0
    return int((S > S[0] * max(shape) * FP32_EPS).sum())


def remove_top_rank(W, US, Vh, r: int):
    """W − U_r S_r V_rᵀ in float64: the model's matrix without the top-r part of its change (r = 0:
    W itself)."""
    W = W.double()
    r = min(r, US.shape[1])
    return W if r == 0 else W - US[:, :r] @ Vh[:r]


def rtn_quantize(W, bits: int, group_size: int):
    """Round-to-nearest symmetric per-group quantisation, de-quantised back, of a weight
    ``W`` [out, in] (groups of ``group_size`` consecutive input columns of a row; 0 = the whole row;
    a last, shorter group when ``in`` is not a multiple). In fp32:
        qmax = 2^(bits−1) − 1,  s = max|w| / qmax over the group,
        w' = s · clamp(round(w / s), −qmax, qmax)      (round half to even; s = 0 -> w' = 0)."""
    import torch
    if not 2 <= bits <= 8:
        raise UsageError(f"bits must be between 2 and 8 (got {bits})")
    W = W.float()
    out, n = W.shape
    g = n if group_size <= 0 else min(group_size, n)
    pad = (-n) % g
    Wp = torch.nn.functional.pad(W, (0, pad)) if pad else W
    Wg = Wp.reshape(out, -1, g)
    qmax = float(2 ** (bits - 1) - 1)
    scale = Wg.abs().amax(-1, keepdim=True) / qmax
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.clamp(torch.round(Wg / safe), -qmax, qmax)
    deq = torch.where(scale == 0, torch.zeros_like(Wg), q * scale)
    return deq.reshape(out, -1)[:, :n]


# ----------------------------------------------------------------------------------------------
# Model structure: decoder layers, residual-stream hooks, linear layers, weight files
# ----------------------------------------------------------------------------------------------
def decoder_layers(model):
    """The decoder blocks (the ModuleList of config.num_hidden_layers blocks: GPT-NeoX
    ``gpt_neox.layers``, Llama ``model.layers``, GPT-2 ``transformer.h``)."""
    import torch
    n = getattr(model.config, "num_hidden_layers", None)
    for _, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n and n:
            return mod
    raise UsageError(f"cannot find the {n} decoder layers of this {type(model).__name__}")


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def _replace_first(x, new):
    if isinstance(x, tuple):
        return (new,) + tuple(x[1:])
    if isinstance(x, list):
        return [new] + list(x[1:])
    return new


@contextlib.contextmanager
def residual_hooks(model, fn):
    """Hooks at the N+1 residual-stream positions: position 0 = the input of decoder layer 0 (the
    embedding output, pre-hook), position k+1 = the output of decoder layer k. ``fn(position, h)``
    returns a replacement for h, or None to leave it."""
    layers = decoder_layers(model)
    handles = []

    def pre(module, args, kwargs):
        if args:
            new = fn(0, args[0])
            if new is not None:
                return (new,) + tuple(args[1:]), kwargs
        elif "hidden_states" in kwargs:
            new = fn(0, kwargs["hidden_states"])
            if new is not None:
                return args, {**kwargs, "hidden_states": new}
        return None

    def post_for(k):
        def post(module, args, output):
            new = fn(k + 1, _first(output))
            return None if new is None else _replace_first(output, new)
        return post

    try:
        handles.append(layers[0].register_forward_pre_hook(pre, with_kwargs=True))
        for k, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(post_for(k)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def ablate(model, r_hat):
    """Directional ablation of the unit vector ``r_hat`` at every residual-stream position."""
    with residual_hooks(model, lambda pos, h: project_out(h, r_hat)):
        yield


def residual_sums(model, seqs: list[list[int]], pad_id: int, batch_size: int, skip_first: int, device: str):
    """(sums [N+1, d] float64, count): Σ of the residual-stream activations at every position
    over the counted tokens (``ablation_counted_mask``) of ``seqs``."""
    import torch
    state = {"mask": None, "sums": None}
    n_pos = len(decoder_layers(model)) + 1

    def grab(pos, h):
        m = state["mask"].to(h.device)          # --device-map auto: layers may sit on several devices
        s = (h.double() * m.unsqueeze(-1)).sum(dim=(0, 1))
        if state["sums"] is None:
            state["sums"] = torch.zeros((n_pos, h.shape[-1]), dtype=torch.float64, device=h.device)
        state["sums"][pos] += s.to(state["sums"].device)
        return None

    count = 0
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    with torch.inference_mode(), residual_hooks(model, grab):
        for i in range(0, len(order), batch_size):
            ids, mask = pad_right([seqs[j] for j in order[i:i + batch_size]], pad_id)
            cm = ablation_counted_mask(mask, skip_first).to(device)
            state["mask"] = cm.double()
            count += int(cm.sum())
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
    return state["sums"].cpu(), count


def linear_modules(model) -> list[tuple[str, object, bool]]:
    """(name, module, transposed) of every nn.Linear and GPT-2 Conv1D (weight [in, out]: transposed)
    except the output head (``get_output_embeddings()``, tied to the embeddings in GPT-2)."""
    import torch
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        Conv1D = ()
    head = model.get_output_embeddings()
    out = []
    for name, mod in model.named_modules():
        if mod is head:
            continue
        if isinstance(mod, torch.nn.Linear):
            out.append((name, mod, False))
        elif Conv1D and isinstance(mod, Conv1D):
            out.append((name, mod, True))
    return out


def ablation_weight_index(model_dir: Path) -> dict:
    """{tensor name: (file, shape)} of the safetensors weights of a model folder (headers only)."""
    from safetensors import safe_open
    index = {}
    files = sorted(p for p in Path(model_dir).glob("*.safetensors") if not p.name.startswith("consolidated"))
    if not files:
        raise UsageError(f"{model_dir} has no .safetensors weights (pickled weights are not loaded)")
    for f in files:
        try:
            with safe_open(f, framework="pt") as st:
                for k in st.keys():
                    index[k] = (f, tuple(st.get_slice(k).get_shape()))
        except Exception as e:  # noqa: BLE001 - a broken file is one sentence
            raise UsageError(f"cannot read {f}: {first_line(e)}") from None
    return index


def key_map(model, index: dict) -> dict:
    """{parameter name: tensor name in the model's own weight files}. A name is looked up as it is,
    without and with the base-model prefix; a parameter that transformers renamed when loading
    (GPT-NeoX's ``embed_out`` -> ``lm_head``) is found as the one remaining file tensor of its
    shape whose values it holds."""
    import torch
    prefix = model.base_model_prefix
    params = dict(model.named_parameters())
    found = {n: file_key(n, index, prefix) for n in params}
    used = {k for k in found.values() if k is not None}
    with TensorReader(index) as reader:
        for name in [n for n, k in found.items() if k is None]:
            p = params[name]
            for k, (_, shape) in index.items():
                if k in used or tuple(shape) != tuple(p.shape):
                    continue
                if torch.equal(reader.get(k).to(device=p.device, dtype=p.dtype), p.detach()):
                    found[name] = k
                    used.add(k)
                    break
    return found


def file_key(param: str, index: dict, prefix: str):
    """The name of a parameter in a weight file (as saved, or without/with the base-model prefix)."""
    for k in (param, param[len(prefix) + 1:] if prefix and param.startswith(prefix + ".") else None,
              f"{prefix}.{param}" if prefix else None):
        if k is not None and k in index:
            return k
    return None


class TensorReader:
    """Reads single tensors of a model folder's safetensors files (one open handle per file)."""

    def __init__(self, index: dict):
        self.index, self.handles, self.stack = index, {}, contextlib.ExitStack()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stack.close()

    def get(self, key):
        from safetensors import safe_open
        f = self.index[key][0]
        if f not in self.handles:
            self.handles[f] = self.stack.enter_context(safe_open(f, framework="pt"))
        return self.handles[f].get_tensor(key)


# ----------------------------------------------------------------------------------------------
# Measuring a model: NLL on the test files and MCQ accuracy through lm-evaluation-harness
# ----------------------------------------------------------------------------------------------
class MCQ:
    """The forget and retain MCQ sets as lm-eval tasks (the evaluation tool's task config). The
    requests are built once; each call scores them with lm-eval's own ``HFLM.loglikelihood`` on
    whatever model, hooked or changed, is given, and takes lm-eval's ``acc``: the choice with the
    highest summed log-likelihood (``np.argmax``, first on ties) is right. Building the requests
    and rendering lm-eval's templates on every call would double the cost of an evaluation."""

    def __init__(self, sets: dict, workdir: Path):
        import logging
        self._lm, self.sets = None, sets
        for name in ("lm_eval", "lm-eval"):
            logging.getLogger(name).setLevel(logging.ERROR)
        with quiet():
            from lm_eval.tasks import TaskManager
        for key, items in sets.items():
            data = workdir / f"{key}_mcq.jsonl"
            data.write_text("".join(json.dumps(it) + "\n" for it in items), encoding="utf-8")
            (workdir / f"{MCQ_TASKS[key]}.yaml").write_text(mcq_task_yaml(MCQ_TASKS[key], data), encoding="utf-8")
        self.requests, self.gold = {}, {}
        with quiet():
            tasks = TaskManager(include_path=str(workdir), include_defaults=False).load(
                [MCQ_TASKS[k] for k in sets])["tasks"]
            for key in sets:
                task = tasks[MCQ_TASKS[key]]
                task.build_all_requests(rank=0, world_size=1)
                self.requests[key] = list(task.instances)
                self.gold[key] = {}
                for inst in self.requests[key]:
                    if inst.doc_id not in self.gold[key]:
                        self.gold[key][inst.doc_id] = self._gold(task, inst.doc)

    @staticmethod
    def _gold(task, doc) -> int:
        """lm-eval's gold index of a document (``doc_to_target``; a string is looked up in the choices)."""
        gold = task.doc_to_target(doc)
        if isinstance(gold, str):
            choices = task.doc_to_choice(doc)
            gold = choices.index(gold) if gold in choices else -100
        return gold

    def accuracy(self, model, tokenizer, device: str, batch_size: int, max_length: int) -> dict:
        """{'forget'|'retain': acc}."""
        import numpy as np
        from lm_eval.models.huggingface import HFLM
        out = {}
        with quiet():
            if self._lm is None or self._lm.model is not model:     # one wrapper per model, reused
                self._lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device,
                                max_length=max_length)
                if getattr(model, "hf_device_map", None):
                    # --device-map auto: HFLM takes model.device, the meta device when a layer is offloaded;
                    # the inputs go to --device and accelerate's hooks move them on
                    import torch
                    self._lm._device = torch.device(device)
            for key, reqs in self.requests.items():
                resps = self._lm.loglikelihood(reqs, disable_tqdm=True)
                lls: dict = {}
                for inst, (ll, _) in zip(reqs, resps):
                    lls.setdefault(inst.doc_id, {})[inst.idx] = ll
                right = [float(np.argmax([d[i] for i in range(len(d))]) == self.gold[key][doc]) for doc, d in lls.items()]
                out[key] = sum(right) / len(right)
        return out

    def release(self):
        self._lm = None


class Measure:
    """Forget/retain test NLL and MCQ accuracy of a model, on token lists made once."""

    def __init__(self, forget_ids, retain_ids, mcq: MCQ | None, batch_size: int, device: str, max_length: int):
        self.forget_ids, self.retain_ids, self.mcq = forget_ids, retain_ids, mcq
        self.batch_size, self.device, self.max_length = batch_size, device, max_length

    def nll(self, model, seqs: list[list[int]], pad_id: int) -> float:
        """Mean over lines of the per-line mean token NLL (tokens 2..T), length-sorted batches."""
        import torch
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        values = [0.0] * len(seqs)
        with torch.inference_mode():
            for i in range(0, len(order), self.batch_size):
                idx = order[i:i + self.batch_size]
                ids, mask = pad_right([seqs[j] for j in idx], pad_id)
                ids, mask = ids.to(self.device), mask.to(self.device)
                logits = model(input_ids=ids, attention_mask=mask).logits
                for j, v in zip(idx, token_nlls_per_line(logits, ids, mask).tolist()):
                    values[j] = v
        return mean_of_lines(values)

    def nll_only(self, model, tok) -> dict:
        return {"forget_nll": self.nll(model, self.forget_ids, tok.pad_token_id),
                "retain_nll": self.nll(model, self.retain_ids, tok.pad_token_id),
                "mcq_forget_acc": None, "mcq_retain_acc": None}

    def __call__(self, model, tok) -> dict:
        out = self.nll_only(model, tok)
        if self.mcq is not None:
            acc = self.mcq.accuracy(model, tok, self.device, self.batch_size, self.max_length)
            out.update({f"mcq_{k}_acc": v for k, v in acc.items()})
        return out


def ablation_token_ids(tok, lines: list[str], max_length: int, what: str, path) -> list[list[int]]:
    """Token ids of each line (the tokenizer's own special tokens, truncated to --max-length);
    a line of fewer than two tokens has nothing to score and is refused."""
    seqs = [list(x) for x in tok(lines, truncation=True, max_length=max_length)["input_ids"]]
    short = [i for i, s in enumerate(seqs) if len(s) < 2]
    if short:
        raise UsageError(f"{what} {path}: line {short[0] + 1} (non-empty lines) has fewer than 2 tokens")
    return seqs


# ----------------------------------------------------------------------------------------------
# Models: checked before any work, loaded one at a time
# ----------------------------------------------------------------------------------------------
DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def preflight_model(spec: str, what: str, trust_remote_code: bool) -> dict:
    """Fail before any attack when a model cannot be loaded: config, tokenizer and the headers of
    its safetensors files are read (no weights)."""
    from transformers import AutoConfig, AutoTokenizer
    model_dir = resolve_model_dir(spec, trust_remote_code)
    if not (model_dir / "config.json").is_file():
        raise UsageError(f"{what} {spec} has no config.json; is it a Hugging Face model directory?")
    index = ablation_weight_index(model_dir)
    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - every failure becomes one sentence
        raise UsageError(f"cannot load {what} {spec}: {first_line(e)}") from None
    return {"spec": spec, "dir": model_dir, "index": index, "config": config, "vocab": tok.get_vocab()}


def n_weights(info: dict) -> int:
    """Number of weights in a preflighted model's safetensors files (from the headers)."""
    return sum(math.prod(shape) for _, shape in info["index"].values())


def check_same_family(ref: dict, m: dict, need_shapes: bool, need_width: bool) -> None:
    """The attacked model must share the reference's tokenizer (the recovered share compares NLLs
    of the same tokens); delta_rank needs every tensor of the same name and shape, the
    ``reference`` direction the same residual width and depth."""
    if m["vocab"] != ref["vocab"]:
        raise UsageError(f"--model {m['spec']} has another tokenizer than the reference {ref['spec']}; "
                         "both must encode the test text into the same tokens")
    if need_width:
        for key in ("hidden_size", "num_hidden_layers"):
            a, b = getattr(ref["config"], key, None), getattr(m["config"], key, None)
            if a != b:
                raise UsageError(f"--model {m['spec']} has {key} {b} but the reference {ref['spec']} has {a}")
    if need_shapes:
        for k, (_, shape) in m["index"].items():
            if k not in ref["index"]:
                raise UsageError(f"the reference {ref['spec']} has no tensor {k} (of --model {m['spec']}); "
                                 "delta_rank needs the same architecture")
            if ref["index"][k][1] != shape:
                raise UsageError(f"the reference {ref['spec']} has another shape than --model {m['spec']}: "
                                 f"{k} is {list(ref['index'][k][1])} there and {list(shape)} here")


def load_ablation_model(info: dict, dtype: str, device: str, trust_remote_code: bool, quantization_config=None,
                        big=None):
    """Model (eval mode) and tokenizer of a preflighted model (safetensors only), its weights loaded once,
    straight to ``device`` (``from_pretrained_big``); ``big``: the parsed --device-map, --max-memory and
    --offload-folder (accelerate's big-model inference)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch_dtype = getattr(torch, DTYPE_NAMES[dtype])
    try:
        tok = AutoTokenizer.from_pretrained(info["dir"], trust_remote_code=trust_remote_code)
        if quantization_config:
            model = AutoModelForCausalLM.from_pretrained(info["dir"], dtype=torch_dtype, use_safetensors=True,
                                                         trust_remote_code=trust_remote_code, device_map=device,
                                                         quantization_config=quantization_config)
        else:
            model = from_pretrained_big(info["dir"], dtype=torch_dtype, device=device,
                                        trust_remote_code=trust_remote_code, **big_model_kwargs(big))
    except Exception as e:  # noqa: BLE001 - every failure becomes one sentence
        raise UsageError(f"cannot load model {info['spec']}: {first_line(e)}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
    return model.eval(), tok


WEIGHT_ATTACKS = ("delta_rank", "quantize")


def offloaded_tensors(model) -> list[str]:
    """Names of the parameters that are not in memory: with --device-map auto, accelerate keeps the
    weights of layers offloaded to the CPU (behind a GPU) or to disk on the meta device and loads them
    for each forward pass only."""
    return [n for n, p in model.named_parameters() if p.device.type == "meta"]


def check_weights_in_memory(model, spec: str, attacks: list[str]) -> None:
    """delta_rank and quantize edit the weights in place, which an offloaded layer does not have:
    one UsageError naming the attacks instead of a wrong (unedited) result or a traceback."""
    editing = [x for x in attacks if x in WEIGHT_ATTACKS]
    gone = offloaded_tensors(model) if editing else []
    if gone:
        n = sum(1 for _ in model.parameters())
        raise UsageError(f"{' and '.join(editing)} edit{'s' if len(editing) == 1 else ''} weights in place, but "
                         f"--device-map auto offloaded {len(gone)} of {n} weight tensors of {spec} (e.g. {gone[0]}); "
                         "drop --device-map, give more --max-memory, or leave "
                         f"{' and '.join(editing)} out of --attacks")


def restore(model, names: list[str], reader: TensorReader, keys: dict) -> None:
    """Put the model's own weights (from its safetensors files) back into the named parameters."""
    import torch
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            p = params[name]
            p.copy_(reader.get(keys[name]).to(device=p.device, dtype=p.dtype))


# ----------------------------------------------------------------------------------------------
# The attacks on one loaded model
# ----------------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def candidate_positions(spec: str, n_layers: int) -> list[int]:
    """--layers: 'all' = every decoder layer's output (positions 1..N), or comma-separated
    residual positions 0..N (0 = the embedding output)."""
    if spec.strip() == "all":
        return list(range(1, n_layers + 1))
    try:
        pos = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"--layers takes 'all' or comma-separated positions 0..{n_layers} (got {spec!r})") from None
    if not pos or pos[0] < 0 or pos[-1] > n_layers:
        raise UsageError(f"--layers positions must be between 0 and {n_layers} (got {spec!r})")
    return pos


def direction_attack(model, tok, name: str, a, ctx: dict, measure) -> tuple[list[dict], object, dict]:
    """Mean-difference directions at every residual position, and one ablation per candidate."""
    import torch
    pad = tok.pad_token_id
    sums_f, n_f = residual_sums(model, ctx["dir_forget"], pad, a.batch_size, a.skip_first, ctx["device"])
    if n_f == 0:
        raise UsageError(f"--direction-data-forget {a.direction_data_forget}: no token is counted "
                         f"(every line has at most --skip-first {a.skip_first} tokens)")
    if a.direction_source == "contrast":
        sums_r, n_r = residual_sums(model, ctx["dir_retain"], pad, a.batch_size, a.skip_first, ctx["device"])
        if n_r == 0:
            raise UsageError(f"--direction-data-retain {a.direction_data_retain}: no token is counted "
                             f"(every line has at most --skip-first {a.skip_first} tokens)")
        r = sums_f / n_f - sums_r / n_r
    else:
        r = sums_f / n_f - ctx["ref_forget_means"]
    ev = Measure(ctx["dir_forget"], ctx["dir_retain"], None, a.batch_size, ctx["device"], a.max_length)
    base_f, base_r = ev.nll(model, ctx["dir_forget"], pad), ev.nll(model, ctx["dir_retain"], pad)
    rows = []
    positions = candidate_positions(a.layers, r.shape[0] - 1)
    for pos in progress(positions, desc=f"    {name}: direction candidates", unit="layer", leave=False):
        # selection: direction data only
        t0 = time.perf_counter()
        with ablate(model, unit(r[pos])):
            sel_f, sel_r = ev.nll(model, ctx["dir_forget"], pad), ev.nll(model, ctx["dir_retain"], pad)
        rows.append({"attack": "direction", "setting": f"layer={pos}", "value": pos,
                     "direction_forget_nll": sel_f, "direction_retain_nll": sel_r,
                     "_score": selection_score(sel_f, sel_r, base_f, base_r), "_seconds": time.perf_counter() - t0})
    best = min(range(len(rows)), key=lambda i: (rows[i]["_score"], i))
    for i, row in enumerate(rows):                                  # then the test files
        t0 = time.perf_counter()
        row["selected"] = int(i == best)
        with ablate(model, unit(r[row["value"]])):
            if i == best or a.mcq_every_layer:
                row.update(measure(model, tok))
            else:
                row.update(measure.nll_only(model, tok))
        row["_seconds"] += time.perf_counter() - t0
        log(f"    direction layer {row['value']}{' (selected)' if i == best else ''}: forget NLL "
            f"{row['forget_nll']:.3f} (direction data {row['direction_forget_nll']:.3f}), "
            f"retain NLL {row['retain_nll']:.3f}")
    info = {"source": a.direction_source, "selected_layer": rows[best]["value"],
            "direction_data_forget_nll": base_f, "direction_data_retain_nll": base_r,
            "counted_tokens": {"forget": n_f, **({"retain": n_r} if a.direction_source == "contrast" else {})},
            "norms": [float(torch.linalg.vector_norm(x)) for x in r]}
    return rows, r.float().contiguous(), info


def delta_rank_attack(model, tok, a, ctx: dict, info: dict, keys: dict, measure) -> tuple[list[dict], dict]:
    """Remove the top-r singular part of every changed 2-D weight (reference streamed per tensor)."""
    import torch
    ref_info, prefix = ctx["ref_info"], model.base_model_prefix
    params = dict(model.named_parameters())
    factors, stats, changed_1d = {}, [], []
    max_rank = max(a.ranks)
    with torch.no_grad(), TensorReader(ref_info["index"]) as ref_reader:
        for name, p in progress(list(params.items()), desc="    delta_rank: ΔW factors", unit="tensor", leave=False):
            key = keys.get(name) if keys.get(name) in ref_info["index"] else file_key(name, ref_info["index"], prefix)
            if key is None:
                raise UsageError(f"the reference {ref_info['spec']} has no tensor for {name}")
            W_ref = ref_reader.get(key).to(device=p.device, dtype=p.dtype)
            if tuple(W_ref.shape) != tuple(p.shape):
                raise UsageError(f"the reference {ref_info['spec']} has another shape than {info['spec']}: "
                                 f"{name} is {list(W_ref.shape)} there and {list(p.shape)} here")
            dW = p.double() - W_ref.double()
            del W_ref
            if not bool(dW.any()):
                continue
            if keys.get(name) is None:
                raise UsageError(f"{info['spec']}: tensor {name} is not in its safetensors files")
            if p.dim() != 2:
                changed_1d.append(name)
                continue
            US, Vh, S = delta_factors(dW, max_rank)
            fro2 = float((S ** 2).sum())
            factors[name] = (US, Vh)
            stats.append({"tensor": name, "shape": list(p.shape), "dW_fro": math.sqrt(fro2),
                          "rank": numerical_rank(S, p.shape),
                          "energy_top_r": {r: float((S[:r] ** 2).sum()) / fro2 for r in a.ranks}})
            del dW, S
    log(f"    delta_rank: {len(factors)} changed matrices, {len(changed_1d)} changed 1-D tensors kept")
    rows = []
    with TensorReader(info["index"]) as own:
        for r in a.ranks:
            t0 = time.perf_counter()
            with torch.no_grad():
                for name, (US, Vh) in factors.items():
                    p = params[name]
                    W = own.get(keys[name]).to(device=p.device, dtype=p.dtype)
                    p.copy_(remove_top_rank(W, US, Vh, r).to(p.dtype))
            res = measure(model, tok)
            rows.append({"attack": "delta_rank", "setting": f"r={r}", "value": r, **res,
                         "_seconds": time.perf_counter() - t0})
            log(f"    delta_rank r={r}: forget NLL {res['forget_nll']:.3f}, retain NLL {res['retain_nll']:.3f}")
        restore(model, list(factors), own, keys)
    report = {"changed_matrices": len(factors), "changed_1d_tensors_kept": changed_1d,
              "max_rank": max((s["rank"] for s in stats), default=0),
              "mean_energy_top_r": {r: (math.fsum(s["energy_top_r"][r] for s in stats) / len(stats) if stats else None)
                                    for r in a.ranks},
              "matrices": stats}
    return rows, report


def quantize_attack(model, tok, a, info: dict, keys: dict, measure) -> tuple[list[dict], dict]:
    """RTN quantisation (de-quantised) of every linear weight but the head, for each of --bits."""
    import torch
    targets = [(f"{n}.weight", m, t) for n, m, t in linear_modules(model)]
    rows = []
    with TensorReader(info["index"]) as own:
        for pname, _, _ in targets:
            if keys.get(pname) is None:
                raise UsageError(f"{info['spec']}: weight {pname} is not in its safetensors files")
        for bits in a.bits:
            t0 = time.perf_counter()
            with torch.no_grad():
                for pname, mod, transposed in targets:
                    W = own.get(keys[pname]).to(device=mod.weight.device)
                    W = W.T if transposed else W
                    q = rtn_quantize(W, bits, a.group_size)
                    mod.weight.copy_((q.T if transposed else q).to(mod.weight.dtype))
            res = measure(model, tok)
            rows.append({"attack": "quantize", "setting": f"bits={bits}", "value": bits, **res,
                         "_seconds": time.perf_counter() - t0})
            log(f"    quantize {bits}-bit: forget NLL {res['forget_nll']:.3f}, retain NLL {res['retain_nll']:.3f}")
        restore(model, [n for n, _, _ in targets], own, keys)
    return rows, {"quantized_weights": len(targets), "group_size": a.group_size,
                  "excluded": "output head (lm_head), embeddings, norms, biases"}


def bnb_attack(info: dict, a, ctx: dict, measure) -> list[dict]:
    """Each model loaded through bitsandbytes (NF4 / LLM.int8), CUDA only."""
    from transformers import BitsAndBytesConfig
    rows = []
    for kind in a.bnb:
        t0 = time.perf_counter()
        cfg = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4") if kind == "nf4"
               else BitsAndBytesConfig(load_in_8bit=True))
        model, tok = load_ablation_model(info, ctx["dtype"], ctx["device"], a.trust_remote_code, quantization_config=cfg)
        res = measure(model, tok)
        rows.append({"attack": "quantize", "setting": f"bnb={kind}", "value": 4 if kind == "nf4" else 8, **res,
                     "_seconds": time.perf_counter() - t0})
        log(f"    quantize bitsandbytes {kind}: forget NLL {res['forget_nll']:.3f}")
        if ctx["mcq"] is not None:
            ctx["mcq"].release()
        del model
        release_memory()
    return rows


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def parse_settings(spec: str, flag: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4] (sorted, unique); anything else is a UsageError."""
    try:
        values = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers (got {spec!r})") from None
    if not values:
        raise UsageError(f"{flag} takes comma-separated integers (got {spec!r})")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--reference", default=None,
                   help="the original, knowledgeable model (hub ID or folder): its numbers are the target of "
                        "'recovered'; delta_rank and --direction-source reference read it")
    p.add_argument("--model", action="append", required=True, help="model to attack (repeat for several)")
    p.add_argument("--attacks", default="direction,delta_rank,quantize", help="comma-separated: " + ", ".join(ABLATION_ATTACKS))
    p.add_argument("--direction-data-forget", default="data/forget.txt", help="forget text for the directions")
    p.add_argument("--direction-data-retain", default="data/retain.txt", help="retain text for the directions")
    p.add_argument("--direction-samples", type=int, default=128,
                   help="first N lines of each direction file (0 = all)")
    p.add_argument("--direction-source", default="contrast", choices=["contrast", "reference"],
                   help="contrast: forget - retain in the attacked model; reference: attacked - reference on forget")
    p.add_argument("--skip-first", type=int, default=1, help="first positions of a line left out of the means")
    p.add_argument("--layers", default="all",
                   help="candidate residual positions: 'all' (every decoder layer's output, 1..N) or e.g. 2,4")
    p.add_argument("--mcq-every-layer", action="store_true",
                   help="score the MCQ sets under every candidate direction (default: the selected one only)")
    p.add_argument("--ranks", default="1,2,4,8,16", help="ranks r of the ΔW part removed")
    p.add_argument("--bits", default="8,4", help="RTN bit widths (2-8)")
    p.add_argument("--group-size", type=int, default=128, help="input columns per quantisation group (0 = a row)")
    p.add_argument("--bnb", default="", help="also load through bitsandbytes: nf4, int8 (CUDA only; off)")
    p.add_argument("--forget-test", default="data/forget_test.txt", help="forget test lines")
    p.add_argument("--retain-test", default="data/retain_test.txt", help="retain test lines")
    p.add_argument("--mcq-forget", default=None,
                   help="forget MCQ JSONL (default data/forget_mcq.jsonl, skipped with a warning when absent; '' skips)")
    p.add_argument("--mcq-retain", default=None,
                   help="retain MCQ JSONL (default data/retain_mcq.jsonl, skipped with a warning when absent; '' skips)")
    p.add_argument("--min-gap", type=float, default=0.01,
                   help="'recovered' is left empty when |forget NLL of model - of reference| is below this (nats)")
    p.add_argument("--batch-size", type=int, default=8, help="lines per forward pass")
    p.add_argument("--max-length", type=int, default=512, help="tokens per line; longer lines are cut")
    p.add_argument("--seed", type=int, default=0, help="torch seed (the attacks themselves are deterministic)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto: bf16 on CUDA, fp16 on MPS, fp32 on CPU")
    p.add_argument("--outdir", default="outputs/ablation", help="where the results go")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom modelling code")
    p.add_argument("--device-map", default=None, choices=["auto"],
                   help="auto: spread a model that does not fit --device over the GPUs, the CPU and disk "
                        "(accelerate's big-model inference; same numbers, slower; docs/scale.md)")
    p.add_argument("--max-memory", default=None,
                   help="with --device-map auto: memory per device, e.g. 0=20GiB,cpu=60GiB (default: what is free)")
    p.add_argument("--offload-folder", default=None,
                   help="with --device-map auto: where layers beyond --max-memory go (default: a temporary folder)")
    return p


def check_args(a) -> None:
    if a.max_memory and not a.device_map:
        raise UsageError("--max-memory needs --device-map auto")
    parse_max_memory(a.max_memory)          # a malformed --max-memory fails before any model is read
    a.attacks = [x.strip() for x in a.attacks.split(",") if x.strip()]
    bad = [x for x in a.attacks if x not in ABLATION_ATTACKS]
    if bad or not a.attacks:
        raise UsageError(f"--attacks takes a comma-separated list of {', '.join(ABLATION_ATTACKS)} (got {bad[0] if bad else a.attacks!r})")
    a.ranks = parse_settings(a.ranks, "--ranks")
    if a.ranks[0] < 0:
        raise UsageError(f"--ranks must be non-negative (got {a.ranks[0]})")
    a.bits = parse_settings(a.bits, "--bits")
    if a.bits[0] < 2 or a.bits[-1] > 8:
        raise UsageError(f"--bits must be between 2 and 8 (got {a.bits[0] if a.bits[0] < 2 else a.bits[-1]})")
    a.bnb = [x.strip() for x in a.bnb.split(",") if x.strip()]
    if any(x not in ("nf4", "int8") for x in a.bnb):
        raise UsageError(f"--bnb takes nf4 and/or int8 (got {','.join(a.bnb)})")
    for flag, v, low in (("--batch-size", a.batch_size, 1), ("--max-length", a.max_length, 2),
                         ("--skip-first", a.skip_first, 0), ("--direction-samples", a.direction_samples, 0),
                         ("--group-size", a.group_size, 0)):
        if v < low:
            raise UsageError(f"{flag} must be at least {low} (got {v})")
    if not (math.isfinite(a.min_gap) and a.min_gap >= 0):
        raise UsageError(f"--min-gap must be a non-negative number (got {a.min_gap})")
    if a.reference is None:
        if "delta_rank" in a.attacks:
            raise UsageError("delta_rank needs --reference (the original model whose weights the change is measured against)")
        if "direction" in a.attacks and a.direction_source == "reference":
            raise UsageError("--direction-source reference needs --reference")
        raise UsageError("--reference is required: the original model is the target of the recovered share")
    names = [model_name(m) for m in a.model]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"two --model arguments share the name {dup[0]}; pass distinct models")
    if model_name(a.reference) in names:
        raise UsageError(f"--model {model_name(a.reference)} is the reference; attack the other models")
    if a.layers.strip() != "all":
        candidate_positions(a.layers, 10 ** 9)       # the syntax now; the range once the depth is known


def ablation_mcq_sets(a) -> dict:
    """{'forget'|'retain': items} of the MCQ sets to score (validated)."""
    sets = {}
    for key, given in (("forget", a.mcq_forget), ("retain", a.mcq_retain)):
        if given == "":
            continue
        path = Path(given if given is not None else f"data/{key}_mcq.jsonl")
        if given is None and not path.exists():
            log(f"warning: {path} does not exist; no {key} multiple-choice set")
            continue
        sets[key] = read_mcq(path)
        setattr(a, f"mcq_{key}", str(path))
    return sets


def read_direction_lines(path, n: int) -> list[str]:
    lines = read_lines(path)
    return lines[:n] if n else lines


def run(a) -> Path:
    import torch
    check_args(a)
    t_start = time.perf_counter()
    # -- data: read and checked before any model is loaded
    data = {"forget_test": read_lines(a.forget_test), "retain_test": read_lines(a.retain_test)}
    if "direction" in a.attacks:
        data["direction_forget"] = read_direction_lines(a.direction_data_forget, a.direction_samples)
        data["direction_retain"] = read_direction_lines(a.direction_data_retain, a.direction_samples)
    sets = ablation_mcq_sets(a)
    if not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    ref_info = preflight_model(a.reference, "--reference", a.trust_remote_code)
    infos = [preflight_model(spec, "--model", a.trust_remote_code) for spec in a.model]
    for info in infos:
        check_same_family(ref_info, info, need_shapes="delta_rank" in a.attacks,
                          need_width="direction" in a.attacks and a.direction_source == "reference")
    if a.layers.strip() != "all":
        candidate_positions(a.layers, ref_info["config"].num_hidden_layers)
    outdir = check_outdir(a.outdir, "ablation_report.yaml", inputs=(ref_info["dir"], *(i["dir"] for i in infos)))
    device = pick_device(a.device)
    dtype = pick_dtype(a.dtype, device)
    if a.bnb and device != "cuda":
        raise UsageError(f"--bnb needs CUDA (bitsandbytes quantises on the GPU); the device here is {device}")
    if a.bnb:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UsageError("--bnb needs the bitsandbytes package (uv run --with bitsandbytes ...)") from None

    from transformers import AutoTokenizer
    tok0 = AutoTokenizer.from_pretrained(ref_info["dir"], trust_remote_code=a.trust_remote_code)
    ids = {"forget_test": ablation_token_ids(tok0, data["forget_test"], a.max_length, "--forget-test", a.forget_test),
           "retain_test": ablation_token_ids(tok0, data["retain_test"], a.max_length, "--retain-test", a.retain_test)}
    if "direction" in a.attacks:
        ids["dir_forget"] = ablation_token_ids(tok0, data["direction_forget"], a.max_length, "--direction-data-forget",
                                     a.direction_data_forget)
        ids["dir_retain"] = ablation_token_ids(tok0, data["direction_retain"], a.max_length, "--direction-data-retain",
                                     a.direction_data_retain)
    rows, directions, report_models, timings = [], {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="model-diffs-ablation-") as work:
        mcq = MCQ(sets, Path(work)) if sets else None
        ev = Measure(ids["forget_test"], ids["retain_test"], mcq, a.batch_size, device, a.max_length)
        ctx = {"device": device, "dtype": dtype, "mcq": mcq, "ref_info": ref_info,
               "dir_forget": ids.get("dir_forget"), "dir_retain": ids.get("dir_retain")}

        # -- the reference: its numbers (and its mean forget activations for the reference direction)
        t0 = time.perf_counter()
        torch.manual_seed(a.seed)
        log(f"==> reference {a.reference}")
        model, tok = load_ablation_model(ref_info, dtype, device, a.trust_remote_code, big=a)
        if all(n_weights(i) >= n_weights(ref_info) for i in infos):  # they will not fit either: fail now
            check_weights_in_memory(model, a.reference, a.attacks)
        ref = ev(model, tok)
        ref_name = model_name(a.reference)
        rows.append({"model": ref_name, "role": "reference", "attack": "none", "setting": "", **ref})
        if "direction" in a.attacks and a.direction_source == "reference":
            sums, n = residual_sums(model, ids["dir_forget"], tok.pad_token_id, a.batch_size, a.skip_first, device)
            if n == 0:
                raise UsageError(f"--direction-data-forget {a.direction_data_forget}: no token is counted "
                                 f"(every line has at most --skip-first {a.skip_first} tokens)")
            ctx["ref_forget_means"] = sums / n
        if mcq is not None:
            mcq.release()
        del model
        release_memory()
        timings[ref_name] = {"reference": round(time.perf_counter() - t0, 3)}
        log(f"    forget NLL {ref['forget_nll']:.3f}, retain NLL {ref['retain_nll']:.3f}")

        for i, info in enumerate(infos, start=1):
            name = model_name(info["spec"])
            log(f"==> [{i}/{len(infos)}] {info['spec']}")
            torch.manual_seed(a.seed)
            t0 = time.perf_counter()
            model, tok = load_ablation_model(info, dtype, device, a.trust_remote_code, big=a)
            check_weights_in_memory(model, info["spec"], a.attacks)
            t_load = time.perf_counter() - t0
            t0 = time.perf_counter()
            base = ev(model, tok)
            per = {"load": round(t_load, 3), "none": round(time.perf_counter() - t0, 3)}
            log(f"    unattacked: forget NLL {base['forget_nll']:.3f}, retain NLL {base['retain_nll']:.3f}")
            model_rows = [{"attack": "none", "setting": "", **base}]
            rep: dict = {"model": info["spec"]}
            if "direction" in a.attacks:
                drows, r, rep["direction"] = direction_attack(model, tok, name, a, ctx, ev)
                directions[name] = r
                model_rows += drows
            keys = key_map(model, info["index"]) if {"delta_rank", "quantize"} & set(a.attacks) else {}
            if "delta_rank" in a.attacks:
                drows, rep["delta_rank"] = delta_rank_attack(model, tok, a, ctx, info, keys, ev)
                model_rows += drows
            if "quantize" in a.attacks:
                qrows, rep["quantize"] = quantize_attack(model, tok, a, info, keys, ev)
                model_rows += qrows
            if mcq is not None:
                mcq.release()
            del model
            release_memory()
            if "quantize" in a.attacks and a.bnb:
                model_rows += bnb_attack(info, a, ctx, ev)
            for row in model_rows:
                row.update(model=name, role="attacked",
                           recovered=recovered_share(base["forget_nll"], row["forget_nll"], ref["forget_nll"],
                                                     a.min_gap))
                if "_seconds" in row:
                    per[f"{row['attack']} {row['setting']}"] = round(row.pop("_seconds"), 3)
                row.pop("_score", None)
            rows += model_rows
            timings[name] = per
            report_models[name] = rep
            best = [r for r in model_rows if r.get("selected") == 1]
            log(f"    done in {time.perf_counter() - t0:.1f} s"
                + (f"; best direction: layer {best[0]['value']}, recovered {fmt_share(best[0]['recovered'])}"
                   if best else ""))

    files = {outdir / "ablation.csv": ablation_csv_text(rows),
             outdir / "ablation_report.yaml": ablation_report_text(a, ref_info, infos, sets, device, dtype, report_models,
                                                          timings, time.perf_counter() - t_start)}
    if directions:
        from safetensors.torch import save
        meta = {"positions": "row l = residual position l: 0 = embedding output, k+1 = output of decoder layer k",
                "definition": ("mean(forget) - mean(retain) in the model" if a.direction_source == "contrast"
                               else "mean(model) - mean(reference) on forget text"),
                "skip_first": str(a.skip_first), "reference": str(a.reference)}
        files[outdir / "directions.safetensors"] = save({k: v.cpu() for k, v in directions.items()}, metadata=meta)
    write_atomically(files)
    return outdir


def fmt_share(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def ablation_csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ABLATION_COLUMNS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: fmt(r.get(k)) for k in ABLATION_COLUMNS})
    return buf.getvalue()


def ablation_versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "lm_eval", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def ablation_report_text(a, ref_info, infos, sets, device, dtype, models, timings, seconds) -> str:
    import torch
    import yaml
    data = {k: {"path": str(p), "sha256": sha256_file(p)} for k, p in
            (("forget_test", a.forget_test), ("retain_test", a.retain_test),
             *((("mcq_forget", a.mcq_forget),) if "forget" in sets else ()),
             *((("mcq_retain", a.mcq_retain),) if "retain" in sets else ()),
             *((("direction_data_forget", a.direction_data_forget), ("direction_data_retain", a.direction_data_retain))
               if "direction" in a.attacks else ()))}

    def model_hash(info):
        h = hashlib.sha256()
        for f in sorted({v[0] for v in info["index"].values()}):
            h.update(sha256_file(f).encode())
        return h.hexdigest()

    report = {
        "Reference": {"model": a.reference, "name": model_name(a.reference), "weights_sha256": model_hash(ref_info)},
        "Models": [{"model": i["spec"], "name": model_name(i["spec"]), "weights_sha256": model_hash(i)} for i in infos],
        "Settings": {"attacks": a.attacks, "direction_source": a.direction_source, "skip_first": a.skip_first,
                     "direction_samples": a.direction_samples, "layers": a.layers,
                     "mcq_every_layer": a.mcq_every_layer, "ranks": a.ranks, "bits": a.bits,
                     "group_size": a.group_size, "bnb": a.bnb, "min_gap": a.min_gap, "batch_size": a.batch_size,
                     "max_length": a.max_length, "seed": a.seed, "device": device, "device_map": a.device_map, "dtype": dtype,
                     "ablation_at": "embedding output (input of decoder layer 0) and every decoder layer's output",
                     "selection": "lowest (forget NLL change + positive part of retain NLL change) on the direction data",
                     "quantized": "every nn.Linear / Conv1D weight except the output head; RTN symmetric absmax per group",
                     "recovered": "(forget_nll_model - forget_nll_attacked) / (forget_nll_model - forget_nll_reference)"},
        "Data": data,
        "Per_model": models,
        "Timings_seconds": {**timings, "total": round(seconds, 3)},
        "Hardware": {"device": device, "cuda": torch.version.cuda, **ablation_versions()},
    }
    return yaml.safe_dump(report, sort_keys=False, allow_unicode=True)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> int:
        out = run(args)
        print(f"wrote {out / 'ablation.csv'}", file=sys.stderr)
        return 0

    return run_tool(work, kept="nothing was written", oom_hint="lower --batch-size or --max-length")


if __name__ == "__main__":
    sys.exit(main())
