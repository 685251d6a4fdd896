# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "torch>=2.4",
#     "transformers>=5.0,<6",
#     "tokenizers>=0.21",
#     "safetensors>=0.4",
#     "huggingface_hub>=0.30",
#     "accelerate>=1.0",
#     "tqdm>=4.66",
#     "pyyaml>=6.0",
#     "peft>=0.13",
# ]
# ///
"""Unlearn a forget set from a causal LM with one of thirteen methods, keeping a retain set intact.

Loss-based methods act on the model's token log-likelihoods:
    ga_simple, ga, grad_diff, dpo, npo, simnpo
Representation-level methods act on the hidden states h_l of decoder layers (``--layer-id``):
    rmu, cb, lat, cb_lat
Weight-space methods edit the weights themselves:
    tar (negated task vector), wt_dist (noise, then retain fine-tuning), wt_dist_reg (retain
    fine-tuning pushed away from the original weights, bounded)
Any method can add an activation-norm anchor (``--norm-reg-lambda``), train with Muon
(``--optimizer muon``), and keep its updates in fp32, mixed precision (fp32 master weights) or
bf16 with Kahan-compensated updates (``--precision``); plain bf16 updates, which round away steps
below half a bf16 ulp, are never used.

Why a new script: public unlearning code keeps a second full model in memory for the reference
methods (dpo/npo) and runs the whole network although RMU/Circuit-Breaker losses only read layer L.
Here the reference log-probs are computed once, up front, with the initial weights (the data does
not change), and rmu/cb stop the forward pass at the highest target layer (no later layers, no
logits). The original hidden states h_orig are recomputed with a frozen copy of only the trainable
parameters (``torch.func.functional_call``), never with a second model.

With ``--lora-r R`` the method trains peft LoRA adapters (rank R) instead of the weights: h_orig
and the reference log-probs then come from the same model with its adapters disabled, and on save
the adapters are merged into the base weights (``merge_and_unload``), so the result is an ordinary
model (``--save-adapter`` also keeps ``adapter/``, loadable with ``PeftModel.from_pretrained``).

The training loop is plain PyTorch driven by accelerate, so ``uv run --script unlearn.py ...``
trains on one device and ``accelerate launch unlearn.py ...`` trains data-parallel without code
changes. After training it writes the model (safetensors + tokenizer), ``metrics.json``
(forget/retain NLL and their gap on a held-out split, before and after) and ``run_report.yaml``
into ``--outdir``, atomically.

Reading the code: what each method needs (reference log-probs, a truncated forward, target layers,
a frozen copy, LAT's adversary, a start or finish edit of the weights, the settings it records and
the warnings it gives) and its loss is one row of ``METHOD_TABLE``; nothing else branches on a
method's name. ``run()`` is a list of phases, plan → data → model → method setup → train → save.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


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
# --- end shared helpers ---

# decoder-layer containers of the architectures we know, relative to the CausalLM module
KNOWN_LAYER_PATHS = ("gpt_neox.layers", "model.layers", "transformer.h", "model.decoder.layers")
DEFAULT_LAYER_ID = "5,6,7"  # --layer-id of the representation methods when not given
LORA_DROPOUT = 0.05  # --lora-dropout default (peft's examples and the Circuit Breakers recipe)


class NonFiniteLoss(Exception):
    """The training loss became NaN/inf: the run stops and nothing is saved."""


class OutputError(Exception):
    """Saving failed (disk full, permissions): one ``error:`` line, exit status 1; nothing
    half-written is left and an earlier --outdir is kept as it was."""


class StopForward(Exception):
    """Raised by a pre-hook on the layer after the highest target layer: the rest of the network
    is never computed (rmu/cb only read hidden states up to there)."""


# ----------------------------------------------------------------------------------------------
# Log-likelihood helpers
# ----------------------------------------------------------------------------------------------
def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Per-sample summed next-token log-prob log π(y) = Σ_t log p(y_t | y_<t) and token count |y|.

    Position t of ``logits`` predicts token t+1; padding (attention_mask == 0) is excluded.
    Returns (sum_logp [B] float32, n_tokens [B] float32).
    """
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:]
    mask = attention_mask[:, 1:].float()
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    nll = nll.view(targets.shape) * mask
    return -nll.sum(1), mask.sum(1)


