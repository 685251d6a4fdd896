"""The one source of every helper that more than one tool needs.

The tools do not import this module (each stays a self-contained PEP 723 script): each carries
copies of the helpers it uses between the marker lines of its shared block, and
``uv run --script common/fix_copies.py`` rewrites those copies from here (``--check`` lists the
ones that differ; tests/test_helper_copies.py runs it). Edit a helper HERE, then run the command.
The order of the definitions below is the canonical order of every block. A helper may use the
other helpers and the imports below (a tool that copies it must import the same modules);
docs/helpers.md explains the mechanism.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open


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


def read_lines(path) -> list[str]:
    """The samples of a text file, one per line, as ``read_numbered_lines`` reads them."""
    return [s for _, s in read_numbered_lines(path)]


def drop_duplicates(samples: list[str]) -> tuple[list[str], int]:
    """The samples without repeats under ``normalise`` (the first is kept, order unchanged) and
    how many were dropped."""
    seen: set[str] = set()
    kept = []
    for s in samples:
        key = normalise(s)
        if key not in seen:
            seen.add(key)
            kept.append(s)
    return kept, len(samples) - len(kept)


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


CURVE_COLUMNS = ["step", "forget_nll", "retain_nll", "mcq_forget_acc"]


def weight_component(name: str) -> str:
    """Which part of a transformer a parameter belongs to, from its name:

        qkv       fused query/key/value projection (GPT-NeoX query_key_value, GPT-2 c_attn)
        q, k, v   separate projections (Llama q_proj, k_proj, v_proj)
        attn_out  attention output projection (GPT-NeoX attention.dense, Llama o_proj, GPT-2 attn.c_proj)
        mlp_in    MLP input side (GPT-NeoX dense_h_to_4h, Llama gate_proj and up_proj, GPT-2 mlp.c_fc)
        mlp_out   MLP output side (GPT-NeoX dense_4h_to_h, Llama down_proj, GPT-2 mlp.c_proj)
        embed     token/position embeddings (embed_in, embed_tokens, wte, wpe)
        unembed   the LM head (embed_out, lm_head)
        norm      LayerNorm/RMSNorm weights and biases (…norm…, GPT-2 ln_1/ln_2/ln_f)
        other     anything else

    Only names decide, never shapes: GPT-2's Conv1D weights are stored transposed ([in, out]),
    so the shape of a c_attn weight is [hidden, 3·hidden] while GPT-NeoX's query_key_value is
    [3·hidden, hidden]; the component is the same.

    >>> weight_component("gpt_neox.layers.3.attention.dense.weight")
    'attn_out'
    >>> weight_component("transformer.h.0.mlp.c_proj.weight")
    'mlp_out'
    >>> weight_component("model.layers.1.self_attn.k_proj.weight")
    'k'
    """
    embed = {"embed_in", "embed_tokens", "wte", "wpe", "word_embeddings", "embed_positions"}
    unembed = {"embed_out", "lm_head"}
    qkv = {"query_key_value", "c_attn", "qkv_proj", "wqkv"}
    q, k, v = {"q_proj", "query"}, {"k_proj", "key"}, {"v_proj", "value"}
    attn_out = {"o_proj", "out_proj"}
    mlp_in = {"dense_h_to_4h", "gate_proj", "up_proj", "gate_up_proj", "c_fc", "fc1", "w1", "w3"}
    mlp_out = {"dense_4h_to_h", "down_proj", "fc2", "w2"}
    attn_parents = {"attention", "self_attn", "attn", "self_attention"}
    parts = name.lower().split(".")
    if len(parts) > 1 and parts[-1] in ("weight", "bias"):
        parts = parts[:-1]
    module = parts[-1]
    parent = parts[-2] if len(parts) > 1 else ""
    if module in embed:
        return "embed"
    if module in unembed:
        return "unembed"
    if "norm" in module or module.startswith("ln_") or module == "ln_f":
        return "norm"
    if module in qkv:
        return "qkv"
    for component, modules in (("q", q), ("k", k), ("v", v)):
        if module in modules:
            return component
    if module in attn_out or (module in ("dense", "c_proj") and parent in attn_parents):
        return "attn_out"
    if module in mlp_in:
        return "mlp_in"
    if module in mlp_out or (module == "c_proj" and parent == "mlp"):
        return "mlp_out"
    return "other"


# Parameter names: `<prefix>.layers.N.<module>...` (GPT-NeoX, Llama/Mistral/Qwen/Gemma, OPT),
# `transformer.h.N.` (GPT-2, Falcon, GPT-J), `blocks.N.` / `layer.N.` elsewhere.
LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.(.+)$")

ATTN_MODULES = {"attention", "self_attn", "attn", "self_attention", "cross_attn", "cross_attention",
                "encoder_attn", "linear_attn"}

MLP_MODULES = {"mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "fc1", "fc2"}

# Model families whose linear layers are transformers' Conv1D, stored [in_features, out_features].
CONV1D_MODEL_TYPES = {"gpt2", "imagegpt", "decision_transformer"}


def parse_layer_group(name: str) -> tuple[int, str]:
    """Decoder-layer index and group of a parameter name.

    The group comes from the module directly under the layer (`attention`/`self_attn`/`attn` →
    "attn", `mlp`/`feed_forward` → "mlp", else "other"), never from the leaf: GPT-2 has a
    `c_proj` under both `attn` and `mlp`. Names outside decoder layers (embeddings, LM head,
    final norm) get layer −1 and group "other".

    >>> parse_layer_group("gpt_neox.layers.3.attention.query_key_value.weight")
    (3, 'attn')
    >>> parse_layer_group("transformer.h.0.mlp.c_proj.weight")
    (0, 'mlp')
    >>> parse_layer_group("model.embed_tokens.weight")
    (-1, 'other')
    """
    match = LAYER_RE.search(name)
    if match is None:
        return -1, "other"
    module = match.group(2).split(".")[0]
    if module in ATTN_MODULES:
        return int(match.group(1)), "attn"
    if module in MLP_MODULES:
        return int(match.group(1)), "mlp"
    return int(match.group(1)), "other"


def open_safetensors(path: Path):
    """`safe_open` with numpy arrays (bf16 through ml_dtypes). Opened per read and closed at once:
    the memory map, and with it the file pages it touched, is released, so scanning a checkpoint
    does not count the whole file towards this process's resident memory."""
    return safe_open(path, framework="numpy")