def mean_nll(sum_logp: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """NLL of a batch = mean over samples of the per-sample mean token NLL, −log π(y)/|y|.

    Averaging per sample (not per token) makes the loss of a global batch the plain mean of the
    losses of its shards, so data-parallel training equals one process with the same global batch.
    """
    return (-sum_logp / n_tokens.clamp(min=1)).mean()


# ----------------------------------------------------------------------------------------------
# The loss-based methods
# ----------------------------------------------------------------------------------------------
def ga_simple_loss(nll_forget: torch.Tensor) -> torch.Tensor:
    """Gradient ascent on the forget set: L = −NLL(forget).

    Jang et al. 2023, "Knowledge Unlearning for Mitigating Privacy Risks in Language Models".
    """
    return -nll_forget


def ga_loss(nll_forget: torch.Tensor, nll_retain: torch.Tensor) -> torch.Tensor:
    """Gradient ascent on forget plus descent on retain: L = −NLL(forget) + NLL(retain).

    Jang et al. 2023 (ascent) with the retain term of Yao et al. 2023, "Large Language Model
    Unlearning".
    """
    return -nll_forget + nll_retain


def grad_diff_loss(nll_forget: torch.Tensor, nll_retain: torch.Tensor, forget_weight: float) -> torch.Tensor:
    """Gradient difference: L = NLL(retain) − w · NLL(forget), w = ``--forget-weight``.

    Liu et al. 2022, "Continual Learning and Private Unlearning"; Maini et al. 2024, "TOFU".
    """
    return nll_retain - forget_weight * nll_forget


def dpo_loss(logp_retain, ref_logp_retain, logp_forget, ref_logp_forget, beta: float) -> torch.Tensor:
    """DPO with the retain sample r as chosen and the forget sample f as rejected:

        L = −mean log σ(β [(log π(r) − log π_ref(r)) − (log π(f) − log π_ref(f))])

    Rafailov et al. 2023, "Direct Preference Optimization"; used for unlearning in Zhang et al.
    2024 (NPO paper) and Maini et al. 2024 (TOFU). log π = summed token log-prob.
    """
    margin = (logp_retain - ref_logp_retain) - (logp_forget - ref_logp_forget)
    return -F.logsigmoid(beta * margin).mean()


def npo_loss(logp_forget, ref_logp_forget, nll_retain: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative Preference Optimization plus the retain NLL:

        L = −(2/β) · mean log σ(−β (log π(f) − log π_ref(f))) + NLL(retain)

    Zhang et al. 2024, "Negative Preference Optimization: From Catastrophic Collapse to Effective
    Unlearning". log π = summed token log-prob.
    """
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp_forget - ref_logp_forget)).mean() + nll_retain


def simnpo_loss(logp_forget, n_tokens_forget, nll_retain: torch.Tensor, beta: float) -> torch.Tensor:
    """SimNPO, reference-free and length-normalised (margin γ = 0), plus the retain NLL:

        L = −(2/β) · mean log σ(−β · log π(f) / |f|) + NLL(retain)

    Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM
    Unlearning".
    """
    avg_logp = logp_forget / n_tokens_forget.clamp(min=1)
    return -(2.0 / beta) * F.logsigmoid(-beta * avg_logp).mean() + nll_retain


# ----------------------------------------------------------------------------------------------
# The representation-level methods. h: [B, T, d] hidden states, mask: [B, T] (1 = real token).
# Token means are over the real tokens of the whole batch.
# ----------------------------------------------------------------------------------------------
def masked_token_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of per-token values x [B, T] over the tokens where mask [B, T] is 1."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def random_control_vector(hidden_size: int, steering_coeff: float, seed: int) -> torch.Tensor:
    """c · u/‖u‖ with u ~ U[0,1)^d drawn from ``seed`` (on the CPU, so every device gets the same u).

    Li et al. 2024, "The WMDP Benchmark" (RMU): one fixed random direction per run.
    """
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(hidden_size, generator=g)
    return steering_coeff * u / u.norm()


def rmu_loss(h_forget, h_retain, h_orig_retain, mask_forget, mask_retain, control_vec, alpha: float):
    """Representation Misdirection for Unlearning, averaged over the target layers l:

        L = mean_l [ mean_tok,dim (h_l(x_f) − c·r)² + α · mean_tok,dim (h_l(x_r) − h_orig,l(x_r))² ]

    Li et al. 2024, "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning".
    Arguments are lists over target layers (except masks, control_vec = c·r [d], alpha).
    """
    total = 0.0
    for hf, hr, hr0 in zip(h_forget, h_retain, h_orig_retain):
        forget = masked_token_mean((hf.float() - control_vec.float()).pow(2).mean(-1), mask_forget)
        retain = masked_token_mean((hr.float() - hr0.float()).pow(2).mean(-1), mask_retain)
        total = total + forget + alpha * retain
    return total / len(h_forget)


def cb_cos_loss(h_forget, h_retain, h_orig_retain, mask_forget, mask_retain, control_vec, alpha: float):
    """Direction-only circuit breaker (this project's ``cb`` default), averaged over target layers l:

        L = mean_l [ −mean_tok cos(h_l(x_f), c·r) + α · mean_tok (1 − cos(h_l(x_r), h_orig,l(x_r))) ]

    Forget activations are turned toward a fixed random direction r (as RMU, but scale-free),
    retain activations keep their original direction. A variant of Zou et al. 2024, "Improving
    Alignment and Robustness with Circuit Breakers"; see ``cb_rr_loss`` for the published loss.
    """
    total = 0.0
    for hf, hr, hr0 in zip(h_forget, h_retain, h_orig_retain):
        target = control_vec.float().expand_as(hf)
        forget = -masked_token_mean(F.cosine_similarity(hf.float(), target, dim=-1), mask_forget)
        retain = masked_token_mean(1 - F.cosine_similarity(hr.float(), hr0.float(), dim=-1), mask_retain)
        total = total + forget + alpha * retain
    return total / len(h_forget)


def cb_rr_loss(h_forget, h_orig_forget, h_retain, h_orig_retain, mask_forget, mask_retain, alpha: float):
    """Circuit Breakers' representation-rerouting loss (``--cb-loss rr``), averaged over layers l:

        L = mean_l [ mean_tok ReLU(cos(h_l(x_f), h_orig,l(x_f))) + α · mean_tok ‖h_l(x_r) − h_orig,l(x_r)‖₂ ]

    Zou et al. 2024, "Improving Alignment and Robustness with Circuit Breakers" (Algorithm 1, with
    constant coefficients): forget activations are made orthogonal to (or pointing away from) their
    original direction, retain activations stay where they were (L2 distance per token).
    """
    total = 0.0
    for hf, hf0, hr, hr0 in zip(h_forget, h_orig_forget, h_retain, h_orig_retain):
        forget = masked_token_mean(F.relu(F.cosine_similarity(hf.float(), hf0.float(), dim=-1)), mask_forget)
        retain = masked_token_mean((hr.float() - hr0.float()).norm(dim=-1), mask_retain)
        total = total + forget + alpha * retain
    return total / len(h_forget)


def lat_loss(nll_forget_adv: torch.Tensor, nll_retain: torch.Tensor) -> torch.Tensor:
    """Latent adversarial training, outer loss with the adversary's δ* fixed:

        L = −NLL_forget(x_f; h_l + δ*_l) + NLL_retain(x_r)

    Sheshadri et al. 2024, "Latent Adversarial Training Improves Robustness to Persistent Harmful
    Behaviors in LLMs"; Casper et al. 2024, "Defending Against Unforeseen Failure Modes with LAT".
    """
    return -nll_forget_adv + nll_retain


def pgd_update(delta: torch.Tensor, grad: torch.Tensor, step_size: float, eps: float,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """One projected sign-gradient step of the adversary, which *minimises* the forget NLL:

        δ ← clip_[−ε, ε](δ − s · sign(∇_δ NLL)),   δ = 0 on padding

    Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks" (L∞ PGD).
    ``mask`` [B, T] (1 = real token) zeroes the perturbation of padding positions.
    """
    new = (delta - step_size * grad.sign()).clamp(-eps, eps)
    if mask is not None:
        new = new * mask.unsqueeze(-1).to(new.dtype)
    return new


def lat_step_size(eps: float, step_size: float | None) -> float:
    """The adversary's step s: the documented update takes s = ε (δ ← clip(δ − ε·sign(∇δ L), −ε, ε));
    ``--lat-step-size`` sets a smaller step (the earlier default was 2.5·ε/lat_steps)."""
    return eps if step_size is None else step_size


def hidden_states_offset(h0: torch.Tensor, emb: torch.Tensor) -> int:
    """Where layer l sits in ``output_hidden_states``: ``hidden_states[l + offset]``.

    offset 1 when entry 0 is the input embedding (GPT-NeoX, Llama, MPT, ...: entry 0 is the
    embedding output, possibly scaled by a constant as Gemma does), 0 when it is already the output
    of layer 0 (Mamba in transformers 5: one entry per layer, then the final norm)."""
    if h0.shape != emb.shape:
        return 0
    a, b = h0.detach().float().flatten(), emb.detach().float().flatten()
    if torch.equal(a, b):
        return 1
    c = (a @ b) / (b @ b).clamp(min=1e-30)
    tol = 2e-2 if emb.dtype in (torch.float16, torch.bfloat16) else 1e-4
    return int(bool((a - c * b).norm() <= tol * a.norm()))


def weight_rms(params: list, anchors: list) -> torch.Tensor:
    """RMS(θ − θ₀) = sqrt(Σ_i (θ_i − θ₀_i)² / N) over every element of ``params`` (N elements in all), in
    fp32. Its gradient at θ = θ₀ is zero (torch's norm subgradient), so it starts moving once anything else
    has moved the weights."""
    n = sum(p.numel() for p in params)
    sq = [torch.linalg.vector_norm(p.float() - p0.float()) for p, p0 in zip(params, anchors)]
    return torch.linalg.vector_norm(torch.stack(sq)) / math.sqrt(n)


def wt_dist_reg_loss(nll_retain: torch.Tensor, rms: torch.Tensor, lam: float, bound: float) -> torch.Tensor:
    """Weight-distance regularisation (Siddiqui et al. 2025, "From Dormant to Deleted: Tamper-Resistant
    Unlearning Through Weight-Space Regularization"; the paper's code subtracts α·RMS(θ − θ₀)):

        L = NLL_retain − λ · b · tanh(RMS(θ − θ₀) / b)        (b = --wt-reg-bound > 0)
        L = NLL_retain − λ · RMS(θ − θ₀)                      (b = 0: the paper's unbounded form)

    The unbounded term runs to −∞ as the weights fly apart, whatever happens to NLL_retain. The tanh
    form has the paper's slope λ near θ₀ and levels off at −λ·b: once the weights have moved by about
    b (default 0.02, the init std of GPT-NeoX/Llama weights, i.e. by their own scale) there is nothing
    more to gain and NLL_retain decides."""
    push = bound * torch.tanh(rms / bound) if bound > 0 else rms
    return nll_retain - lam * push


def norm_reg_loss(h: tuple, ref_norms: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Activation-norm anchor: mean over the layers l of the mean over counted tokens of
    (‖h_l‖₂ − ‖h_l^orig‖₂)²; ``h``: one [B, T, H] tensor per layer, ``ref_norms`` [L, B, T] the original
    model's norms, ``mask`` [B, T]."""
    per_layer = [masked_token_mean((x.float().norm(dim=-1) - n0) ** 2, mask) for x, n0 in zip(h, ref_norms)]
    return torch.stack(per_layer).mean()


def negate_task_vector(theta0: torch.Tensor, theta_ft: torch.Tensor, alpha: float) -> torch.Tensor:
    """Task arithmetic, negation (Ilharco et al. 2023, "Editing Models with Task Arithmetic"): the task
    vector τ = θ_ft − θ₀ of a fine-tuning on the forget set, subtracted: θ₀ − α·τ (α = 0: θ₀ exactly)."""
    return theta0 - alpha * (theta_ft - theta0)


@torch.no_grad()
def add_weight_noise(named_params: list, std: float, seed: int) -> None:
    """Weight distortion (Siddiqui et al. 2025): θ ← θ + ε, ε ~ N(0, std²) i.i.d. on every element of every
    given parameter (an absolute std, as in the paper's code), drawn on the CPU from ``seed`` in the order
    given, so a seed gives the same noise on any device."""
    g = torch.Generator().manual_seed(seed)
    for _, p in named_params:
        p.add_((torch.randn(p.shape, generator=g, dtype=torch.float32) * std).to(p.device, p.dtype))


class EarlyStopper:
    """Early stopping on the validation gap (forget NLL − retain NLL, bigger is better): ``update``
    says stop once the gap has not improved for ``patience`` validations in a row; the trainable
    weights of the best validation are kept (a CPU copy) and ``restore`` puts them back bit for bit."""

    def __init__(self, patience: int, params: list):
        self.patience, self.params = patience, params
        self.best_gap, self.best_step, self.bad, self.snapshot = -math.inf, None, 0, None

    def update(self, step: int, gap: float) -> bool:
        if gap > self.best_gap:
            self.best_gap, self.best_step, self.bad = gap, step, 0
            self.snapshot = [p.detach().to("cpu", copy=True) for p in self.params]
        else:
            self.bad += 1
        return self.bad >= self.patience

    @torch.no_grad()
    def restore(self) -> None:
        for p, saved in zip(self.params, self.snapshot):
            p.copy_(saved.to(p.device))


# ----------------------------------------------------------------------------------------------
# The method table: what each method needs, and its loss on one (forget, retain) micro-batch
# ----------------------------------------------------------------------------------------------
# A step function gets the run's Trainer ``t`` and the forget and retain micro-batches ``f``, ``r``
# (Batch: ids, mask, idx = positions in the training split) and returns the loss to minimise:
#   t.logprobs(b) → (log π(y) [B], |y| [B])      t.nll(b) → mean_nll of those
#   t.hidden(b)   → h_l at the target layers (truncated forward)    t.h_orig(b) → the same, initial weights
#   t.adversary(b) → LAT's δ* at the target layers                  t.ref[split][b.idx] → log π_ref
#   t.control     → the steering vector c·r                          t.a → the command-line flags
def ga_simple_step(t, f, r):
    return ga_simple_loss(t.nll(f))


def ga_step(t, f, r):
    return ga_loss(t.nll(f), t.nll(r))


def grad_diff_step(t, f, r):
    return grad_diff_loss(t.nll(f), t.nll(r), t.a.forget_weight)


def dpo_step(t, f, r):
    lp_f, _ = t.logprobs(f)
    lp_r, _ = t.logprobs(r)
    return dpo_loss(lp_r, t.ref["retain"][r.idx], lp_f, t.ref["forget"][f.idx], t.a.beta)


def npo_step(t, f, r):
    lp_f, _ = t.logprobs(f)
    return npo_loss(lp_f, t.ref["forget"][f.idx], t.nll(r), t.a.beta)


def simnpo_step(t, f, r):
    lp_f, n_f = t.logprobs(f)
    return simnpo_loss(lp_f, n_f, t.nll(r), t.a.beta)


def rmu_step(t, f, r):
    h_f, h_r = t.hidden(f), t.hidden(r)
    return rmu_loss(h_f, h_r, t.h_orig(r), f.mask, r.mask, t.control, t.a.alpha)


def cb_step(t, f, r, deltas=None):
    with t.runner.perturb(deltas):  # cb_lat: the adversary's δ* on the forget pass
        h_f = t.hidden(f)
    h_r = t.hidden(r)
    h_r0 = t.h_orig(r)
    if t.a.cb_loss == "rr":
        return cb_rr_loss(h_f, t.h_orig(f), h_r, h_r0, f.mask, r.mask, t.a.alpha)
    return cb_cos_loss(h_f, h_r, h_r0, f.mask, r.mask, t.control, t.a.alpha)


def cb_lat_step(t, f, r):
    return cb_step(t, f, r, deltas=t.adversary(f))


def lat_step(t, f, r):
    deltas = t.adversary(f)
    with t.runner.perturb(deltas):
        nll_f = t.nll(f)
    return lat_loss(nll_f, t.nll(r))


def tar_step(t, f, r):
    """tar's loop fine-tunes on the forget set (its NLL descends); ``tar_finish`` negates what it learned."""
    return t.nll(f)


def tar_notes(a) -> list[str]:
    """tar's loop is the fine-tuning on the forget set: its learning rate is --tar-lr, its length --tar-steps."""
    out = []
    if a.lr != build_parser().get_default("lr"):
        out.append(f"--lr {a.lr:g} is ignored by tar: its fine-tuning on the forget set uses --tar-lr {a.tar_lr:g}")
    if a.tar_steps and a.epochs != build_parser().get_default("epochs"):
        out.append(f"--epochs {a.epochs} is ignored by tar: --tar-steps {a.tar_steps} sets its length")
    return out


def tar_finish(t):
    """θ ← θ₀ − α·(θ_ft − θ₀) (``negate_task_vector``), θ₀ from the CPU copy. With LoRA the task vector is
    the merged adapter ΔW = s·B·A, linear in B: B ← −α·B makes the saved merge W − α·ΔW."""
    alpha = t.a.tar_alpha
    with torch.no_grad():
        if t.peft is not None:
            for name, p in t.runner.model.named_parameters():
                if ".lora_B." in name and p.requires_grad:
                    p.mul_(-alpha)
            return
        for name, p in t.runner.model.named_parameters():
            if name in t.start:
                p.copy_(negate_task_vector(t.start[name].to(p.device, torch.float32), p.float(), alpha).to(p.dtype))


def wt_dist_start(t):
    add_weight_noise([(n, p) for n, p in t.runner.model.named_parameters() if p.requires_grad],
                     t.a.wt_noise_std, t.a.seed)


def wt_dist_step(t, f, r):
    return t.nll(r)


def wt_dist_reg_step(t, f, r):
    return wt_dist_reg_loss(t.nll(r), weight_rms(t.params, t.anchor), t.a.wt_reg_lambda, t.a.wt_reg_bound)


def cb_notes(a) -> list[str]:
    """cb's warning for a setting that cannot move it at the start."""
    if a.cb_loss != "rr":
        return []
    return ["cb with --cb-loss rr: the rerouting term ReLU(cos(h, h_orig)) has zero gradient while h = h_orig "
            "(where training starts); it moves only through noise such as dropout (the paper's LoRA dropout) or "
            "the other layers' updates. cb_lat (whose δ breaks the tie) or --cb-loss cos start moving at once"]


@dataclass(frozen=True)
class Method:
    """All that the run knows about an unlearning method, besides its ``step`` (the loss of a micro-batch).

    family     "loss": acts on token log-likelihoods; "repr": on the hidden states of the --layer-id
               decoder layers (which are then also the default --trainable; hooks go on them);
               "weight": edits the weights themselves (noise, task vectors, distance from θ₀)
    ref        splits whose log π_ref is computed once, up front, with the initial weights
    truncated  the loss reads hidden states only: the forward stops after the top target layer
               (so DDP must allow trainable parameters above it to get no gradient)
    frozen     h_orig comes from a frozen copy of the trainable parameters up to the top target layer
    embedding_fallback  on an architecture whose decoder layers are unknown, read h_l from the
               model's output_hidden_states (full forward) and perturb the input embeddings
               instead of refusing
    settings   the method's own flags: recorded under Training in run_report.yaml; a method flag
               given but not listed here is ignored by the method, with a warning (``ignored_flags``)
    reads_hidden  the loss reads h_l at the --layer-id layers (without it --layer-id only places
               the adversary's δ)
    adversary  LAT's latent adversary δ at the target layers (``Trainer.adversary``)
    notes      flags → warnings about settings that behave unexpectedly for this method
    start      Trainer → None, once before the first step (after the "before" evaluation)
    finish     Trainer → None, once after the last step (before the "after" evaluation)
    lr_flag    the flag that holds the learning rate of the loop
    steps_flag the flag that counts the loop's optimizer steps (None: --epochs over the forget set)
    full_params  edits every weight directly: refuses LoRA
    anchor     keeps θ₀ of the trainable parameters on the device for the loss (``Trainer.anchor``)
    """
    step: Callable
    family: str
    ref: tuple[str, ...] = ()
    truncated: bool = False
    frozen: bool = False
    embedding_fallback: bool = False
    settings: tuple[str, ...] = ()
    reads_hidden: bool = False
    adversary: bool = False
    notes: Callable | None = None
    start: Callable | None = None
    finish: Callable | None = None
    lr_flag: str = "lr"
    steps_flag: str | None = None
    full_params: bool = False
    anchor: bool = False

    @property
    def uses_layers(self) -> bool:
        return self.family == "repr"

    def default_trainable(self) -> str:
        return "layers" if self.uses_layers else "all"

    def find_unused_parameters(self, trainable: str) -> bool:
        """DDP's flag: a truncated forward leaves trainable parameters above the top layer without a gradient
        (LoRA adapters are never above it: resolve_lora refuses that)."""
        return self.truncated and trainable not in ("layers", "lora")

    def fallback_changes(self, layer_spec: str) -> list[str]:
        """What changes on an architecture whose decoder layers are unknown (``embedding_fallback``);
        ``layer_spec``: the --layer-id value."""
        lost = [] if self.reads_hidden else ["--layer-id is ignored"]
        if self.reads_hidden:
            lost.append(f"h_l of --layer-id {layer_spec} is read from output_hidden_states (a full forward every pass: no "
                        "truncated forward, and h_orig needs a frozen copy of every trainable parameter)")
        if self.adversary:
            lost.append("the adversary perturbs the input embeddings instead of the --layer-id layers")
        return lost

    def warnings(self, a: argparse.Namespace, defaults: dict, used: tuple[str, ...] = ()) -> list[str]:
        """The row's notes, and one warning per method flag set away from its default that this method
        ignores (``used``: flags the run reads for other reasons, e.g. --layer-id with --trainable layers)."""
        out = list(self.notes(a)) if self.notes else []
        for name in method_flags():
            if name not in self.settings and name not in used and getattr(a, name) != defaults.get(name):
                out.append(f"--{name.replace('_', '-')} {getattr(a, name)} is ignored by {a.method}")
        return out


_CB = ("layer_id", "alpha", "steering_coeff", "cb_loss")
_LAT = ("lat_eps", "lat_steps", "lat_step_size")
_REPR = dict(family="repr", embedding_fallback=True)
_HIDDEN = dict(truncated=True, frozen=True, reads_hidden=True)
METHOD_TABLE: dict[str, Method] = {
    "ga_simple": Method(ga_simple_step, "loss"),
    "ga":        Method(ga_step, "loss"),
    "grad_diff": Method(grad_diff_step, "loss", settings=("forget_weight",)),
    "dpo":       Method(dpo_step, "loss", ref=("forget", "retain"), settings=("beta",)),
    "npo":       Method(npo_step, "loss", ref=("forget",), settings=("beta",)),
    "simnpo":    Method(simnpo_step, "loss", settings=("beta",)),
    "rmu":       Method(rmu_step, **_REPR, **_HIDDEN, settings=_CB[:3]),
    "cb":        Method(cb_step, **_REPR, **_HIDDEN, settings=_CB, notes=cb_notes),
    "lat":       Method(lat_step, **_REPR, adversary=True, settings=("layer_id",) + _LAT),
    "cb_lat":    Method(cb_lat_step, **_REPR, **_HIDDEN, adversary=True, settings=_CB + _LAT),
    "tar":       Method(tar_step, "weight", finish=tar_finish, lr_flag="tar_lr", steps_flag="tar_steps",
                        settings=("tar_alpha", "tar_lr", "tar_steps"), notes=tar_notes),
    "wt_dist":   Method(wt_dist_step, "weight", start=wt_dist_start, full_params=True, settings=("wt_noise_std",)),
    "wt_dist_reg": Method(wt_dist_reg_step, "weight", full_params=True, anchor=True,
                          settings=("wt_reg_lambda", "wt_reg_bound")),
}
METHODS = tuple(METHOD_TABLE)
LOSS_METHODS = tuple(m for m, spec in METHOD_TABLE.items() if spec.family == "loss")
REPR_METHODS = tuple(m for m, spec in METHOD_TABLE.items() if spec.family == "repr")
WEIGHT_METHODS = tuple(m for m, spec in METHOD_TABLE.items() if spec.family == "weight")


def method_flags() -> tuple[str, ...]:
    """Every method's own flags (the union of the rows' settings, in table order)."""
    return tuple(dict.fromkeys(s for spec in METHOD_TABLE.values() for s in spec.settings))


# ----------------------------------------------------------------------------------------------
# Optimizers and precision
# ----------------------------------------------------------------------------------------------
# Bytes per trainable parameter of each --precision mode, with AdamW (check_experiment.py's memory
# plan uses the same numbers):  fp32   weights 4 + grads 4 + Adam moments 8                 = 16
#                               mixed  fp32 master 4 + fp32 grads 4 + moments 8 + half copy 2 = 18
#                               bf16   weights 2 + grads 2 + bf16 moments 2+2 + Kahan comp. 2 = 10
# A frozen parameter costs its weights only (4 in fp32/mixed, 2 in bf16).
PRECISION_BYTES = {"fp32": 16, "mixed": 18, "bf16": 10}
FROZEN_BYTES = {"fp32": 4, "mixed": 4, "bf16": 2}
PRECISION_HEADROOM = 0.8  # the share of the GPU the weights and optimizer may take (activations need the rest)


def precision_bytes(mode: str, n_trainable: int, n_frozen: int = 0) -> int:
    """Bytes for weights, gradients and optimizer state of a run in ``mode`` (see PRECISION_BYTES)."""
    return PRECISION_BYTES[mode] * n_trainable + FROZEN_BYTES[mode] * n_frozen


def resolve_precision(precision: str, dtype: str, n_trainable: int, n_frozen: int,
                      gpu_bytes: int | None) -> tuple[str, str | None]:
    """(mode, note) for --precision (auto|fp32|mixed|bf16) and the resolved --dtype (fp32|fp16|bf16).

    --dtype is what the model computes in; --precision how updates are kept. auto: fp32 for --dtype
    fp32; otherwise mixed (fp32 master weights, autocast), or the compensated bf16 mode when mixed does
    not fit ``gpu_bytes`` (None: no limit known), said in ``note``. Plain bf16 updates are never chosen."""
    if precision == "auto":
        if dtype == "fp32":
            return "fp32", None
        if dtype == "bf16" and gpu_bytes is not None and \
                precision_bytes("mixed", n_trainable, n_frozen) > PRECISION_HEADROOM * gpu_bytes:
            need = precision_bytes("mixed", n_trainable, n_frozen)
            return "bf16", (f"--dtype bf16: mixed precision (fp32 master weights, {PRECISION_BYTES['mixed']} bytes per "
                            f"trainable parameter, {need / 2**30:.1f} GiB) does not fit "
                            f"{PRECISION_HEADROOM:.0%} of the GPU's {gpu_bytes / 2**30:.1f} GiB; training in "
                            f"--precision bf16 (bf16 weights with Kahan-compensated updates, "
                            f"{PRECISION_BYTES['bf16']} bytes per parameter)")
        return "mixed", None
    if precision == "fp32" and dtype != "fp32":
        raise UsageError(f"--precision fp32 computes in fp32; --dtype {dtype} contradicts it (drop --dtype)")
    if precision == "mixed" and dtype == "fp32":
        raise UsageError("--precision mixed computes in bf16 or fp16: give --dtype bf16 or fp16 (or leave --dtype auto)")
    if precision == "bf16" and dtype != "bf16":
        raise UsageError(f"--precision bf16 keeps bf16 weights: it needs --dtype bf16 (or auto), not {dtype}")
    return precision, None


class CompensatedAdamW(torch.optim.Optimizer):
    """AdamW for bf16 weights that does not drop small updates: moments in bf16, and a bf16 Kahan
    compensation buffer c per parameter holding what the last rounding of the weight lost
    (Kahan 1965; as in torch-optimi's Kahan summation). Per step, in fp32:
        m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,  u = −lr·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε) − lr·wd·θ
        y = u + c,  θ' = bf16(θ + y),  c ← y − (θ' − θ)
    so the sum of the updates is kept to bf16 precision of c, not lost below half a bf16 step of θ."""

    def __init__(self, params, lr: float = 1e-5, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p, dtype=torch.bfloat16)
                    st["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.bfloat16)
                    st["comp"] = torch.zeros_like(p, dtype=torch.bfloat16)
                st["step"] += 1
                g = p.grad.float()
                m = st["exp_avg"].float().mul_(b1).add_(g, alpha=1 - b1)
                v = st["exp_avg_sq"].float().mul_(b2).addcmul_(g, g, value=1 - b2)
                st["exp_avg"].copy_(m)
                st["exp_avg_sq"].copy_(v)
                t = st["step"]
                denom = (v / (1 - b2 ** t)).sqrt_().add_(group["eps"])
                y = (m / (1 - b1 ** t)).div_(denom).mul_(-group["lr"])
                w = p.float()
                if group["weight_decay"]:
                    y.add_(w, alpha=-group["lr"] * group["weight_decay"])
                y.add_(st["comp"].float())
                p.copy_(w + y)
                st["comp"].copy_(y - (p.float() - w))
        return loss


class OptimizerSet:
    """Several optimizers stepped as one (Muon for the hidden matrices, AdamW for the rest)."""

    def __init__(self, optimizers: list):
        self.optimizers = optimizers

    def step(self):
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True):
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)


def muon_split(model: nn.Module, params: list) -> tuple[list, list]:
    """(Muon's, AdamW's) share of ``params``, as Keller Jordan's reference splits them: the hidden 2-D
    matrices go to Muon; the input embedding, the unembedding (output head), norms, biases and any
    other non-matrix parameter go to AdamW."""
    skip = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings())
            if m is not None and getattr(m, "weight", None) is not None}
    muon = [p for p in params if p.ndim == 2 and id(p) not in skip]
    ids = {id(p) for p in muon}
    return muon, [p for p in params if id(p) not in ids]


def make_optimizers(model: nn.Module, params: list, lr: float, optimizer: str, precision: str) -> list:
    """The run's optimizers: AdamW (weight decay 0, constant lr), its Kahan-compensated bf16 variant
    for --precision bf16, or torch.optim.Muon (Moonshot's "match_rms_adamw" lr scaling, so the AdamW
    --lr carries over; momentum 0.95, Nesterov, 5 Newton–Schulz steps) on the hidden matrices with
    AdamW on the rest."""
    adamw = CompensatedAdamW if precision == "bf16" else functools.partial(torch.optim.AdamW, weight_decay=0.0)
    if optimizer == "adamw":
        return [adamw(params, lr=lr)]
    muon, rest = muon_split(model, params)
    out = [torch.optim.Muon(muon, lr=lr, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")] if muon else []
    return out + ([adamw(rest, lr=lr)] if rest else [])


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
def read_samples(path: str, what: str) -> tuple[list[str], list[int], int]:
    """One sample per non-empty line (``read_lines``); duplicates (after ``normalise``) dropped.

    Returns (samples, line index of each sample, n_dropped); a line index is the 0-based position
    among the file's non-empty lines (what ``per_sample_nll.csv`` calls ``index``)."""
    try:
        lines = read_lines(path)
    except UsageError as e:
        hint = " (create it with create_datasets.py)" if not Path(path).exists() else ""
        raise UsageError(f"{what} data {e}{hint}") from None
    kept, dropped = drop_duplicates(lines)
    first: dict[str, int] = {}
    for i, line in enumerate(lines):
        first.setdefault(normalise(line), i)
    return kept, [first[normalise(s)] for s in kept], dropped


def count_overlap(forget: list[str], retain: list[str]) -> int:
    """Number of forget samples that also occur in retain, after ``normalise`` (case, Unicode form, whitespace)."""
    r = {normalise(s) for s in retain}
    return sum(normalise(s) in r for s in forget)


def split_eval(samples: list, fraction: float, seed: int) -> tuple[list, list]:
    """Seeded hold-out: (train, eval), disjoint, eval = max(1, round(fraction·n)) samples (none if 0)."""
    return split_off(samples, held_count(fraction, len(samples)), seed)


def held_count(fraction: float, n: int) -> int:
    """How many of n samples a held-out fraction takes: max(1, round(fraction·n)), 0 when fraction is 0."""
    return 0 if fraction <= 0 else max(1, round(fraction * n))


def split_off(samples: list, n_held: int, seed: int) -> tuple[list, list]:
    """(rest, held): the first ``n_held`` of a ``random.Random(seed)`` shuffle of the positions are
    held out; both keep the samples' order."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    held_idx = set(order[:n_held])
    rest = [s for i, s in enumerate(samples) if i not in held_idx]
    held = [s for i, s in enumerate(samples) if i in held_idx]
    return rest, held


def per_sample_csv(lines: dict, before: dict, after: dict) -> str:
    """per_sample_nll.csv: ``split,index,nll_before,nll_after``, a row per reported sample (lines:
    split → line indices; before/after: split → per-sample NLLs in the same order), floats as repr."""
    rows = ["split,index,nll_before,nll_after"]
    for split, idx in lines.items():
        for i, b, a in zip(idx, before[split].tolist(), after[split].tolist()):
            rows.append(f"{split},{i},{b!r},{a!r}")
    return "\n".join(rows) + "\n"


def make_schedule(n_forget: int, n_retain: int, batch_size: int, world_size: int, grad_accum: int,
                  epochs: int, seed: int) -> list[list[tuple[list[int], list[int]]]]:
    """Which samples each optimizer step uses: steps → micro-batches → (forget idx, retain idx).

    Indices are for the *global* micro-batch of ``batch_size · world_size`` samples; process k takes
    the slice [k·batch_size, (k+1)·batch_size). Each epoch walks a fresh seeded permutation of the
    forget set (wrapping round to fill the last micro-batch and a whole accumulation group), and
    pairs it with the next samples of an endless stream of seeded retain permutations.
    """
    g = torch.Generator().manual_seed(seed)
    gb = batch_size * world_size
    n_micro = math.ceil(n_forget / gb)
    n_micro = math.ceil(n_micro / grad_accum) * grad_accum
    need = n_micro * gb
    retain_stream: list[int] = []
    steps = []
    for _ in range(epochs):
        perm = torch.randperm(n_forget, generator=g).tolist()
        f = (perm * math.ceil(need / n_forget))[:need]
        while len(retain_stream) < need:
            retain_stream += torch.randperm(n_retain, generator=g).tolist()
        r, retain_stream = retain_stream[:need], retain_stream[need:]
        micro = [(f[i * gb:(i + 1) * gb], r[i * gb:(i + 1) * gb]) for i in range(n_micro)]
        steps += [micro[i:i + grad_accum] for i in range(0, n_micro, grad_accum)]
    return steps


def pad_batch(seqs: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists to the longest: (input_ids, attention_mask), both [B, T] long."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids.to(device), mask.to(device)


# ----------------------------------------------------------------------------------------------
# Layers, trainable parameters, the model wrapper
# ----------------------------------------------------------------------------------------------
def parse_layer_ids(spec: str) -> list[int]:
    """'5,6,7' → [5, 6, 7]; unparsable, negative or duplicated ids → UsageError."""
    try:
        ids = [int(x) for x in spec.replace(" ", "").split(",")]
    except ValueError:
        raise UsageError(f"--layer-id {spec!r} is not a comma-separated list of layer numbers, e.g. \"5,6,7\"") from None
    if any(i < 0 for i in ids):
        raise UsageError(f"--layer-id {spec!r}: layer numbers start at 0")
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise UsageError(f"--layer-id {spec!r} lists layer {dup[0]} more than once")
    return ids


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The ModuleList of decoder layers: GPT-NeoX ``gpt_neox.layers``, Llama/Mistral/Qwen
    ``model.layers``, GPT-2 ``transformer.h``, OPT ``model.decoder.layers``; None if unknown."""
    for path in KNOWN_LAYER_PATHS:
        mod = model
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            return path, mod
    return None


def select_trainable(model: nn.Module, spec: str, layers_path: str | None, layer_ids: list[int]) -> list[str]:
    """Names of the parameters to train: ``all``, ``layers`` (those of the target decoder layers)
    or a regular expression searched in each parameter name."""
    names = [n for n, _ in model.named_parameters()]
    if spec == "all":
        return names
    if spec == "layers":
        if layers_path is None:
            raise UsageError("--trainable layers needs decoder layers, which this architecture does not expose; "
                             "use --trainable all or a REGEX")
        prefixes = tuple(f"{layers_path}.{i}." for i in layer_ids)
        return [n for n in names if n.startswith(prefixes)]
    try:
        rx = re.compile(spec)
    except re.error as e:
        raise UsageError(f"--trainable {spec!r} is not a valid regular expression ({e})") from None
    chosen = [n for n in names if rx.search(n)]
    if not chosen:
        raise UsageError(f"--trainable {spec!r} matches no parameter name (e.g. {names[0]!r})")
    return chosen


class Runner(nn.Module):
    """Wraps the CausalLM so every pass goes through one module (the one accelerate/DDP wraps).

    ``forward(..., mode="lm")`` returns logits. ``mode="trunk"`` runs only the backbone and returns
    the outputs of the ``targets`` modules (decoder layers); a pre-hook on ``stop_before`` (the layer
    after the highest target layer) raises StopForward, so nothing above is computed.
    ``perturb(deltas)`` adds δ_k to the output of target module k (LAT).
    """

    def __init__(self, model: nn.Module, targets: dict | None = None, stop_before: nn.Module | None = None,
                 hidden_layers: list[int] | None = None, norm_layers: dict | None = None,
                 norm_stop: nn.Module | None = None):
        super().__init__()
        self.model = model
        targets = targets or {}
        self.target_ids = list(targets)
        # unknown architecture: "trunk" reads layers ``hidden_layers`` from output_hidden_states
        # (full forward); ``targets`` is then {"emb": input embeddings}, where δ goes
        self.hidden_layers, self.hidden_offset = hidden_layers, None
        self._captured: dict | None = None
        self._deltas: dict | None = None
        self._stop = False
        for key, module in targets.items():
            module.register_forward_hook(self._layer_hook(key))
        if stop_before is not None:
            stop_before.register_forward_pre_hook(self._stop_hook)
        # --norm-reg-lambda: mode="norms" returns the outputs of ``norm_layers`` (forward stopped above them)
        self.norm_ids, self._norms, self._norm_stop = list(norm_layers or {}), None, False
        for key, module in (norm_layers or {}).items():
            module.register_forward_hook(self._norm_hook(key))
        if norm_stop is not None:
            norm_stop.register_forward_pre_hook(self._norm_stop_hook)

    def _norm_hook(self, key):
        def hook(module, args, output):
            if self._norms is not None:
                self._norms[key] = output[0] if isinstance(output, tuple) else output
        return hook

    def _norm_stop_hook(self, module, args):
        if self._norm_stop:
            raise StopForward

    def _layer_hook(self, key):
        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            if self._deltas is not None and key in self._deltas:
                h = h + self._deltas[key].to(h.dtype)
                output = (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
            if self._captured is not None:
                self._captured[key] = h
            return output
        return hook

    def _stop_hook(self, module, args):
        if self._stop:
            raise StopForward

    @contextlib.contextmanager
    def perturb(self, deltas: dict | None):
        """Add δ_l (already zero on padding) to the output of each target layer inside the block."""
        self._deltas = deltas
        try:
            yield
        finally:
            self._deltas = None

    def forward(self, input_ids, attention_mask, mode: str = "lm"):
        if mode == "lm":
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        if mode == "norms":
            self._norms, self._norm_stop = {}, True
            try:
                self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            except StopForward:
                pass
            finally:
                captured, self._norms, self._norm_stop = self._norms, None, False
            return tuple(captured[l] for l in self.norm_ids)
        if self.hidden_layers is not None:
            return self._hidden_states(input_ids, attention_mask)
        self._captured, self._stop = {}, True
        try:
            self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except StopForward:
            pass
        finally:
            captured, self._captured, self._stop = self._captured, None, False
        return tuple(captured[l] for l in self.target_ids)

    def _hidden_states(self, input_ids, attention_mask):
        """h_l from output_hidden_states; whether entry 0 is the embedding is checked on the first call."""
        self._captured = {}
        try:
            hs = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                       output_hidden_states=True).hidden_states
            emb = self._captured.get("emb")
        finally:
            self._captured = None
        if self.hidden_offset is None:
            self.hidden_offset = hidden_states_offset(hs[0], emb) if emb is not None else 1
        return tuple(hs[l + self.hidden_offset] for l in self.hidden_layers)


# ----------------------------------------------------------------------------------------------
# LoRA (peft): adapters on chosen modules of chosen decoder layers, merged into the weights on save
# ----------------------------------------------------------------------------------------------
def parse_layer_list(spec: str, flag: str) -> list[int]:
    """'0-4' → [0, 1, 2, 3, 4]; '0,2,5-6' → [0, 2, 5, 6] (sorted, unique); anything else → UsageError."""
    out: set[int] = set()
    try:
        for part in spec.replace(" ", "").split(","):
            lo, _, hi = part.partition("-")
            lo_i, hi_i = int(lo), int(hi) if hi else int(lo)
            if lo_i < 0 or hi_i < lo_i:
                raise ValueError
            out.update(range(lo_i, hi_i + 1))
    except ValueError:
        raise UsageError(f"{flag} {spec!r} is not a list of layer numbers or ranges, e.g. \"0-4\" or \"0,2,4\"") from None
    return sorted(out)


def layer_range_text(layers: list[int] | None) -> str:
    """[0, 1, 2, 4] → '0-2,4' (None → 'all')."""
    if layers is None:
        return "all"
    runs: list[list[int]] = []
    for i in layers:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in runs)


@dataclass
class LoraSettings:
    """A --lora-r run's adapters, resolved against the architecture. The update of an adapted matrix
    W (out × in) is ΔW = B·A·(alpha/r), A: r × in, B: out × r (Hu et al. 2021, "LoRA: Low-Rank
    Adaptation of Large Language Models"); B starts at zero, so training starts from the base model."""
    r: int
    alpha: float
    dropout: float
    target_modules: list[str] | str   # names (suffix match) or "all-linear", as peft takes them
    layers: list[int] | None          # decoder layers with adapters (None: wherever the modules are)
    layers_pattern: str | None        # the layer container's name ("layers", "h"), for peft's layer match
    save_adapter: bool

    def peft_config(self):
        from peft import LoraConfig
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, bias="none",
                          target_modules=self.target_modules, layers_to_transform=self.layers,
                          layers_pattern=self.layers_pattern if self.layers is not None else None)

    def record(self, trainable_parameters: int, adapted: int) -> dict:
        """What run_report.yaml states about the adapters (under Training: lora)."""
        return {"r": self.r, "alpha": self.alpha, "scaling": self.alpha / self.r, "dropout": self.dropout,
                "target_modules": self.target_modules if isinstance(self.target_modules, str)
                else ",".join(self.target_modules),
                "layers": layer_range_text(self.layers), "adapted_matrices": adapted,
                "trainable_parameters": trainable_parameters, "merged": True,
                "adapter": "adapter/" if self.save_adapter else None}


def check_lora_flags(a: argparse.Namespace) -> None:
    """LoRA flags on their own and against --trainable (before anything is loaded)."""
    if a.lora_r < 0:
        raise UsageError("--lora-r must be >= 0 (0: no LoRA)")
    if a.lora_r == 0:
        given = [f for f, v in (("--lora-alpha", a.lora_alpha), ("--lora-dropout", a.lora_dropout),
                                ("--lora-target-modules", a.lora_target_modules), ("--lora-layers", a.lora_layers),
                                ("--save-adapter", a.save_adapter or None)) if v is not None]
        if given:
            raise UsageError(f"{given[0]} needs --lora-r R > 0 (LoRA is off)")
        return
    if a.trainable is not None:
        raise UsageError("--trainable and --lora-r exclude each other: with LoRA only the adapters train "
                         "(choose them with --lora-target-modules and --lora-layers)")
    if a.lora_alpha is not None and not (math.isfinite(a.lora_alpha) and a.lora_alpha > 0):
        raise UsageError("--lora-alpha must be > 0")
    if a.lora_dropout is not None and not 0 <= a.lora_dropout < 1:
        raise UsageError("--lora-dropout must be in [0, 1)")
    if a.lora_target_modules is not None and not [m for m in a.lora_target_modules.split(",") if m.strip()]:
        raise UsageError("--lora-target-modules is empty")


def resolve_lora(a: argparse.Namespace, spec: Method, layer_ids: list[int], skeleton: nn.Module,
                 found: tuple[str, nn.ModuleList] | None) -> LoraSettings:
    """The adapters of this run on this architecture: peft's default target modules for the model
    type unless named, the adapted layers (default: 0 … highest --layer-id for the representation
    methods, every layer otherwise), every name checked against the model (built without weights)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS
    model_type = getattr(skeleton.config, "model_type", "?")
    if a.lora_target_modules is None:
        if model_type not in DEFAULTS:
            raise UsageError(f"peft has no default LoRA target modules for model type {model_type!r}; "
                             f"name them with --lora-target-modules (e.g. q_proj,v_proj)")
        targets: list[str] | str = list(DEFAULTS[model_type])
    else:
        targets = [m.strip() for m in a.lora_target_modules.split(",") if m.strip()]
        targets = "all-linear" if targets == ["all-linear"] else targets
    layers_path = found[0] if found else None
    n_layers = len(found[1]) if found else 0
    if a.lora_layers is not None:
        if found is None:
            raise UsageError(f"--lora-layers needs decoder layers, and {type(skeleton).__name__} does not expose "
                             f"them (known layer containers: {', '.join(KNOWN_LAYER_PATHS)})")
        layers = parse_layer_list(a.lora_layers, "--lora-layers")
        if layers[-1] >= n_layers:
            raise UsageError(f"--lora-layers {layers[-1]} is outside the model: it has {n_layers} decoder layers "
                             f"(0–{n_layers - 1})")
        if spec.truncated and layers[-1] > max(layer_ids):
            raise UsageError(f"--lora-layers {layers[-1]} is above the top --layer-id {max(layer_ids)}: {a.method}'s "
                             f"forward stops there, so those adapters would never train")
    elif spec.uses_layers and found is not None:
        layers = list(range(max(layer_ids) + 1))
    else:
        layers = None
    if layers is not None and layers == list(range(n_layers)):
        layers = None  # every layer: no layer filter
    lora = LoraSettings(a.lora_r, a.lora_alpha if a.lora_alpha is not None else float(a.lora_r),
                        LORA_DROPOUT if a.lora_dropout is None else a.lora_dropout, targets, layers,
                        layers_path.split(".")[-1] if layers_path else None, a.save_adapter)
    if isinstance(targets, list):
        from transformers.pytorch_utils import Conv1D
        adaptable = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention, Conv1D)
        modules = dict(skeleton.named_modules())
        if layers is not None:
            modules = {n: m for n, m in modules.items() if n.startswith(tuple(f"{layers_path}.{i}." for i in layers))}
        where = f" in decoder layers {layer_range_text(layers)}" if layers is not None else ""
        for t in targets:
            hits = [m for n, m in modules.items() if n == t or n.endswith(f".{t}")]
            if not hits:
                examples = sorted({n.rsplit(".", 1)[-1] for n, m in modules.items() if isinstance(m, adaptable)})
                raise UsageError(f"--lora-target-modules {t!r} matches no module of {type(skeleton).__name__}{where} "
                                 f"(its linear layers: {', '.join(examples[:8])})")
            if not any(isinstance(m, adaptable) for m in hits):
                raise UsageError(f"--lora-target-modules {t!r} is a {type(hits[0]).__name__}; LoRA adapts linear, "
                                 f"embedding and convolution layers")
    return lora


def apply_lora(model: nn.Module, lora: LoraSettings | None, env: Env):
    """Wrap ``model`` with peft LoRA adapters (injected in place: ``model`` keeps its structure and
    its hooks, only the adapted Linear modules gain lora_A/lora_B); only the adapters require grad.
    Returns the PeftModel (None without LoRA). peft draws A from the torch RNG, already seeded."""
    if lora is None:
        return None
    from peft import get_peft_model
    if env.accelerator.distributed_type.name in ("FSDP", "DEEPSPEED"):
        raise UsageError("--lora-r with FSDP/DeepSpeed is not supported; LoRA fits one device per process: "
                         "launch data-parallel (accelerate launch --multi_gpu) instead")
    try:
        return get_peft_model(model, lora.peft_config())
    except (ValueError, TypeError) as e:
        raise UsageError(f"cannot add LoRA adapters to {type(model).__name__}: {first_line(e)}") from None


def merge_lora(peft_model, adapter_dir: Path | None) -> nn.Module:
    """Before saving: write the adapter to ``adapter_dir`` (peft's save_pretrained; None: not kept),
    then merge W ← W + B·A·(alpha/r) into every adapted matrix and drop the adapters
    (``merge_and_unload``). Returns the plain transformers model."""
    if adapter_dir is not None:
        peft_model.save_pretrained(adapter_dir)
    return peft_model.merge_and_unload(safe_merge=True)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=f"Unlearn a forget set from a causal LM ({len(METHOD_TABLE)} methods); writes the model, metrics.json "
                    "and run_report.yaml to --outdir.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="base model, hub ID or local directory")
    p.add_argument("--method", required=True, choices=tuple(METHOD_TABLE), help="unlearning method")
    p.add_argument("--forget-data", default="data/forget.txt", help="forget texts, one per line")
    p.add_argument("--retain-data", default="data/retain.txt", help="retain texts, one per line")
    p.add_argument("--outdir", default=None,
                   help="where the model goes (default: <outputs-dir>/<model>__<method>/unlearned_model)")
    p.add_argument("--outputs-dir", default="outputs", help="the folder the default --outdir is made in")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"], help="auto: CUDA > MPS > CPU")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="the dtype the model computes in (auto: bf16 on CUDA, fp16 on MPS, fp32 on CPU); "
                        "--precision says how the updates are kept")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate (AdamW, no weight decay; tar: --tar-lr)")
    p.add_argument("--epochs", type=int, default=1, help="epochs over the forget set")
    p.add_argument("--batch-size", type=int, default=4, help="forget (and retain) samples per step, per process")
    p.add_argument("--grad-accum-steps", type=int, default=1, help="gradient accumulation (not equivalent to a larger batch)")
    p.add_argument("--max-length", type=int, default=512, help="max tokens per sample")
    p.add_argument("--beta", type=float, default=0.1, help="inverse temperature for dpo/npo/simnpo")
    p.add_argument("--alpha", type=float, default=100.0, help="retain weight for rmu/cb/cb_lat")
    p.add_argument("--steering-coeff", type=float, default=20.0, help="steering coefficient c for rmu/cb")
    p.add_argument("--layer-id", default=None,
                   help=f"target decoder layers for rmu/cb/lat/cb_lat (default: {DEFAULT_LAYER_ID}); the layers of "
                        f"--norm-reg-lambda (default: all)")
    p.add_argument("--forget-weight", type=float, default=1.0, help="forget weight for grad_diff")
    p.add_argument("--lat-eps", type=float, default=0.1, help="L∞ perturbation budget for lat/cb_lat")
    p.add_argument("--lat-steps", type=int, default=5, help="adversary PGD steps for lat/cb_lat")
    p.add_argument("--lat-step-size", type=float, default=None,
                   help="adversary step s in δ ← clip(δ − s·sign(∇δ L), −ε, ε) (default: s = ε, the documented "
                        "update; the earlier smaller step was 2.5·ε/lat-steps)")
    p.add_argument("--eval-split", type=float, default=0.1, help="held-out (validation) fraction (0 disables)")
    p.add_argument("--test-split", type=float, default=0.0,
                   help="a further fraction of each file kept untouched by training and validation, reported only "
                        "at the end (0 disables)")
    p.add_argument("--split-seed", type=int, default=42,
                   help="seed of the held-out and test lines, fixed so that runs with different --seed are "
                        "evaluated on the same lines (42: the lines the default --seed held out before)")
    p.add_argument("--eval-interval", type=int, default=0, help="validate every N steps, printed as it happens (0 disables)")
    p.add_argument("--early-stop-patience", type=int, default=0,
                   help="stop when the validation gap has not improved for P validations and restore the best "
                        "weights (needs --eval-interval and --eval-split; 0 disables)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="clipping norm (0 disables)")
    p.add_argument("--seed", type=int, default=42, help="seed of training (initialisation, order, adversary)")
    p.add_argument("--seed-in-outdir", action="store_true",
                   help="default folder <outputs-dir>/<model>__<method>__seed<k>/unlearned_model (run_unlearn.sh SEEDS=...)")
    p.add_argument("--report-to", default="none", choices=["none", "tensorboard", "wandb", "trackio"],
                   help="experiment tracker (accelerate's): loss, validation curve, settings; its package must be "
                        "installed (e.g. uv run --with tensorboard --script unlearn.py ...)")
    p.add_argument("--tar-alpha", type=float, default=1.0,
                   help="tar: θ ← θ₀ − α·(θ_ft − θ₀), α scales the negated task vector (0: the original weights)")
    p.add_argument("--tar-lr", type=float, default=1e-5, help="tar: learning rate of the fine-tuning on the forget set")
    p.add_argument("--tar-steps", type=int, default=0,
                   help="tar: optimizer steps of the fine-tuning on the forget set (0: --epochs passes over it)")
    p.add_argument("--wt-noise-std", type=float, default=0.02,
                   help="wt_dist: std of the Gaussian noise added to every trainable weight (absolute), then "
                        "fine-tuning on the retain set")
    p.add_argument("--wt-reg-lambda", type=float, default=0.1,
                   help="wt_dist_reg: weight λ of the push away from the original weights, "
                        "L = NLL_retain − λ·b·tanh(RMS(θ − θ₀)/b)")
    p.add_argument("--wt-reg-bound", type=float, default=0.02,
                   help="wt_dist_reg: the level b where the push levels off (an RMS displacement the size of "
                        "typical weights); 0: the paper's unbounded −λ·RMS(θ − θ₀), which can diverge")
    p.add_argument("--norm-reg-lambda", type=float, default=0.0,
                   help="every method: add λ·mean over the --layer-id layers (all when unset) of "
                        "(‖h_l‖ − ‖h_l^orig‖)² per retain token, keeping activation norms near the original's "
                        "(0: off)")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "muon"],
                   help="adamw, or muon: torch.optim.Muon for the hidden 2-D matrices and AdamW for embeddings, "
                        "unembedding, norms and biases (same --lr; the default --outdir gets __muon)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "mixed", "bf16"],
                   help="how updates are kept: fp32; mixed (fp32 master weights and optimizer state, bf16/fp16 "
                        "autocast); bf16 (bf16 weights with Kahan-compensated AdamW, bf16 moments: "
                        f"{PRECISION_BYTES['bf16']} bytes/parameter). auto: fp32 for --dtype fp32, else mixed, or "
                        "bf16 when mixed does not fit the GPU (said in a warning)")
    p.add_argument("--cb-loss", default="cos", choices=["cos", "rr"],
                   help="cb/cb_lat loss: cos (turn toward a random direction) or rr (Circuit Breakers rerouting)")
    p.add_argument("--trainable", default=None,
                   help="all | layers (the --layer-id layers) | REGEX on parameter names "
                        "(default: layers for rmu/cb/lat/cb_lat, all for the others)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute activations in backward to save memory (default: on for CUDA/MPS, off on CPU)")
    p.add_argument("--max-samples", type=int, default=0, help="use only the first N (distinct, non-empty) lines of each data file (0: all)")
    p.add_argument("--forget-domain", default=None, help="recorded in run_report.yaml (default: the file name)")
    p.add_argument("--retain-domain", default=None, help="recorded in run_report.yaml (default: the file name)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off: safe default)")
    p.add_argument("--save-every", type=int, default=0,
                   help="keep a checkpoint of the training state (weights, optimizer, RNG, data position) every N "
                        "steps in <outdir>.checkpoint/, and on SIGTERM; removed once the model is saved (0: none)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <outdir>.checkpoint/ (same flags): equals the uninterrupted run")
    p.add_argument("--save-dtype", default="input", choices=["input", "fp32", "fp16", "bf16"],
                   help="dtype of the saved model: input = the dtype of the input's weights (a bf16 checkpoint is "
                        "saved in bf16 even when trained in fp32)")
    lora = p.add_argument_group("LoRA (peft): train low-rank adapters instead of the weights, merged into them on save")
    lora.add_argument("--lora-r", type=int, default=0, help="adapter rank R (0: no LoRA, train the weights)")
    lora.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha; the update is B·A·alpha/R (default: R)")
    lora.add_argument("--lora-dropout", type=float, default=None, help=f"dropout on the adapters' input (default: {LORA_DROPOUT})")
    lora.add_argument("--lora-target-modules", default=None,
                      help="comma-separated module names to adapt, e.g. query_key_value or q_proj,v_proj, or "
                           "all-linear (default: peft's default for the architecture)")
    lora.add_argument("--lora-layers", default=None,
                      help="decoder layers that get adapters, e.g. 0-4 or 0,2,4 (default: 0 up to the highest "
                           "--layer-id for rmu/cb/lat/cb_lat, every layer for the others)")
    lora.add_argument("--save-adapter", action="store_true",
                      help="also keep the adapter in <outdir>/adapter/ (PeftModel.from_pretrained loads it)")
    return p


def check_args(a: argparse.Namespace) -> None:
    """Numeric sanity of the flags (cheap; before anything is loaded)."""
    checks = [
        (a.lr > 0, "--lr must be > 0"), (a.epochs >= 1, "--epochs must be >= 1"),
        (a.batch_size >= 1, "--batch-size must be >= 1"), (a.grad_accum_steps >= 1, "--grad-accum-steps must be >= 1"),
        (a.max_length >= 2, "--max-length must be >= 2"), (a.beta > 0, "--beta must be > 0"),
        (0 <= a.eval_split < 1, "--eval-split must be in [0, 1)"), (a.eval_interval >= 0, "--eval-interval must be >= 0"),
        (a.grad_clip >= 0, "--grad-clip must be >= 0"), (a.lat_eps >= 0, "--lat-eps must be >= 0"),
        (a.lat_steps >= 0, "--lat-steps must be >= 0"), (a.alpha >= 0, "--alpha must be >= 0"),
        (a.max_samples >= 0, "--max-samples must be >= 0"),
        (0 <= a.test_split < 1, "--test-split must be in [0, 1)"),
        (a.eval_split + a.test_split < 1, "--eval-split plus --test-split must be below 1"),
        (a.early_stop_patience >= 0, "--early-stop-patience must be >= 0"),
        (a.lat_step_size is None or a.lat_step_size > 0, "--lat-step-size must be > 0"),
        (not a.early_stop_patience or (a.eval_interval > 0 and a.eval_split > 0),
         "--early-stop-patience needs validations: set --eval-interval N and --eval-split > 0"),
        (a.tar_lr > 0, "--tar-lr must be > 0"), (a.tar_steps >= 0, "--tar-steps must be >= 0"),
        (a.wt_noise_std >= 0, "--wt-noise-std must be >= 0"), (a.wt_reg_lambda >= 0, "--wt-reg-lambda must be >= 0"),
        (a.wt_reg_bound >= 0, "--wt-reg-bound must be >= 0"), (a.norm_reg_lambda >= 0, "--norm-reg-lambda must be >= 0"),
        (not (a.optimizer == "muon" and a.precision == "bf16"),
         "--optimizer muon keeps no compensated bf16 update: use --precision mixed (or fp32) with it"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UsageError(msg)
    for name in ("lr", "beta", "alpha", "steering_coeff", "forget_weight", "lat_eps", "grad_clip", "eval_split",
                 "test_split", "lat_step_size", "tar_alpha", "tar_lr", "wt_noise_std", "wt_reg_lambda", "wt_reg_bound",
                 "norm_reg_lambda"):
        if getattr(a, name) is not None and not math.isfinite(getattr(a, name)):
            raise UsageError(f"--{name.replace('_', '-')} must be finite")


def load_config(model_dir: Path, model_id: str, trust_remote_code: bool):
    """AutoConfig of a resolved model directory (``model_id``: what --model said), as one sentence on failure."""
    from transformers import AutoConfig
    if not (model_dir / "config.json").is_file():
        raise UsageError(f"--model {model_id} has no config.json; is it a Hugging Face model directory?")
    try:
        return AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - every failure becomes one sentence
        raise UsageError(f"cannot read the config of {model_id}: {first_line(e)}") from None


def default_outdir(model_id: str, method: str, outputs_dir: str = "outputs", seed: int | None = None,
                   optimizer: str = "adamw") -> Path:
    """<outputs_dir>/<model name>__<method>[__muon][__seed<k>]/unlearned_model (AdamW, the default, adds nothing)."""
    tag = (f"__{optimizer}" if optimizer != "adamw" else "") + (f"__seed{seed}" if seed is not None else "")
    return Path(outputs_dir) / f"{model_name(model_id)}__{method}{tag}" / "unlearned_model"


def warn(msg: str, warnings: list, main_process: bool = True) -> None:
    warnings.append(msg)
    if main_process:
        print(f"warning: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# The run, in phases: plan → data → model → method setup → train → save
# ----------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """The flags, checked and resolved before anything is read or loaded."""
    method: str
    spec: Method
    layer_ids: list[int]
    trainable: str
    outdir: Path


@dataclass
class Data:
    """The forget and retain lines (duplicates dropped) and their train / held-out / test split,
    drawn from --split-seed; ``lines`` maps each split's texts to their line indices in the file."""
    forget: list[str]
    retain: list[str]
    train_f: list[str]
    train_r: list[str]
    eval_f: list[str]
    eval_r: list[str]
    dropped: tuple[int, int]
    test_f: list[str] = field(default_factory=list)
    test_r: list[str] = field(default_factory=list)
    lines: dict = field(default_factory=dict)

    def sizes(self) -> dict:
        sizes = {"forget_size": len(self.forget), "retain_size": len(self.retain),
                 "forget_train": len(self.train_f), "retain_train": len(self.train_r),
                 "forget_eval": len(self.eval_f), "retain_eval": len(self.eval_r)}
        if self.test_f:
            sizes.update(forget_test=len(self.test_f), retain_test=len(self.test_r))
        return sizes


@dataclass
class Arch:
    """What the model's structure (built on the meta device, no weights) says about the run.
    ``fallback``: the decoder layers are unknown, h_l comes from output_hidden_states."""
    model_dir: Path
    layers_path: str | None
    trainable: str
    trainable_names: list[str]
    warnings: list[str]
    n_params: int
    fallback: bool = False
    lora: LoraSettings | None = None  # --lora-r: the adapters (trainable_names then come from peft)
    n_trainable: int = 0  # elements of the trainable parameters (LoRA: 0, the adapters are tiny)


@dataclass
class Env:
    """Device, precision and processes (accelerate), plus the warnings the run records."""
    accelerator: object
    device: str
    dtype: str
    weight_dtype: torch.dtype
    warnings: list[str]
    precision: str = "fp32"  # --precision, resolved: fp32 | mixed | bf16

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def warn(self, msg: str) -> None:
        warn(msg, self.warnings, self.main)

    def log(self, values: dict, step: int) -> None:
        """To the --report-to tracker, if there is one."""
        if self.accelerator.log_with:
            self.accelerator.log(values, step=step)


@dataclass
class Tokens:
    """Token ids of the training and held-out samples (samples shorter than 2 tokens dropped);
    ``lines``: for each reported split (forget_eval, retain_eval or, without a held-out split,
    forget_train, retain_train; then forget_test, retain_test) the line indices of its samples."""
    train_f: list[list[int]]
    train_r: list[list[int]]
    eval_f: list[list[int]]
    eval_r: list[list[int]]
    test_f: list[list[int]] = field(default_factory=list)
    test_r: list[list[int]] = field(default_factory=list)
    lines: dict = field(default_factory=dict)

    def reported(self) -> dict:
        """split → token ids of the splits whose per-sample NLLs are reported, in ``lines`` order."""
        by_name = {"forget_eval": self.eval_f, "retain_eval": self.eval_r, "forget_train": self.train_f,
                   "retain_train": self.train_r, "forget_test": self.test_f, "retain_test": self.test_r}
        return {k: by_name[k] for k in self.lines}


@dataclass
class RunInfo:
    """What run_report.yaml states besides the flags and the metrics."""
    n_params: int
    dtype: str
    device: str
    processes: int
    trainable: str
    layer_ids: list[int]
    gradient_checkpointing: bool
    sizes: dict
    lora: dict | None = None  # LoraSettings.record(...)
    precision: str = "fp32"


class Batch(NamedTuple):
    ids: torch.Tensor
    mask: torch.Tensor
    idx: list[int]


def run(a: argparse.Namespace) -> dict:
    """Validate, train, save. Returns the metrics dict. Raises UsageError / NonFiniteLoss."""
    t_start = time.time()
    plan = make_plan(a)                                   # flags, method, layers, output folder
    data = load_data(a)                                   # forget/retain lines and the held-out split
    arch = inspect_architecture(a, plan)                  # decoder layers and trainable names (no weights)
    env = start_accelerator(a, plan, arch, data)          # device, precision, processes, warnings
    check_output(a, plan, arch, env)                      # --outdir: allowed, writable, room for the model
    model, tokenizer, pad_id = load_model(a, arch, env)
    peft_model = apply_lora(model, arch.lora, env)        # --lora-r: adapters injected into model (peft)
    trainable_names = [n for n, p in model.named_parameters() if p.requires_grad] if peft_model else arch.trainable_names
    tokens = tokenize_data(tokenizer, data, a.max_length)
    gc_on = prepare_for_training(model, trainable_names, a, env)
    trainer = setup_method(a, plan, model, tokens, pad_id, env, peft_model)   # what METHOD_TABLE says it needs
    a.checkpoint_dir = checkpoint_dir(plan.outdir)                          # --save-every / --resume
    history = train(a, trainer, env)
    metrics = make_metrics(a, history, bool(tokens.eval_f), time.time() - t_start, env)
    info = RunInfo(n_params=arch.n_params, dtype=env.dtype, device=env.device,
                   processes=env.accelerator.num_processes, trainable=arch.trainable, layer_ids=plan.layer_ids,
                   gradient_checkpointing=gc_on, sizes=data.sizes(), precision=env.precision,
                   lora=arch.lora.record(sum(p.numel() for p in trainer.params),
                                         sum(n.endswith(".lora_A.default.weight") for n, _ in model.named_parameters()))
                   if arch.lora else None)
    per_sample = per_sample_csv(tokens.lines, history.samples_before, history.samples_after)
    trainer.save_dtype = resolve_save_dtype(a.save_dtype, arch.model_dir)   # --save-dtype (default: the input's)
    save(plan, trainer, tokenizer, env, metrics, run_report(a, info, metrics), {"per_sample_nll.csv": per_sample})
    if (a.save_every or a.resume) and env.main:                            # the run is complete: no resume needed
        shutil.rmtree(checkpoint_dir(plan.outdir), ignore_errors=True)
    if env.accelerator.log_with:
        env.accelerator.end_training()
    metrics["outdir"] = str(plan.outdir)
    return metrics


def make_plan(a: argparse.Namespace) -> Plan:
    """Numeric flags, layer ids, method and output folder: cheap checks before anything is read."""
    check_args(a)
    check_lora_flags(a)
    spec = METHOD_TABLE[a.method]
    layer_ids = parse_layer_ids(a.layer_id or DEFAULT_LAYER_ID)
    if a.lora_r and spec.full_params:
        raise UsageError(f"{a.method} changes every weight directly and needs full parameters: drop --lora-r")
    if a.early_stop_patience and spec.finish:
        raise UsageError(f"--early-stop-patience does not apply to {a.method}: its weights are only final after "
                         f"the last step")
    outdir = Path(a.outdir) if a.outdir else default_outdir(a.model, a.method, a.outputs_dir,
                                                            a.seed if a.seed_in_outdir else None, a.optimizer)
    # replaced only when empty or an earlier output (it holds run_report.yaml), never the input model
    check_outdir(outdir, "run_report.yaml", inputs=(Path(a.model).expanduser(),))
    trainable = "lora" if a.lora_r else a.trainable or spec.default_trainable()
    return Plan(a.method, spec, layer_ids, trainable, outdir)


def load_data(a: argparse.Namespace) -> Data:
    """Read both files, refuse overlap, keep --max-samples, split off the held-out (validation) and
    test samples. The split is drawn from --split-seed, never --seed, so runs that differ in the
    seed are evaluated on the same lines; the test lines come out of what validation left."""
    forget, idx_f, dup_f = read_samples(a.forget_data, "forget")
    retain, idx_r, dup_r = read_samples(a.retain_data, "retain")
    overlap = count_overlap(forget, retain)
    if overlap:
        raise UsageError(f"{overlap} forget sample(s) also appear in the retain data (after normalising case and "
                         f"whitespace); remove them from one of the files")
    if a.max_samples:
        forget, retain = forget[:a.max_samples], retain[:a.max_samples]
    train_f, eval_f = split_eval(forget, a.eval_split, a.split_seed)
    train_r, eval_r = split_eval(retain, a.eval_split, a.split_seed + 1)
    test_f, test_r = [], []
    if a.test_split:
        train_f, test_f = split_off(train_f, held_count(a.test_split, len(forget)), a.split_seed + 2)
        train_r, test_r = split_off(train_r, held_count(a.test_split, len(retain)), a.split_seed + 3)
    if not train_f or not train_r:
        which = "forget" if not train_f else "retain"
        splits = f"--eval-split {a.eval_split} and --test-split {a.test_split} leave" if a.test_split else \
            f"--eval-split {a.eval_split} leaves"
        raise UsageError(f"{splits} no {which} samples to train on "
                         f"({len(forget) if which == 'forget' else len(retain)} in total)")
    line_f, line_r = dict(zip(forget, idx_f)), dict(zip(retain, idx_r))  # texts are unique (duplicates dropped)
    lines = {"forget_eval": [line_f[x] for x in eval_f], "retain_eval": [line_r[x] for x in eval_r]} if eval_f else \
        {"forget_train": [line_f[x] for x in train_f], "retain_train": [line_r[x] for x in train_r]}
    if test_f:
        lines.update(forget_test=[line_f[x] for x in test_f], retain_test=[line_r[x] for x in test_r])
    return Data(forget, retain, train_f, train_r, eval_f, eval_r, (dup_f, dup_r), test_f, test_r, lines)


def inspect_architecture(a: argparse.Namespace, plan: Plan) -> Arch:
    """Build the model on the meta device (no weights): find its decoder layers, check --layer-id,
    choose the trainable parameters. A hub ID is resolved to its local snapshot once, here."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    model_dir = resolve_model_dir(a.model, a.trust_remote_code)
    config = load_config(model_dir, a.model, a.trust_remote_code)
    try:
        with init_empty_weights():
            skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=a.trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"{a.model} is not a causal language model transformers can build "
                         f"({first_line(e)})") from None
    found = find_decoder_layers(skeleton)
    layers_path, trainable, warnings = (found[0] if found else None), plan.trainable, []
    if a.norm_reg_lambda and found is None:
        raise UsageError(f"--norm-reg-lambda needs the decoder layers, and {type(skeleton).__name__} does not expose "
                         f"them (known layer containers: {', '.join(KNOWN_LAYER_PATHS)})")
    if a.norm_reg_lambda and a.layer_id:
        bad = [i for i in plan.layer_ids if i >= len(found[1])]
        if bad:
            raise UsageError(f"--layer-id {bad[0]} is outside the model: it has {len(found[1])} decoder layers "
                             f"(0–{len(found[1]) - 1})")
    if (plan.spec.uses_layers or trainable == "layers") and found is None:
        arch = type(skeleton).__name__
        if not (plan.spec.embedding_fallback and a.trainable != "layers"):
            raise UsageError(f"{plan.method} needs the decoder layers, and {arch} is not a supported architecture "
                             f"(known layer containers: {', '.join(KNOWN_LAYER_PATHS)})")
        trainable = "lora" if trainable == "lora" else a.trainable or "all"
        n_layers = getattr(config, "num_hidden_layers", None)
        if plan.spec.reads_hidden:  # without it --layer-id is ignored here
            if not isinstance(n_layers, int):
                raise UsageError(f"{plan.method}: cannot find the decoder layers of {arch}, nor their number in its "
                                 f"config")
            bad = [i for i in plan.layer_ids if i >= n_layers]
            if bad:
                raise UsageError(f"--layer-id {bad[0]} is outside the model: it has {n_layers} layers "
                                 f"(0–{n_layers - 1})")
        lost = plan.spec.fallback_changes(a.layer_id or DEFAULT_LAYER_ID)
        warnings.append(f"{plan.method}: cannot find the decoder layers of {arch} (known: "
                        f"{', '.join(KNOWN_LAYER_PATHS)}); falling back: {'; '.join(lost)}; "
                        f"training --trainable {trainable}")
    elif plan.spec.uses_layers or trainable == "layers":
        n_layers = len(found[1])
        bad = [i for i in plan.layer_ids if i >= n_layers]
        if bad:
            raise UsageError(f"--layer-id {bad[0]} is outside the model: it has {n_layers} decoder layers "
                             f"(0–{n_layers - 1})")
    n_params = sum(p.numel() for p in skeleton.parameters())
    if trainable == "lora":
        lora = resolve_lora(a, plan.spec, plan.layer_ids, skeleton, found)
        return Arch(model_dir, layers_path, trainable, [], warnings, n_params,
                    fallback=found is None and plan.spec.uses_layers, lora=lora)
    names = select_trainable(skeleton, trainable, layers_path, plan.layer_ids)
    if not names:
        raise UsageError(f"--trainable {trainable!r} selects no parameters")
    chosen = set(names)
    return Arch(model_dir, layers_path, trainable, names, warnings, n_params,
                fallback=found is None and plan.spec.uses_layers,
                n_trainable=sum(p.numel() for n, p in skeleton.named_parameters() if n in chosen))


def check_fsdp_device(device: str, environ) -> None:
    """FSDP (``accelerate launch`` with an FSDP config, e.g. configs/accelerate_fsdp.yaml) needs CUDA GPUs:
    accelerate refuses FSDP on the CPU, and its ``--cpu`` flag silently drops the FSDP config and runs a
    single process. One error line instead of accelerate's traceback (docs/scale.md: what was tested)."""
    if environ.get("ACCELERATE_USE_FSDP", "").strip().lower() in ("1", "true", "yes") and device != "cuda":
        raise UsageError(f"FSDP needs CUDA GPUs and this run is on {device}: run unlearn.py as one process "
                         "(uv run --script unlearn.py ...), or on GPUs data-parallel without sharding (accelerate "
                         "launch --multi_gpu); see docs/scale.md")


def start_accelerator(a: argparse.Namespace, plan: Plan, arch: Arch, data: Data) -> Env:
    """Device and precision, accelerate (data parallel when launched so), the seed, the warnings.

    --dtype is what the model computes in, --precision how the updates are kept (resolve_precision):
    fp32; mixed = fp32 master weights and optimizer state with bf16/fp16 autocast (fp16 with loss
    scaling); bf16 = bf16 weights with Kahan-compensated AdamW (CompensatedAdamW)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import set_seed
    device = pick_device(a.device)
    dtype = pick_dtype(a.dtype, device)
    if a.dtype == "auto" and a.precision != "auto":  # the dtype the asked precision computes in
        dtype = "fp32" if a.precision == "fp32" else "bf16" if a.precision == "bf16" or dtype == "fp32" else dtype
    gpu_bytes = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory if device == "cuda" else None
    precision, note = resolve_precision(a.precision, dtype, arch.n_trainable, arch.n_params - arch.n_trainable,
                                        gpu_bytes)
    weight_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    tracker = None if a.report_to == "none" else a.report_to
    if tracker:  # optional packages, never needed on the default path
        import importlib.util
        need = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "trackio": ("trackio",)}[tracker]
        if not any(importlib.util.find_spec(m) for m in need):
            raise UsageError(f"--report-to {tracker} needs the {need[0]} package, which is not installed "
                             f"(e.g. uv run --with {need[0]} --script unlearn.py ...)")
    from accelerate.utils import ProjectConfiguration
    check_fsdp_device(device, os.environ)
    try:
        accelerator = Accelerator(
            cpu=(device == "cpu"), mixed_precision=dtype if precision == "mixed" else "no",
            gradient_accumulation_steps=a.grad_accum_steps, log_with=tracker,
            project_config=ProjectConfiguration(project_dir=str(plan.outdir.parent),
                                                logging_dir=str(plan.outdir.parent / "logs")),
            kwargs_handlers=[DistributedDataParallelKwargs(
                find_unused_parameters=plan.spec.find_unused_parameters(arch.trainable))])
    except (ValueError, RuntimeError, ImportError, NotImplementedError) as e:  # a launch setting it cannot run
        raise UsageError(f"accelerate cannot start with this launch configuration ({first_line(e)})") from None
    if tracker:
        settings = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(a).items()}
        accelerator.init_trackers(f"unlearn-{plan.method}", config=settings)
    env = Env(accelerator, device, dtype, weight_dtype, [], precision)
    for w in arch.warnings + ([note] if note else []):
        env.warn(w)
    dup_f, dup_r = data.dropped
    if dup_f or dup_r:
        env.warn(f"dropped duplicate lines: {dup_f} in the forget data, {dup_r} in the retain data")
    if a.grad_accum_steps > 1:
        env.warn(f"--grad-accum-steps {a.grad_accum_steps}: gradient accumulation is not equivalent to a larger "
                 f"batch (per-sample means, clipping and the token-weighted representation losses differ); results "
                 f"will not match a run with --batch-size {a.batch_size * a.grad_accum_steps}")
    parser = build_parser()
    defaults = {name: parser.get_default(name) for name in method_flags()}
    reads_layers = arch.trainable == "layers" or a.norm_reg_lambda > 0
    for w in plan.spec.warnings(a, defaults, used=("layer_id",) if reads_layers else ()):
        env.warn(w)
    if dtype == "fp16":
        env.warn("fp16 in use: fp32 master weights with fp16 autocast and loss scaling; numbers differ from "
                 "fp32/bf16 runs and overflow can skip steps")
    set_seed(a.seed)
    return env


def check_output(a: argparse.Namespace, plan: Plan, arch: Arch, env: Env) -> None:
    """Before any weights are loaded: --outdir (checked by make_plan) holds no input, nor is it in
    a hub model's snapshot; its disk has room for the model (≈ parameter bytes). Folders left by a
    killed run next to it are named."""
    check_outdir(plan.outdir, "run_report.yaml", inputs=(arch.model_dir,))
    for what, path in (("the input model", arch.model_dir), ("the forget data", Path(a.forget_data)),
                       ("the retain data", Path(a.retain_data))):
        if plan.outdir.resolve() in path.resolve().parents:
            raise UsageError(f"--outdir {plan.outdir} contains {what} ({path}), which replacing it would delete; "
                             "choose a folder that holds no input")
    existing = plan.outdir
    while not existing.exists():
        existing = existing.parent
    # the weights (fp16 runs save fp16) + 16 MiB for tokenizer, config and reports
    need = arch.n_params * (2 if env.dtype in ("bf16", "fp16") else 4) + 2**24
    free = shutil.disk_usage(existing).free
    if free < need:
        def size(n):
            return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
        raise UsageError(f"not enough free disk space for the model under {existing}: it needs about {size(need)}, "
                         f"{size(free)} are free")
    if plan.outdir.parent.is_dir():
        stale = sorted(plan.outdir.parent.glob(f".{plan.outdir.name}.tmp-*"))
        stale += sorted(plan.outdir.parent.glob(f".{plan.outdir.name}.old-*"))
        for path in stale:
            env.warn(f"{path} was left by an interrupted run ('.old-' holds an earlier output); "
                     f"remove it (or move it back) when you no longer need it")


def load_model(a: argparse.Namespace, arch: Arch, env: Env):
    """Tokenizer and weights (safetensors only); the padding id. Returns (model, tokenizer, pad_id)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(arch.model_dir, trust_remote_code=a.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(arch.model_dir, dtype=env.weight_dtype, use_safetensors=True,
                                                     trust_remote_code=a.trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"cannot load {a.model} (safetensors weights and a tokenizer are required): "
                         f"{first_line(e)}") from None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return model, tokenizer, 0 if pad_id is None else pad_id


def tokenize_data(tokenizer, data: Data, max_length: int) -> Tokens:
    """Token ids, truncated to ``max_length``; samples shorter than 2 tokens have no next-token target."""
    kept: dict[str, list[int]] = {}  # split → positions of the samples that are long enough

    def ids(texts, split):
        enc = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"] if texts else []
        kept[split] = [i for i, x in enumerate(enc) if len(x) >= 2]
        return [enc[i] for i in kept[split]]
    tokens = Tokens(ids(data.train_f, "forget_train"), ids(data.train_r, "retain_train"),
                    ids(data.eval_f, "forget_eval"), ids(data.eval_r, "retain_eval"),
                    ids(data.test_f, "forget_test"), ids(data.test_r, "retain_test"))
    tokens.lines = {split: [idx[i] for i in kept[split]] for split, idx in data.lines.items()}
    if not tokens.train_f or not tokens.train_r:
        raise UsageError("every training sample of the forget or retain set is shorter than 2 tokens")
    return tokens


def prepare_for_training(model: nn.Module, trainable_names: list[str], a: argparse.Namespace, env: Env) -> bool:
    """Freeze all but the trainable parameters; gradient checkpointing (default on for CUDA/MPS).
    Returns whether checkpointing is on."""
    trainable = set(trainable_names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
    gc_on = a.gradient_checkpointing if a.gradient_checkpointing is not None else env.device in ("cuda", "mps")
    if gc_on and getattr(model, "supports_gradient_checkpointing", False):
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
        # HF makes embedding outputs require grad for reentrant checkpointing; non-reentrant does not
        # need it, and it would make backward run through the frozen layers below the target layers
        if hasattr(model, "disable_input_require_grads"):
            model.disable_input_require_grads()
    elif gc_on:
        env.warn(f"{type(model).__name__} does not support gradient checkpointing; training without it")
        gc_on = False
    model.train()
    return gc_on


def setup_method(a: argparse.Namespace, plan: Plan, model: nn.Module, tokens: Tokens, pad_id: int, env: Env,
                 peft_model=None):
    """What the method needs (METHOD_TABLE): hooks on the target layers (and the stop of a truncated
    forward), the optimizer, log π_ref once with the initial weights, the frozen copy for h_orig.
    With LoRA (``peft_model``) log π_ref and h_orig come from the model with its adapters disabled:
    no copy of any parameter."""
    spec, layer_ids = plan.spec, plan.layer_ids
    found = find_decoder_layers(model)
    layers_path, layers = found if found is not None else (None, None)
    targets, stop_before = {}, None
    if spec.uses_layers and layers is not None:
        targets = {l: layers[l] for l in layer_ids}
        if spec.truncated and max(layer_ids) + 1 < len(layers):
            stop_before = layers[max(layer_ids) + 1]
    elif spec.uses_layers:  # fallback (warned about): output_hidden_states; δ on the input embeddings
        targets = {"emb": model.get_input_embeddings()}
    norm_layers, norm_stop = {}, None
    if a.norm_reg_lambda:  # decoder layers exist (inspect_architecture checked)
        norm_ids = parse_layer_ids(a.layer_id) if a.layer_id else list(range(len(layers)))
        norm_layers = {l: layers[l] for l in norm_ids}
        norm_stop = layers[max(norm_ids) + 1] if max(norm_ids) + 1 < len(layers) else None
    runner = Runner(model, targets, stop_before, hidden_layers=layer_ids if spec.uses_layers and layers is None else None,
                    norm_layers=norm_layers, norm_stop=norm_stop)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizers = make_optimizers(model, params, getattr(a, spec.lr_flag), a.optimizer, env.precision)
    wrapped, *optimizers = env.accelerator.prepare(runner, *optimizers)
    optimizer = optimizers[0] if len(optimizers) == 1 else OptimizerSet(optimizers)
    t = Trainer(a, spec, runner, wrapped, optimizer, params, env.accelerator, tokens, pad_id)
    t.peft = peft_model
    if peft_model is None:  # θ₀ on the CPU: dist_from_start, tar's task vector
        t.start = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
    if spec.anchor:  # θ₀ on the device, read by the loss every step
        t.anchor = [p.detach().clone() for p in params]
    if norm_layers:
        with t.adapters_off():
            t.ref_norms = t.precompute_norms()
    for split in spec.ref:
        with t.adapters_off():
            t.ref[split] = t.precompute_ref(split)
    if spec.frozen and peft_model is None:  # only the trainable parameters the truncated forward reaches
        above = tuple(f"{layers_path}.{i}." for i in range(max(layer_ids) + 1, len(layers))) if layers else ()
        t.frozen = {f"model.{n}": p.detach().clone() for n, p in model.named_parameters()
                    if p.requires_grad and not n.startswith(above)}
    t.control = random_control_vector(t.hidden_size, a.steering_coeff, a.seed).to(t.dev)
    return t


class Trainer:
    """One run's model, optimizer and method state. ``loss(fi, ri)`` is the method's loss on the
    micro-batch of training samples fi (forget) and ri (retain); the step functions of
    METHOD_TABLE call the passes below."""

    def __init__(self, a, spec: Method, runner: Runner, wrapped, optimizer, params, accelerator, tokens: Tokens,
                 pad_id: int):
        self.a, self.spec, self.runner, self.wrapped = a, spec, runner, wrapped
        self.optimizer, self.params, self.accelerator = optimizer, params, accelerator
        self.tokens, self.pad_id, self.dev = tokens, pad_id, accelerator.device
        self.hidden_size = runner.model.get_input_embeddings().embedding_dim
        self.ref: dict[str, torch.Tensor] = {}
        self.frozen: dict | None = None
        self.tick = lambda where: None  # progress inside one step (set by the training loop)
        self.peft = None  # LoRA: the PeftModel whose adapters are switched off for h_orig and log π_ref
        self.control: torch.Tensor | None = None
        self.start: dict = {}  # name → θ₀ (CPU) of the trainable parameters (not with LoRA: ΔW = s·B·A)
        self.anchor: list | None = None  # θ₀ on the device, aligned with params (Method.anchor)
        self.ref_norms: list | None = None  # --norm-reg-lambda: ‖h_l^orig‖ [L, T_i] per retain training sample

    def adapters_off(self):
        """LoRA: the base model (adapters disabled) inside the block; without LoRA a no-op."""
        return self.peft.disable_adapter() if self.peft is not None else contextlib.nullcontext()

    def batch(self, tok: list[list[int]], idx: list[int]) -> Batch:
        return Batch(*pad_batch([tok[i] for i in idx], self.pad_id, self.dev), idx)

    def loss(self, fi: list[int], ri: list[int]) -> torch.Tensor:
        f, r = self.batch(self.tokens.train_f, fi), self.batch(self.tokens.train_r, ri)
        loss = self.spec.step(self, f, r)
        if self.a.norm_reg_lambda:
            loss = loss + self.a.norm_reg_lambda * self.norm_reg(r)
        return loss

    def norm_reg(self, b: Batch) -> torch.Tensor:
        """norm_reg_loss of the retain micro-batch against the original model's norms (precomputed)."""
        h = self.wrapped(b.ids, b.mask, mode="norms")
        ref = torch.zeros((len(h),) + tuple(b.ids.shape), device=self.dev)
        for j, i in enumerate(b.idx):
            n = self.ref_norms[i]
            ref[:, j, :n.shape[1]] = n.to(self.dev)
        return norm_reg_loss(h, ref, b.mask)

    @torch.no_grad()
    def precompute_norms(self) -> list:
        """‖h_l‖ of every retain training sample at the norm layers, initial weights: one [L, T_i] per sample."""
        out, tok = [], self.tokens.train_r
        with eval_mode(self.runner.model), self.accelerator.autocast():
            for i in range(0, len(tok), self.a.batch_size):
                ids, mask = pad_batch(tok[i:i + self.a.batch_size], self.pad_id, self.dev)
                norms = torch.stack([x.float().norm(dim=-1) for x in self.runner(ids, mask, mode="norms")]).cpu()
                out += [norms[:, j, :len(tok[i + j])] for j in range(len(ids))]
        return out

    @torch.no_grad()
    def dist_from_start(self) -> float:
        """‖θ − θ₀‖₂ over every weight: the trainable parameters against their CPU copy, or with LoRA the
        merged update ΔW = s·B·A of every adapted matrix (the frozen base is θ₀)."""
        total = 0.0
        if self.peft is not None:
            for m in self.runner.model.modules():
                if isinstance(getattr(m, "lora_A", None), nn.ModuleDict) and "default" in m.lora_A:
                    d = m.lora_B["default"].weight.float() @ m.lora_A["default"].weight.float()
                    total += float((d * m.scaling["default"]).pow(2).sum())
            return math.sqrt(total)
        for name, p in self.runner.model.named_parameters():
            if name in self.start:
                total += float((p.detach().float() - self.start[name].to(p.device).float()).pow(2).sum())
        return math.sqrt(total)

    def logprobs(self, b: Batch):
        return sequence_logprobs(self.wrapped(b.ids, b.mask, mode="lm"), b.ids, b.mask)

    def nll(self, b: Batch) -> torch.Tensor:
        return mean_nll(*self.logprobs(b))

    def hidden(self, b: Batch):
        return self.wrapped(b.ids, b.mask, mode="trunk")

    def h_orig(self, b: Batch):
        with torch.no_grad(), self.accelerator.autocast(), eval_mode(self.runner.model):
            if self.peft is not None:  # LoRA: the same model with its adapters switched off
                with self.adapters_off():
                    return self.runner(b.ids, b.mask, mode="trunk")
            return torch.func.functional_call(self.runner, self.frozen, args=(b.ids, b.mask),
                                              kwargs={"mode": "trunk"}, strict=False)

    def adversary(self, b: Batch) -> dict:
        """PGD on δ at the target layers, minimising the forget NLL; returns δ* (detached)."""
        a = self.a
        deltas = {k: torch.zeros(b.ids.shape + (self.hidden_size,), device=self.dev, requires_grad=True)
                  for k in self.runner.target_ids}
        step = lat_step_size(a.lat_eps, a.lat_step_size)
        for j in range(a.lat_steps):
            self.tick(f"adversary {j + 1}/{a.lat_steps}")
            with self.runner.perturb(deltas), self.accelerator.autocast():
                nll = mean_nll(*sequence_logprobs(self.runner(b.ids, b.mask, mode="lm"), b.ids, b.mask))
            grads = torch.autograd.grad(nll, list(deltas.values()))
            deltas = {k: pgd_update(d.detach(), g, step, a.lat_eps, b.mask).requires_grad_()
                      for (k, d), g in zip(deltas.items(), grads)}
        return {k: d.detach() for k, d in deltas.items()}

    def precompute_ref(self, split: str) -> torch.Tensor:
        tok = self.tokens.train_f if split == "forget" else self.tokens.train_r
        return precompute_logprobs(self.runner, tok, self.pad_id, self.dev, self.a.batch_size, self.accelerator,
                                   self.accelerator.is_main_process, f"log π_ref {split}")

    def evaluate(self) -> dict:
        """Validation: forget_NLL and retain_NLL of the held-out split (the training data without one)."""
        tk = self.tokens
        if not tk.eval_f:  # no held-out split: report on the training data
            return eval_nll(self.runner, tk.train_f, tk.train_r, self.pad_id, self.dev, self.a.batch_size,
                            self.accelerator)
        return eval_nll(self.runner, tk.eval_f, tk.eval_r, self.pad_id, self.dev, self.a.batch_size,
                        self.accelerator)

    def sample_nlls(self) -> dict:
        """split → per-sample NLLs (float64, CPU) of every reported split (validation and test)."""
        return {split: sample_nlls(self.runner, tok, self.pad_id, self.dev, self.a.batch_size, self.accelerator,
                                   f"per-sample NLL, {split}")
                for split, tok in self.tokens.reported().items()}


@dataclass
class History:
    """What training produced besides the weights: held-out NLLs, losses, step times; per-sample
    NLLs of the reported splits before and after; early stopping's outcome."""
    before: dict
    after: dict
    curve: list[dict]
    losses: list[float]
    step_times: list[float]
    train_s: float
    steps: int
    samples_before: dict = field(default_factory=dict)
    samples_after: dict = field(default_factory=dict)
    early_stopping: dict | None = None
    dist_from_start: float = 0.0  # ‖θ − θ₀‖ of the final weights


def loop_schedule(a: argparse.Namespace, spec: Method, n_forget: int, n_retain: int, world: int) -> list:
    """The loop's steps: --epochs over the forget set, or the row's step flag (e.g. --tar-steps) when set."""
    n = getattr(a, spec.steps_flag) if spec.steps_flag else 0
    if not n:
        return make_schedule(n_forget, n_retain, a.batch_size, world, a.grad_accum_steps, a.epochs, a.seed)
    per_epoch = len(make_schedule(n_forget, n_retain, a.batch_size, world, a.grad_accum_steps, 1, a.seed))
    return make_schedule(n_forget, n_retain, a.batch_size, world, a.grad_accum_steps, -(-n // per_epoch),
                         a.seed)[:n]


def train(a: argparse.Namespace, t: Trainer, env: Env) -> History:
    """The optimisation loop (accelerate: accumulation, mixed precision, data parallel), with the
    held-out NLL before, after and every --eval-interval steps."""
    from tqdm.auto import tqdm
    acc, world, rank = env.accelerator, env.accelerator.num_processes, env.accelerator.process_index
    schedule = loop_schedule(a, t.spec, len(t.tokens.train_f), len(t.tokens.train_r), world)
    n_steps = len(schedule)
    prefix = "eval" if t.tokens.eval_f else "train"

    def validation(step: int, res: dict) -> float:
        gap = res["forget_NLL"] - res["retain_NLL"]
        if a.eval_interval and env.main:
            tqdm.write(f"validation step {step}/{n_steps}: forget_NLL {res['forget_NLL']:.4f}  "
                       f"retain_NLL {res['retain_NLL']:.4f}  gap {gap:.4f}")
        env.log({"val/forget_NLL": res["forget_NLL"], "val/retain_NLL": res["retain_NLL"], "val/gap": gap}, step)
        return gap

    samples_before = t.sample_nlls()
    before = {k: v for k, v in split_means(samples_before, prefix).items() if k != "gap"}
    curve, losses, step_times = [{"step": 0, **before, "dist_from_start": t.dist_from_start()}], [], []
    if t.spec.start:
        t.spec.start(t)
    stopper = EarlyStopper(a.early_stop_patience, t.params) if a.early_stop_patience else None
    gap = validation(0, before)
    if stopper:
        stopper.update(0, gap)
    stopped = None
    start, ckpt = 0, Checkpointing(a, t, env, stopper)                      # --save-every / --resume
    if ckpt.resume:
        start, curve, losses, step_times = ckpt.load(curve, n_steps)
    bar = progress(schedule[start:], desc=f"unlearn {a.method}", unit="step", disable=not env.main,
                   initial=start, total=n_steps)
    t_train, t_eval = time.perf_counter(), 0.0

    def tick(where: str) -> None:  # inside a step: the bar shows where, a log gets a line at least every 60 s
        bar.set_postfix_str(where)
        bar.update(0)
    t.tick = tick
    for step, micro in enumerate(bar, start=start + 1):
        t_step = time.perf_counter()
        step_loss = torch.zeros((), device=t.dev)
        for m, (fi_global, ri_global) in enumerate(micro, start=1):
            if len(micro) > 1:
                tick(f"micro-batch {m}/{len(micro)}")
            fi = fi_global[rank * a.batch_size:(rank + 1) * a.batch_size]
            ri = ri_global[rank * a.batch_size:(rank + 1) * a.batch_size]
            with acc.accumulate(t.wrapped):
                with acc.autocast():
                    loss = t.loss(fi, ri)
                step_loss += loss.detach() / len(micro)
                acc.backward(loss)
                if acc.sync_gradients:
                    loss_value = acc.reduce(step_loss, "mean").item()
                    if not math.isfinite(loss_value):
                        raise NonFiniteLoss(f"the {a.method} loss became {loss_value} at step {step}; nothing was "
                                            f"saved (try a lower --lr than {a.lr:g}, or fp32)")
                    if a.grad_clip > 0:
                        acc.clip_grad_norm_(t.params, a.grad_clip)
                t.optimizer.step()
                t.optimizer.zero_grad(set_to_none=True)
        losses.append(loss_value)  # .item() above synchronises, so the step time is real
        step_times.append(time.perf_counter() - t_step)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        env.log({"train/loss": loss_value}, step)
        if a.eval_interval and step % a.eval_interval == 0 and step < n_steps:
            t0 = time.perf_counter()
            res = t.evaluate()
            curve.append({"step": step, **res, "dist_from_start": t.dist_from_start()})
            gap = validation(step, res)
            t_eval += time.perf_counter() - t0
            if stopper and stopper.update(step, gap):
                stopped = step
                break
        ckpt.after_step(step, n_steps, curve, losses, step_times)             # may save; SIGTERM: save and stop
    ckpt.close()
    bar.close()
    if t.spec.finish:
        t.spec.finish(t)
    train_s = time.perf_counter() - t_train - t_eval
    samples_after = t.sample_nlls()
    after = {k: v for k, v in split_means(samples_after, prefix).items() if k != "gap"}
    early = None
    if stopper:
        last = stopped if stopped is not None else n_steps
        if stopped is None:
            curve.append({"step": n_steps, **after, "dist_from_start": t.dist_from_start()})
            stopper.update(n_steps, validation(n_steps, after))
        if stopper.best_step != last:  # put the best validation's weights back, and evaluate them
            stopper.restore()
            samples_after = t.sample_nlls()
            after = {k: v for k, v in split_means(samples_after, prefix).items() if k != "gap"}
        early = {"patience": a.early_stop_patience, "best_step": stopper.best_step, "stopped_at_step": stopped,
                 "restored_best": stopper.best_step != last}
        if env.main:
            print(f"early stopping: best validation gap {stopper.best_gap:.4f} at step {stopper.best_step}"
                  + (f"; stopped at step {stopped}" if stopped is not None else "")
                  + ("; its weights were restored" if early["restored_best"] else ""), flush=True)
    else:
        curve.append({"step": n_steps, **after, "dist_from_start": t.dist_from_start()})
    return History(before, after, curve, losses, step_times, train_s, n_steps, samples_before, samples_after,
                   early, t.dist_from_start())


def make_metrics(a: argparse.Namespace, h: History, held_out: bool, runtime: float, env: Env) -> dict:
    """metrics.json: NLLs before/after (held-out split, or the training data without one), the
    curve, the training losses, timings and the run's warnings; prints the one-line summary."""
    before, after = h.before, h.after
    metrics = {
        "method": a.method,
        "eval_set": "held-out" if held_out else "train (no held-out split: --eval-split 0)",
        "forget_NLL": after["forget_NLL"], "retain_NLL": after["retain_NLL"],
        "gap": after["forget_NLL"] - after["retain_NLL"],
        "before": {**before, "gap": before["forget_NLL"] - before["retain_NLL"]},
        "eval_curve": h.curve, "train_loss": h.losses, "steps": h.steps,
        "runtime_s": round(runtime, 3), "train_s": round(h.train_s, 4),
        "s_per_step": round(h.train_s / len(h.losses), 4), "step_s": [round(s, 5) for s in h.step_times],
        "warnings": env.warnings, "seed": a.seed, "split_seed": a.split_seed,
        "dist_from_start": h.dist_from_start,
    }
    test_before, test_after = split_means(h.samples_before, "test"), split_means(h.samples_after, "test")
    if test_after:  # reported only now, never looked at during training
        metrics["test"] = {**test_after, "before": test_before}
    if h.early_stopping:
        metrics["early_stopping"] = h.early_stopping
    if env.main:
        print(f"forget_NLL {before['forget_NLL']:.4f} -> {after['forget_NLL']:.4f}   "
              f"retain_NLL {before['retain_NLL']:.4f} -> {after['retain_NLL']:.4f}   "
              f"gap {metrics['before']['gap']:.4f} -> {metrics['gap']:.4f}   ({runtime:.1f} s)", flush=True)
        if test_after:
            print(f"test: forget_NLL {test_before['forget_NLL']:.4f} -> {test_after['forget_NLL']:.4f}   "
                  f"retain_NLL {test_before['retain_NLL']:.4f} -> {test_after['retain_NLL']:.4f}", flush=True)
    env.log({f"final/{k}": v for k, v in metrics.items() if k in ("forget_NLL", "retain_NLL", "gap")}, h.steps)
    return metrics


def save(plan: Plan, t: Trainer, tokenizer, env: Env, metrics: dict, report: dict, files: dict | None = None) -> None:
    """The main process writes model, tokenizer, metrics and report into --outdir, atomically
    (FSDP/DeepSpeed: the full state dict is gathered from every process first)."""
    acc = env.accelerator
    acc.wait_for_everyone()
    state = None
    if acc.distributed_type.name in ("FSDP", "DEEPSPEED"):
        state = {k[len("model."):]: v for k, v in acc.get_state_dict(t.wrapped).items()}
    if env.main:
        from safetensors import SafetensorError
        try:
            save_atomically(t.runner.model, tokenizer, plan.outdir, metrics, report, state,
                            dtype=getattr(t, "save_dtype", None), files=files,
                            lora=(t.peft, t.a.save_adapter) if t.peft is not None else None)
        except (OSError, SafetensorError) as e:
            kept = "; the earlier output there is kept" if plan.outdir.exists() else ""
            raise OutputError(f"cannot save the model to {plan.outdir} ({first_line(e)}); nothing was "
                              f"written{kept}") from None
        print(f"saved {plan.outdir}", flush=True)
    acc.wait_for_everyone()


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Temporarily switch off dropout (reference values must not depend on a dropout draw)."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@torch.no_grad()
def precompute_logprobs(runner, tok, pad_id, dev, batch_size, accelerator, main_process, desc) -> torch.Tensor:
    """log π_ref(y) of every training sample with the current (initial) weights, indexed like ``tok``."""
    out = torch.zeros(len(tok), device=dev)
    with eval_mode(runner.model), accelerator.autocast():
        for i in progress(range(0, len(tok), batch_size), desc=desc, unit="batch", disable=not main_process, leave=False):
            ids, mask = pad_batch(tok[i:i + batch_size], pad_id, dev)
            out[i:i + len(ids)] = sequence_logprobs(runner(ids, mask, mode="lm"), ids, mask)[0]
    return out


@torch.no_grad()
def sample_nlls(runner, tok, pad_id, dev, batch_size, accelerator, desc: str = "held-out NLL") -> torch.Tensor:
    """NLL of each sample, −log π(y)/|y| (mean over tokens 2..T, as ``mean_nll``), float64 on the CPU.
    Each process computes every world-th sample; a sum over processes gathers them."""
    world, rank = accelerator.num_processes, accelerator.process_index
    out = torch.zeros(len(tok), device=dev, dtype=torch.float64)
    mine = list(range(rank, len(tok), world))
    batches = range(0, len(mine), batch_size)
    with eval_mode(runner.model), accelerator.autocast():
        for i in progress(batches, desc=desc, unit="batch", disable=not accelerator.is_main_process, leave=False):
            pos = mine[i:i + batch_size]
            ids, mask = pad_batch([tok[j] for j in pos], pad_id, dev)
            lp, n = sequence_logprobs(runner(ids, mask, mode="lm"), ids, mask)
            out[pos] = (-lp / n.clamp(min=1)).double()
    return accelerator.reduce(out, "sum").cpu()


def eval_nll(runner, tok_f, tok_r, pad_id, dev, batch_size, accelerator) -> dict:
    """Mean per-sample NLL of forget and retain texts (the mean of ``sample_nlls``)."""
    return {key: float(sample_nlls(runner, tok, pad_id, dev, batch_size, accelerator,
                                   f"{key.split('_')[0]} NLL").mean()) if tok else math.nan
            for key, tok in (("forget_NLL", tok_f), ("retain_NLL", tok_r))}


def split_means(nlls: dict, prefix: str) -> dict | None:
    """forget_NLL, retain_NLL, gap of the reported splits named ``forget_<prefix>``/``retain_<prefix>``."""
    if f"forget_{prefix}" not in nlls:
        return None
    f, r = float(nlls[f"forget_{prefix}"].mean()), float(nlls[f"retain_{prefix}"].mean())
    return {"forget_NLL": f, "retain_NLL": r, "gap": f - r}


def gpu_driver_version() -> str | None:
    """The NVIDIA driver version (pynvml, else nvidia-smi), None when neither answers."""
    try:
        import pynvml
        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:  # noqa: BLE001 - optional information
        pass
    import subprocess
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        versions = out.stdout.split() if out.returncode == 0 else []  # one line per GPU
        return versions[0] if versions else None
    except (OSError, subprocess.SubprocessError):
        return None


def optimizer_text(optimizer: str, precision: str) -> str:
    """The optimizer as run_report.yaml states it."""
    adamw = "AdamW, Kahan-compensated bf16 weights and bf16 moments" if precision == "bf16" else "AdamW"
    if optimizer == "muon":
        return (f"Muon (hidden 2-D matrices; torch.optim.Muon, lr scaled to match AdamW's RMS, momentum 0.95, "
                f"Nesterov) + {adamw} (embeddings, unembedding, norms, biases); weight_decay 0, constant lr")
    return f"{adamw} (weight_decay 0, constant lr)"


def run_report(a: argparse.Namespace, info: RunInfo, metrics: dict) -> dict:
    """The reporting format of the project (Model / Dataset / Training / Hardware / Results); the
    method's own settings are those METHOD_TABLE lists for it."""
    import accelerate
    import transformers
    training = {
        "method": a.method, "learning_rate": getattr(a, METHOD_TABLE[a.method].lr_flag), "batch_size": a.batch_size,
        "epochs": a.epochs,
        "gradient_clip": a.grad_clip, "seed": a.seed, "optimizer": optimizer_text(a.optimizer, info.precision),
        "grad_accum_steps": a.grad_accum_steps,
        "global_batch_size": a.batch_size * info.processes * a.grad_accum_steps,
        "max_length": a.max_length, "eval_split": a.eval_split, "test_split": a.test_split,
        "split_seed": a.split_seed, "eval_interval": a.eval_interval,
        "early_stop_patience": a.early_stop_patience, "max_samples": a.max_samples,
        "trainable": info.trainable, "gradient_checkpointing": info.gradient_checkpointing, "steps": metrics["steps"],
        "precision": {"mode": info.precision, "compute_dtype": info.dtype,
                      "bytes_per_trainable_parameter": PRECISION_BYTES[info.precision]},
        "norm_reg_lambda": a.norm_reg_lambda,
    }
    for name in METHOD_TABLE[a.method].settings:
        training[name] = info.layer_ids if name == "layer_id" else getattr(a, name)
    if info.lora:
        training["lora"] = info.lora
    if "lat_step_size" in training:  # the step actually used, and which update that is
        training["lat_step_size"] = lat_step_size(a.lat_eps, a.lat_step_size)
        training["lat_update"] = ("documented: δ ← clip(δ − ε·sign(∇δ L), −ε, ε)" if a.lat_step_size is None else
                                  "smaller step: δ ← clip(δ − s·sign(∇δ L), −ε, ε), s = --lat-step-size")
    cuda = info.device == "cuda"
    hardware = {"device": f"cuda ({torch.cuda.get_device_name()})" if cuda else info.device,
                "processes": info.processes, "cuda": str(torch.version.cuda) if cuda else "none"}
    if cuda:
        hardware["driver"] = gpu_driver_version() or "unknown"
    results = {"forget_nll": metrics["forget_NLL"], "retain_nll": metrics["retain_NLL"],
               "gap": metrics["gap"], "forget_nll_before": metrics["before"]["forget_NLL"],
               "retain_nll_before": metrics["before"]["retain_NLL"], "runtime": metrics["runtime_s"],
               "eval_set": metrics["eval_set"], "dist_from_start": metrics["dist_from_start"],
               "dist_from_start_curve": [{"step": c["step"], "dist_from_start": c["dist_from_start"]}
                                         for c in metrics["eval_curve"]]}
    if "test" in metrics:
        results.update(forget_nll_test=metrics["test"]["forget_NLL"], retain_nll_test=metrics["test"]["retain_NLL"],
                       forget_nll_test_before=metrics["test"]["before"]["forget_NLL"],
                       retain_nll_test_before=metrics["test"]["before"]["retain_NLL"])
    if "early_stopping" in metrics:
        results["early_stopping"] = metrics["early_stopping"]
    return {
        "Model": {"base": a.model, "parameters": info.n_params, "dtype": info.dtype},
        "Dataset": {"forget_size": info.sizes["forget_size"], "retain_size": info.sizes["retain_size"],
                    "forget_domain": a.forget_domain or Path(a.forget_data).name,
                    "retain_domain": a.retain_domain or Path(a.retain_data).name,
                    **{k: v for k, v in info.sizes.items() if k not in ("forget_size", "retain_size")}},
        "Training": training,
        "Hardware": {**hardware, "pytorch": str(torch.__version__), "transformers": transformers.__version__,
                     "accelerate": accelerate.__version__, "python": platform.python_version(),
                     "platform": platform.platform()},
        "Results": results,
    }


def checkpoint_dir(outdir: Path) -> Path:
    """Where --save-every keeps the training state: ``<outdir>.checkpoint`` beside the output folder."""
    return outdir.parent / f"{outdir.name}.checkpoint"


class Checkpointing:
    """--save-every N / --resume: the training state after a step, in ``<outdir>.checkpoint/``:
      state.safetensors   the trained parameters (``param.<i>`` in optimizer order), torch's CPU (and CUDA) RNG
      optimizer.pt        the optimizer's state_dict (torch.save, i.e. a pickle of tensors and numbers; read
                          back with torch.load(weights_only=True), which refuses anything but tensors and
                          plain containers, so loading it runs no code)
      checkpoint.json     the step (= the data position: the schedule is a function of the seed), the losses,
                          step times and validation curve so far, Python's and NumPy's RNG states, the flags
    Written into a temporary folder and swapped in, so a kill while saving keeps the previous checkpoint.
    A resumed run first evaluates the initial weights (as the uninterrupted run did, so the "before" numbers
    and any state a method sets up at the start are the same), then loads the parameters, the optimizer
    and the RNG and continues at the next step: on the CPU the result is bit-identical to the
    uninterrupted run. One process only; not with --early-stop-patience."""
    IGNORED = ("resume", "save_every", "report_to", "checkpoint_dir")

    def __init__(self, a, t, env, stopper):
        self.a, self.t, self.env = a, t, env
        self.folder = Path(a.checkpoint_dir) if getattr(a, "checkpoint_dir", None) else None
        self.term = False
        self.previous = None
        self.every, self.resume = getattr(a, "save_every", 0), getattr(a, "resume", False)
        if not (self.every or self.resume):
            return
        if self.every < 0:
            raise UsageError("--save-every must be >= 0")
        if env.accelerator.num_processes > 1:
            raise UsageError("--save-every / --resume work with one process only (not under accelerate launch "
                             "with several processes yet)")
        if stopper is not None:
            raise UsageError("--save-every / --resume do not work with --early-stop-patience yet")
        if self.every:
            import signal

            def on_term(signum, frame):
                self.term = True
            self.previous = signal.signal(signal.SIGTERM, on_term)

    def settings(self) -> dict:
        return json.loads(json.dumps({k: v for k, v in sorted(vars(self.a).items()) if k not in self.IGNORED},
                                     default=str))

    def optimizers(self):
        return getattr(self.t.optimizer, "optimizers", [self.t.optimizer])

    def after_step(self, step: int, n_steps: int, curve, losses, step_times) -> None:
        if not self.every:
            return
        if step < n_steps and (step % self.every == 0 or self.term):
            self.save(step, curve, losses, step_times)
        if self.term:
            import signal
            self.close()                                  # run_tool's SIGTERM handler is back before we stop
            if step < n_steps:
                print(f"checkpoint: SIGTERM at step {step}: the training state is in {self.folder}; run the same "
                      "command with --resume to continue", file=sys.stderr, flush=True)
            handler = signal.getsignal(signal.SIGTERM)
            if callable(handler):
                handler(signal.SIGTERM, None)             # run_tool's: raises Terminated, exit 143
            raise Terminated()

    def close(self) -> None:
        if self.previous is not None:
            import signal
            signal.signal(signal.SIGTERM, self.previous)
            self.previous = None

    def save(self, step: int, curve, losses, step_times) -> None:
        from safetensors.torch import save_file
        import numpy as np
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.tmp-", dir=self.folder.parent))
        try:
            tensors = {f"param.{i}": p.detach().cpu().contiguous() for i, p in enumerate(self.t.params)}
            tensors["rng.torch"] = torch.get_rng_state()
            if torch.cuda.is_available():
                for i, st in enumerate(torch.cuda.get_rng_state_all()):
                    tensors[f"rng.cuda.{i}"] = st
            save_file(tensors, str(tmp / "state.safetensors"))
            torch.save([o.state_dict() for o in self.optimizers()], tmp / "optimizer.pt")
            py = random.getstate()
            npst = np.random.get_state()
            meta = {"step": step, "settings": self.settings(), "curve": curve, "losses": losses,
                    "step_times": step_times, "python_rng": [py[0], list(py[1]), py[2]],
                    "numpy_rng": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])]}
            (tmp / "checkpoint.json").write_text(json.dumps(meta))
            for f in tmp.iterdir():
                f.chmod(0o644)
            tmp.chmod(0o755)
            old = self.folder.with_name(self.folder.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            if self.folder.exists():
                self.folder.rename(old)
            tmp.rename(self.folder)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self.env.main:
            print(f"checkpoint: step {step} saved to {self.folder}", file=sys.stderr, flush=True)

    def load(self, curve, n_steps: int):
        """Parameters, optimizer and RNG from the checkpoint; returns (step, curve, losses, step_times)."""
        from safetensors.torch import load_file
        import numpy as np
        meta_path = self.folder / "checkpoint.json"
        if not meta_path.is_file():
            raise UsageError(f"--resume: no checkpoint in {self.folder} (run with --save-every N first)")
        meta = json.loads(meta_path.read_text())
        now = self.settings()
        changed = sorted(k for k in set(now) | set(meta["settings"]) if now.get(k) != meta["settings"].get(k))
        if changed:
            raise UsageError(f"--resume: the checkpoint in {self.folder} was made with other settings "
                             f"({', '.join('--' + k.replace('_', '-') for k in changed[:5])}); use the same flags")
        tensors = load_file(str(self.folder / "state.safetensors"))
        if sum(k.startswith("param.") for k in tensors) != len(self.t.params):
            raise UsageError(f"--resume: the checkpoint in {self.folder} does not fit this model")
        with torch.no_grad():
            for i, p in enumerate(self.t.params):
                p.copy_(tensors[f"param.{i}"])
        states = torch.load(self.folder / "optimizer.pt", weights_only=True)
        for o, st in zip(self.optimizers(), states):
            o.load_state_dict(st)
        torch.set_rng_state(tensors["rng.torch"])
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        py = meta["python_rng"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        n = meta["numpy_rng"]
        np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
        step = int(meta["step"])
        if self.env.main:
            print(f"resuming at step {step + 1} of {n_steps} from {self.folder}", file=sys.stderr, flush=True)
        return step, meta["curve"], meta["losses"], meta["step_times"]


def input_weight_dtype(model_dir) -> str | None:
    """The dtype most of a model folder's floating-point weights are stored in (``fp32``, ``fp16``,
    ``bf16``), read from the safetensors headers alone (no weights are loaded); None when it has no
    safetensors file or no floating-point tensor."""
    names = {"F32": "fp32", "F16": "fp16", "BF16": "bf16"}
    counts: dict[str, int] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for key, info in header.items():
            if key != "__metadata__" and info.get("dtype") in names:
                counts[names[info["dtype"]]] = counts.get(names[info["dtype"]], 0) + math.prod(info["shape"])
    return max(counts, key=counts.get) if counts else None


def resolve_save_dtype(choice: str, model_dir):
    """The torch dtype the model is saved in: ``--save-dtype`` itself, or for ``input`` the input's weight
    dtype (``input_weight_dtype``); None (as trained) when that cannot be told."""
    name = input_weight_dtype(model_dir) if choice == "input" else choice
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(name)


def save_atomically(model, tokenizer, outdir: Path, metrics: dict, report: dict, state=None, dtype=None,
                    files: dict | None = None, lora: tuple | None = None) -> None:
    """Write model + tokenizer + metrics.json + run_report.yaml (+ ``files``: name → text, e.g.
    per_sample_nll.csv) into a temp dir next to ``outdir``, then swap it in (an existing ``outdir``
    is replaced only once the new one is complete). On any failure, Ctrl-C included, the temp dir
    and the parent folders made for it are removed and an earlier ``outdir`` is back in place. The
    folder gets the mode of a new folder (0755 under umask 022). ``lora`` = (PeftModel, keep_adapter): the
    adapters are merged into ``model`` here (merge_lora), the adapter first saved to ``outdir/adapter``
    when asked. ``dtype`` (a torch dtype, None = as trained): the floating-point weights are saved in it,
    after the merge."""
    import yaml
    made = [d for d in reversed(outdir.parents) if not d.exists()]
    tmp = None
    try:
        outdir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=outdir.parent))
        if lora is not None:  # LoRA: W <- W + B·A·alpha/r, then an ordinary model is saved
            model = merge_lora(lora[0], tmp / "adapter" if lora[1] else None)
        if dtype is not None:
            model = model.to(dtype)
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()} if state else None
        model.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / "run_report.yaml").write_text(yaml.safe_dump(report, sort_keys=False, allow_unicode=True))
        for name, text in (files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        publish_folder(tmp, outdir)  # modes 0755/0644 (umask), an earlier outdir swapped out only now
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(lambda: run(args), kept="nothing was saved", errors=(NonFiniteLoss, OutputError))


if __name__ == "__main__":
    sys.exit(main())