class Checkpoint:
    """Names, shapes and stored dtypes of a safetensors checkpoint; tensors read on demand."""

    def __init__(self, spec: str):
        self.spec = spec
        self.dir = resolve_model_dir(spec, weights_only=True)
        self.files = self._weight_files()  # tensor name -> shard path
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        for shard in sorted(set(self.files.values())):
            try:
                with open_safetensors(shard) as f:
                    for name in f.keys():
                        if self.files.get(name) == shard:
                            piece = f.get_slice(name)
                            self.shapes[name] = tuple(piece.get_shape())
                            self.dtypes[name] = piece.get_dtype()
            except (SafetensorError, OSError) as exc:
                raise UsageError(f"cannot read {shard}: {first_line(exc)}") from exc
        missing = sorted(n for n in self.files if n not in self.shapes)
        if missing:
            raise UsageError(f"{len(missing)} tensors of {self.dir} are listed in its index but "
                             f"absent from their shard (e.g. {missing[0]})")
        config = self.dir / "config.json"
        try:
            self.model_type = json.loads(config.read_text()).get("model_type", "") if config.is_file() else ""
        except (OSError, ValueError, AttributeError):
            self.model_type = ""

    def _weight_files(self) -> dict[str, Path]:
        """Map tensor name → shard, from model.safetensors.index.json or the files themselves."""
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise UsageError(f"cannot read {index}: {first_line(exc)}") from exc
            files = {name: self.dir / shard for name, shard in weight_map.items()}
            for shard in sorted(set(files.values())):
                if not shard.is_file():
                    raise UsageError(f"{shard.name} is listed in {index} but missing")
            return files
        shards = sorted(self.dir.glob("*.safetensors"))
        if not shards:
            pickled = sorted(p.name for p in self.dir.glob("*.bin")) + sorted(p.name for p in self.dir.glob("*.pt"))
            hint = (f" (found {pickled[0]}, which this tool never unpickles; re-save the model with "
                    "save_pretrained(..., safe_serialization=True))") if pickled else ""
            raise UsageError(f"no .safetensors weights in {self.dir}{hint}")
        files = {}
        for shard in shards:
            try:
                with open_safetensors(shard) as f:
                    files.update({name: shard for name in f.keys()})
            except (SafetensorError, OSError) as exc:
                raise UsageError(f"cannot read {shard}: {first_line(exc)}") from exc
        return files

    def matrices(self) -> dict[str, tuple[int, int]]:
        return {n: s for n, s in self.shapes.items() if len(s) == 2}

    def read(self, name: str, rows: slice, cols: slice) -> np.ndarray:
        """The block [rows, cols] of a tensor, in its stored dtype (a C-contiguous copy)."""
        try:
            with open_safetensors(self.files[name]) as f:
                return np.ascontiguousarray(f.get_slice(name)[rows, cols])
        except (SafetensorError, OSError, TypeError) as exc:
            raise UsageError(f"cannot read {name} from {self.files[name]}: {first_line(exc)}") from exc


def match_matrices(a: Checkpoint, b: Checkpoint) -> tuple[list[str], list[str]]:
    """Names of the 2-D weights present in both checkpoints (sorted by layer, then name), and
    warnings for names present in one only. Differing shapes are a UsageError."""
    mats_a, mats_b = a.matrices(), b.matrices()
    warnings = []
    for label, only in (("A", sorted(set(mats_a) - set(mats_b))), ("B", sorted(set(mats_b) - set(mats_a)))):
        if only:
            warnings.append(f"{len(only)} weight matrices are only in model {label} and are skipped "
                            f"(e.g. {', '.join(only[:3])})")
    common = [n for n in mats_a if n in mats_b]
    bad = [n for n in common if mats_a[n] != mats_b[n]]
    if bad:
        n = bad[0]
        raise UsageError(f"the models have different shapes for {len(bad)} matrices, e.g. {n}: "
                         f"{list(mats_a[n])} in A vs {list(mats_b[n])} in B (not the same architecture?)")
    if not common:
        raise UsageError(f"{a.spec} and {b.spec} share no 2-D weight matrices")
    return sorted(common, key=lambda n: (parse_layer_group(n)[0], n)), warnings



# device files whose presence means torch may find a GPU (NVIDIA, AMD ROCm, WSL2)
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/kfd", "/dev/dxg")


def choose_device(name: str) -> str:
    """--device, asking torch (pick_device) only when the answer may be an accelerator: `cpu`, and
    `auto` on a machine that is not macOS (MPS) and has none of GPU_DEVICE_FILES, are the CPU
    without the torch import. On an accelerator the products run in exact fp32 (no TF32)."""
    if name == "cpu" or (name == "auto" and sys.platform != "darwin"
                         and not any(os.path.exists(f) for f in GPU_DEVICE_FILES)):
        return "cpu"
    device = pick_device(name)
    if device != "cpu":
        import torch

        torch.set_float32_matmul_precision("highest")  # no TF32: its 10-bit mantissa is ~1e-3 off
    return device


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


def publish_folder(tmp: Path, final: Path) -> None:
    """Rename the finished folder ``tmp`` (made beside ``final``, e.g. by mkdtemp) to ``final``,
    with ordinary modes: folders 0777 & ~umask, files 0666 & ~umask (mkdtemp makes 0700). An
    existing ``final`` is moved aside first and deleted only once the new folder is in place; if
    the rename fails it is put back."""
    mask = _umask()
    for root, _, names in os.walk(tmp):
        os.chmod(root, 0o777 & ~mask)
        for name in names:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
    old = final.with_name(f".{final.name}.old-{os.getpid()}") if os.path.lexists(final) else None
    if old is not None:
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None and old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    elif old is not None:
        old.unlink()


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


def label_log_axis(axis) -> None:
    """Enough labelled ticks on a log-scaled matplotlib axis (``ax.yaxis``, after its limits are
    set): 1-2-5 in each decade (only powers of ten beyond four decades, every multiple within
    one), written as plain numbers (0.5, 20, 1e+04) instead of 10^k alone."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = sorted(axis.get_view_interval())
    decades = math.log10(hi / lo) if lo > 0 else 1.0
    subs = (1.0,) if decades > 4 else (1.0, 2.0, 5.0) if decades >= 1 else (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=40))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the None of required or derived options."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)
