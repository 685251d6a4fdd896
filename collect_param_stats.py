# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "torch>=2.4",
#     "safetensors>=0.4",
#     "huggingface_hub>=0.30",
#     "numpy>=1.24",
#     "ml_dtypes>=0.4",
#     "scipy>=1.11",
#     "threadpoolctl>=3.1",
#     "tqdm>=4.66",
# ]
# ///
"""Where and how did the weights move?  Per-matrix and per-layer statistics of ΔW = W_b − W_a.

For every 2-D weight matrix that two checkpoints of the same architecture share, this computes

    dW_fro          ‖ΔW‖_F                              how much the matrix moved
    dW_stable_rank  ‖ΔW‖_F² / ‖ΔW‖_2²   (in [1, rank])  how the change is shaped: ≈1 is a surgical
                                                        rank-1 edit, large is broad drift
    W_stable_rank   the same for the base weights W_a

(stable rank: Rudelson & Vershynin 2007), then aggregates them per decoder layer and group
(attention / MLP) into per_layer.csv, which plot_param_stats.py draws.

Why it is built this way:
  * The checkpoints are streamed tensor by tensor (and large tensors in slices) with safetensors,
    so a pair of 7B models never sits in memory; A and B may be sharded differently.
  * ΔW is formed in fp32 from the tensors' stored dtype (subtracting in bf16 rounds small
    differences to a coarse grid and inflates them); Frobenius norms are accumulated in float64.
  * ‖M‖_2² is the top eigenvalue of the smaller-side Gram matrix G = MᵀM (or MMᵀ), which is
    accumulated slice by slice: fp32 products (on the CPU BLAS `ssyrk`, which forms only one
    triangle of the symmetric G: half the work of a general product), summed in float64 across
    groups of slices. Its top eigenvalue comes, in fp32, from a dense symmetric eigensolver when
    G is at most --dense-max wide (LAPACK `ssyevx` for that one eigenvalue on the CPU; exact up to
    rounding, and cheaper there than any iteration), else from a seeded block Lanczos solver with
    full re-orthogonalisation and Rayleigh–Ritz, stopped by a real residual test ‖Gv − θv‖ ≤ tol·θ.
    Fine-tuning ΔWs have flat noise spectra (σ2/σ1 ≈ 0.999) on which a few power-iteration steps
    stall far from σ1; the block Krylov space gets there in a few dozen products with G.
  * On the CPU it is numpy and SciPy's BLAS/LAPACK only, without the torch import (~3.5 s of CPU
    on its own). On CUDA/MPS torch does the Gram products, and on CUDA the dense eigensolver too.

Usage:
    uv run --script collect_param_stats.py --model-a EleutherAI/deep-ignorance-unfiltered \\
        --model-b EleutherAI/deep-ignorance-e2e-strong-filter \\
        --outdir outputs/deep-ignorance-unfiltered_vs_deep-ignorance-e2e-strong-filter/param_stats
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so safetensors' numpy reader takes bf16)
import numpy as np
import scipy.linalg
from safetensors import SafetensorError, safe_open
from scipy.linalg.blas import ddot, get_blas_funcs, ssyrk
from threadpoolctl import threadpool_limits

# torch is imported only for a CUDA/MPS run (see choose_device): its import alone costs ~3.5 s of
# CPU, a seventh of the whole exact-SVD route on a 160M-parameter pair


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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the None of required or derived options."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)
# --- end shared helpers ---


PER_MATRIX_COLUMNS = ["name", "layer", "group", "shape0", "shape1", "dW_fro", "dW_stable_rank",
                      "W_stable_rank", "dW_spec", "W_fro", "W_spec", "rel_change", "dW_iters",
                      "W_iters", "component", "rel_dW_fro", "cos_sim"]
PER_LAYER_COLUMNS = ["layer", "group", "dW_fro_layer", "mean_dW_stable_rank", "count_mats",
                     "count_changed"]
PER_COMPONENT_COLUMNS = ["layer", "component", "dW_fro_sq", "rel_dW_fro", "mean_dW_stable_rank",
                         "count_mats", "count_changed"]


# ----------------------------------------------------------------------------------------------
# The math
# ----------------------------------------------------------------------------------------------
def gram_blocks(shape: tuple[int, int], chunk_elems: int):
    """Slices that cut a (rows, cols) matrix along its long side into blocks of ≤ chunk_elems.

    With M = [M_1; M_2; …] (tall) the small-side Gram matrix is MᵀM = Σ_i M_iᵀ M_i, and with
    M = [M_1, M_2, …] (wide) it is MMᵀ = Σ_j M_j M_jᵀ, so it can be accumulated block by block.
    """
    rows, cols = shape
    if rows >= cols:
        step = max(1, chunk_elems // cols)
        return [(slice(i, min(i + step, rows)), slice(None)) for i in range(0, rows, step)]
    step = max(1, chunk_elems // rows)
    return [(slice(None), slice(j, min(j + step, cols))) for j in range(0, cols, step)]


def small_gram(block, tall: bool):
    """BᵀB for a row block of a tall matrix, BBᵀ for a column block of a wide one: a torch matmul
    (the accelerator route of GramSum; the CPU route is BLAS `ssyrk`).

    The result is symmetric, so with X = [X1 X2] only X1ᵀX1, X1ᵀX2 and X2ᵀX2 are multiplied:
    3/4 of the work of one full product.
    """
    import torch

    X = block if tall else block.T  # the Gram matrix is XᵀX either way
    n = X.shape[1]
    if n < 256:
        return X.T @ X
    h = n // 2
    X1, X2 = X[:, :h], X[:, h:]
    G = torch.empty(n, n, dtype=X.dtype, device=X.device)
    G[:h, :h] = X1.T @ X1
    G[h:, h:] = X2.T @ X2
    G[:h, h:] = X1.T @ X2
    G[h:, :h] = G[:h, h:].T
    return G


class GramSum:
    """The small-side Gram matrix Σ_i X_iᵀX_i of one matrix, accumulated slice by slice.

    Each slice's product is an fp32 BLAS call (exact products, fp32 sums over the slice's rows).
    The running sum stays in fp32 for `flush_every` slices at a time and each such group is then
    added into a float64 total, so rounding does not build up over the 37 slices of a 50k-row
    embedding (a matrix of at most `flush_every` slices needs no float64 stage at all).
    On the CPU (numpy) the product is BLAS `ssyrk` (SciPy's OpenBLAS): it forms only the upper
    triangle of the symmetric result, half the multiply-adds of a general product, and adds it in
    place (beta = 1), with no temporary; `result()` then holds the Gram matrix in its upper
    triangle, which is all `gram_top_eigenvalue` reads. On CUDA/MPS (``blas=False``) it is
    `small_gram`, a torch matmul on the device (no TF32), and the whole matrix is filled.
    `result()` is a numpy array, except on CUDA, where it stays a torch tensor on the device.
    """

    def __init__(self, side: int, device: str = "cpu", flush_every: int = 8, blas: bool | None = None):
        self.blas = device == "cpu" if blas is None else blas  # blas=False: the torch route
        self.device = device
        self.flush_every, self.pending = flush_every, 0
        self.total = None  # float64, from the first flush on
        if self.blas:  # column-major, so that ssyrk writes into it in place
            self.part = np.zeros((side, side), dtype=np.float32, order="F")
        else:
            import torch

            self.part = torch.zeros(side, side, dtype=torch.float32, device=device)

    def add(self, block: np.ndarray, tall: bool) -> None:
        """Add BᵀB (row slice of a tall matrix) or BBᵀ (column slice of a wide one); `block` is a
        C-contiguous fp32 array."""
        if self.pending == self.flush_every:
            self._flush()
        if self.blas:
            # the transpose of a C-contiguous (r×c) block is a Fortran-contiguous (c×r) array a,
            # handed to BLAS without a copy: BᵀB = a·aᵀ (trans=0), BBᵀ = aᵀ·a (trans=1)
            out = ssyrk(1.0, block.T, beta=1.0, c=self.part, trans=0 if tall else 1, lower=0, overwrite_c=1)
            if out is not self.part:  # f2py had to copy after all
                self.part[...] = out
        else:
            import torch

            self.part += small_gram(torch.from_numpy(block).to(self.device), tall)
        self.pending += 1

    def _flush(self) -> None:
        if self.blas:
            if self.total is None:
                self.total = self.part.astype(np.float64)
            else:
                self.total += self.part
            self.part.fill(0.0)
        else:
            import torch

            part = self.part.to("cpu" if self.device == "mps" else self.device)  # MPS has no float64
            self.total = part.to(torch.float64) if self.total is None else self.total.add_(part)
            self.part.zero_()
        self.pending = 0

    def result(self):
        """The Gram matrix in fp32, called once at the end: the float64 total (if there was more
        than one group of slices) is rounded once into the fp32 buffer and freed."""
        if self.total is not None:
            if self.pending:
                self._flush()
            if self.blas:
                np.copyto(self.part, self.total)
            else:
                self.part.copy_(self.total)
            self.total = None
        if self.blas or str(self.device).startswith("cuda"):
            return self.part
        return self.part.cpu().numpy()


def inner_product(x: np.ndarray, y: np.ndarray, piece: int = 1 << 18) -> float:
    """Σ x·y in float64 (fp32 products are exact in float64), piece by piece like sum_of_squares."""
    fx, fy = x.reshape(-1), y.reshape(-1)
    total = 0.0
    for start in range(0, fx.size, piece):
        total += float(ddot(fx[start:start + piece].astype(np.float64), fy[start:start + piece].astype(np.float64)))
    return total


def sum_of_squares(x: np.ndarray, piece: int = 1 << 18) -> float:
    """Σ x² in float64: squares of fp32 numbers are exact in float64 and so is the running sum to
    ~1e-16 (an fp32 reduction over millions of entries is ~1e-4 off). Piece by piece, so the
    float64 copy stays small."""
    flat = x.reshape(-1)
    total = 0.0
    for start in range(0, flat.size, piece):
        part = flat[start:start + piece].astype(np.float64)
        total += float(ddot(part, part))  # SciPy's BLAS: see _mm
    return total


# Which solver for the top eigenvalue of an n×n Gram matrix: a cost model measured on the CPU
# (SciPy's OpenBLAS, one thread, 2-core AMD EPYC; docs/bench-param-stats.md), on Gram matrices of
# Gaussian 2n×n matrices, whose Marchenko–Pastur edge is the slow case for Lanczos:
#     n        dense ssyevx (top eigenvalue)     block Lanczos, k = 16, tol 1e-5
#      768      14 ms                             26 ms   (19 products)
#     1024      33 ms                             46 ms   (19 products)
#     2048     238 ms                            185 ms   (24 products)
#     4096     3.2 s                             0.96 s  (38 products)
# The dense solve costs ~DENSE_S_PER_N3·n³ (Householder tridiagonalisation, 4/3·n³ flops), block
# Lanczos ~LANCZOS_S_PER_N2·n² (a few dozen n×k products with G and the re-orthogonalisation
# against an n×b basis); the dense solver is used while it is the cheaper one.
DENSE_S_PER_N3, LANCZOS_S_PER_N2 = 3.1e-11, 4.5e-8
DENSE_MAX = int(LANCZOS_S_PER_N2 / DENSE_S_PER_N3)  # 1451: the crossover of the two costs
BLOCK_SIZE = 16  # fastest of 8/16/32 at n = 1024, 2048 and 4096 in the measurements above


def full_symmetric(G: np.ndarray, panel: int = 512) -> np.ndarray:
    """The symmetric fp32 matrix whose upper triangle (diagonal included) is G's; G's strict lower
    triangle is never read. Built panel by panel, so the temporaries stay at panel × n."""
    n = G.shape[0]
    S = np.empty((n, n), dtype=np.float32)
    for j in range(0, n, panel):
        k = min(j + panel, n)
        S[:j, j:k] = G[:j, j:k]
        S[j:k, :j] = G[:j, j:k].T
        D = G[j:k, j:k]
        S[j:k, j:k] = np.triu(D) + np.triu(D, 1).T
    return S


def top_eigenvalue(G: np.ndarray, block_size: int = BLOCK_SIZE, tol: float = 1e-5, max_iter: int = 300,
                   seed: int = 42) -> tuple[float, int, bool]:
    """λ_max of a symmetric positive semi-definite G (here ‖M‖_2² = λ_max(MᵀM)), in G's dtype.

    Block Lanczos (Golub & Underwood 1977; Saad, *Numerical Methods for Large Eigenvalue
    Problems*, ch. 6): the block Krylov space K = span{V, GV, G²V, …} of a seeded Gaussian start
    block V (n×k) is built with full re-orthogonalisation (two block Gram–Schmidt passes, "twice is
    enough", Giraud et al. 2005) and a rank-revealing SVD of each new block, which drops the
    directions that are numerically already in K — without it the basis of a rank-1 G fills with
    rounding noise. Rayleigh–Ritz on T = QᵀGQ gives the Ritz pair (θ, v = Qy) with θ ≤ λ_max, and
    the stop test is the residual: some eigenvalue lies within ‖Gv − θv‖ of θ, so
    ‖Gv − θv‖ ≤ tol·θ bounds the relative error by tol (and the error decays like ‖r‖²/gap).
    The block size k makes the convergence rate depend on the gap λ1 − λ_{k+1} instead of λ1 − λ2,
    so flat spectra (σ2/σ1 ≈ 0.999) still converge quickly; a single vector would stall.
    The Ritz problem is solved at geometrically spaced steps (its cost grows cubically with the
    basis); the basis is restarted with the top-k Ritz vectors if it grows beyond 48k columns.

    Returns (λ_max, block products with G, converged). G = 0 gives (0.0, 0, True).
    """
    # The n×k products of a small G are too small to split across CPU threads; on a busy machine
    # the OpenMP hand-offs cost more than the arithmetic.
    if G.shape[0] > 2048:
        return _block_lanczos(G, block_size, tol, max_iter, seed)
    with threadpool_limits(limits=1, user_api="blas"):
        return _block_lanczos(G, block_size, tol, max_iter, seed)


def _mm(a: np.ndarray, b: np.ndarray, trans_a: bool = False) -> np.ndarray:
    """a·b (aᵀ·b with trans_a) by SciPy's BLAS `gemm`, Fortran-ordered. On the CPU every BLAS and
    LAPACK call of the tool goes to SciPy's OpenBLAS: numpy ships a second OpenBLAS, and the two
    libraries' thread pools, each busy-waiting between calls, were measured to make a 2-thread
    run twice as slow as a 1-thread one (13.7 s against 6.5 s on the 768-wide benchmark pair)."""
    return get_blas_funcs("gemm", (a, b))(1.0, a, b, trans_a=trans_a)


def _norm(v: np.ndarray) -> float:
    return math.sqrt(float(np.square(v).sum()))


def _ritz(T: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The `count` largest eigenpairs of the small symmetric float64 T (ascending): LAPACK
    `dsyevr` for that subset only, 3-10× cheaper than every eigenvector."""
    T = 0.5 * (T + T.T)
    b = T.shape[0]
    return scipy.linalg.eigh(T, subset_by_index=[b - count, b - 1], driver="evr", check_finite=False)


def _block_lanczos(G, block_size, tol, max_iter, seed):
    n, dtype = G.shape[0], G.dtype
    if float(np.trace(G)) == 0.0:  # trace = ‖M‖_F²
        return 0.0, 0, True
    k = min(block_size, n)
    max_basis = min(n, 48 * k)
    # orthonormal basis of K (filled block by block) and G applied to it, column-major so that
    # every leading slice Q[:, :b] is one contiguous block of memory for the BLAS
    Q = np.empty((n, max_basis + k), dtype=dtype, order="F")
    GQ = np.empty((n, max_basis + k), dtype=dtype, order="F")
    T = np.zeros((max_basis + k, max_basis + k))  # QᵀGQ, float64
    start, _ = scipy.linalg.qr(np.random.default_rng(seed).standard_normal((n, k)), mode="economic",
                               check_finite=False)
    Q[:, :k] = start
    G = G.T  # the same symmetric matrix, Fortran-ordered, as BLAS takes it without a copy
    GQ[:, :k] = _mm(G, Q[:, :k])
    T[:k, :k] = _mm(Q[:, :k], GQ[:, :k], trans_a=True)
    b, new, prev, products, checked_at = k, k, 0, 1, 0  # basis size, newest/previous block widths, products
    while True:
        if b >= n or products >= max_iter or products <= 3 or b >= 1.25 * checked_at \
                or b + k > max_basis:
            checked_at = b
            restart = b + k > max_basis and b < n and products < max_iter
            evals, evecs = _ritz(T[:b, :b], k if restart else 1)
            theta = float(evals[-1])
            y = evecs[:, -1:].astype(dtype)
            residual = _norm(_mm(GQ[:, :b], y) - theta * _mm(Q[:, :b], y))
            if residual <= tol * theta or b >= n:
                return theta, products, True
            if products >= max_iter:
                return theta, products, False
            if restart:  # restart from the k best Ritz vectors
                Y = evecs.astype(dtype)
                Q[:, :k], GQ[:, :k] = _mm(Q[:, :b], Y), _mm(GQ[:, :b], Y)
                T[:k, :k] = np.diag(evals)
                T[:k, k:] = 0
                T[k:, :k] = 0
                b, new, prev, checked_at = k, k, 0, k
        # next block: G times the newest block, orthogonalised against the whole basis. First
        # against the last two blocks (cheap: that is where almost all of G·Q_new lies, the block
        # three-term recurrence), then against all of it once, and once more only when that pass
        # removed a large part of a column (Kahan–Parlett "twice is enough" test, Parlett 1998 §6-9)
        W = GQ[:, b - new:b]
        lo = b - new - prev
        W = W - _mm(Q[:, lo:b], _mm(Q[:, lo:b], W, trans_a=True))
        for _ in range(2):
            before = np.linalg.norm(W, axis=0)  # column norms: numpy ufuncs, no BLAS
            W = W - _mm(Q[:, :b], _mm(Q[:, :b], W, trans_a=True))
            if bool((np.linalg.norm(W, axis=0) >= 0.7 * before).all()):
                break
        U, s, _ = scipy.linalg.svd(W, full_matrices=False, check_finite=False)
        keep = s > 1e-12 * float(T[:b, :b].diagonal().max())
        keep[n - b:] = False
        if not bool(keep.any()):  # K is invariant under G: its Ritz values are exact eigenvalues
            return float(_ritz(T[:b, :b], 1)[0][-1]), products, True
        W = U[:, keep]
        if float(s[keep].min()) < 1e-4 * float(s[0]):  # tiny directions: restore orthogonality
            W, _ = scipy.linalg.qr(W - _mm(Q[:, :b], _mm(Q[:, :b], W, trans_a=True)), mode="economic",
                                   check_finite=False)
        prev, new = new, W.shape[1]
        Q[:, b:b + new] = W
        GQ[:, b:b + new] = _mm(G, Q[:, b:b + new])
        off = _mm(Q[:, :b], GQ[:, b:b + new], trans_a=True)
        T[:b, b:b + new], T[b:b + new, :b] = off, off.T
        T[b:b + new, b:b + new] = _mm(Q[:, b:b + new], GQ[:, b:b + new], trans_a=True)
        b += new
        products += 1


def gram_top_eigenvalue(G, dense_max: int = DENSE_MAX, block_size: int = BLOCK_SIZE,
                        tol: float = 1e-5, max_iter: int = 300, seed: int = 42) -> tuple[float, int, bool]:
    """λ_max of a small-side Gram matrix G = MᵀM, i.e. ‖M‖_2². Only G's upper triangle (and
    diagonal) is read, so G may come straight from BLAS syrk, which fills nothing else.

    The eigenproblem is solved in fp32 (G's entries rounded once, a relative perturbation of
    ~6e-8, far below the 1e-3 target; the fp32 products run at twice the float64 speed).
    Up to `dense_max` rows a dense symmetric eigensolver is cheaper than the few dozen Krylov
    steps plus Ritz problems that block Lanczos needs on a flat spectrum: LAPACK `ssyevx` (SciPy)
    asked for the top eigenvalue only, a Householder reduction to tridiagonal form, then bisection
    for that one eigenvalue instead of the whole spectrum. It is backward stable, so
    |θ − λ_max| ≲ n·ε₃₂·λ_max. Above `dense_max` (the Gram matrices of 4096-wide 7B layers)
    `top_eigenvalue`'s block Lanczos with its residual test is used. A torch tensor (a Gram matrix
    left on a CUDA device) gets torch.linalg.eigvalsh there, at any size.
    Returns (λ_max, block products with G (0 for the dense solver), converged).
    """
    if not isinstance(G, np.ndarray):
        import torch

        top = float(torch.linalg.eigvalsh(G.float(), UPLO="U")[-1]) if float(G.diagonal().sum()) else 0.0
        return max(0.0, top), 0, True
    G = G.astype(np.float32, copy=False)
    n = G.shape[0]
    if n > dense_max:
        return top_eigenvalue(full_symmetric(G), block_size, tol, max_iter, seed)
    if float(np.trace(G)) == 0.0:  # trace = ‖M‖_F²
        return 0.0, 0, True
    top = scipy.linalg.eigvalsh(G, lower=False, driver="evx", subset_by_index=[n - 1, n - 1], check_finite=False)[0]
    return max(0.0, float(top)), 0, True


def stable_rank(fro_sq: float, spec_sq: float) -> float:
    """‖M‖_F² / ‖M‖_2² (1 for a rank-1 matrix, up to rank(M)); NaN for M = 0.

    Clamped at 1: a value below it can only be rounding in the top eigenvalue.
    """
    if spec_sq <= 0.0 or fro_sq <= 0.0:
        return math.nan
    return max(1.0, fro_sq / spec_sq)


def matrix_stats(a: Checkpoint, b: Checkpoint, name: str, device: str = "cpu", *,
                 chunk_elems: int = 1 << 20, block_size: int = BLOCK_SIZE, tol: float = 1e-5,
                 max_iter: int = 300, seed: int = 42, dense_max: int = DENSE_MAX) -> dict:
    """One per_matrix.csv row: ΔW = W_b − W_a in fp32, norms accumulated in float64."""
    layer, group = parse_layer_group(name)
    shape = a.shapes[name]
    tall = shape[0] >= shape[1]
    side = shape[1] if tall else shape[0]
    G_dw, G_w = GramSum(side, device), GramSum(side, device)
    fro_dw = fro_w = cross = 0.0  # ‖ΔW‖_F², ‖W_a‖_F², ⟨W_a, ΔW⟩_F, all in float64
    blocks = gram_blocks(shape, chunk_elems)
    # two fp32 slice buffers reused for every slice: a fresh 4 MB array per slice costs a page
    # fault per 4 kB page on first write
    numel = max(len(range(shape[0])[r]) * len(range(shape[1])[c]) for r, c in blocks)
    buf_a, buf_dw = np.empty(numel, dtype=np.float32), np.empty(numel, dtype=np.float32)
    for rows, cols in blocks:
        ra, rb = a.read(name, rows, cols), b.read(name, rows, cols)
        # the bf16/fp16 → fp32 casts are exact, so the only rounding is the fp32 subtraction
        if ra.dtype == np.float32:
            wa = ra
        else:
            wa = buf_a[:ra.size].reshape(ra.shape)
            np.copyto(wa, ra, casting="unsafe")
        dw = buf_dw[:rb.size].reshape(rb.shape)
        np.subtract(rb, wa, out=dw, dtype=np.float32, casting="unsafe")
        G_dw.add(dw, tall)
        G_w.add(wa, tall)
        fro_dw += sum_of_squares(dw)
        fro_w += sum_of_squares(wa)
        cross += inner_product(wa, dw)
    for what, fro in (("model A", fro_w), ("model B", fro_dw)):
        if not math.isfinite(fro):
            raise UsageError(f"{name}: the weights of {what} hold NaN or infinite values, so ‖ΔW‖ and its spectrum "
                             "are undefined; is the checkpoint corrupt or did its training diverge?")
    spec_dw, it_dw, ok_dw = gram_top_eigenvalue(G_dw.result(), dense_max, block_size, tol, max_iter, seed)
    del G_dw  # its n×n buffers are freed before W's eigenproblem starts
    spec_w, it_w, ok_w = gram_top_eigenvalue(G_w.result(), dense_max, block_size, tol, max_iter, seed)
    conv1d = a.model_type in CONV1D_MODEL_TYPES and name.endswith((".c_attn.weight", ".c_fc.weight", ".c_proj.weight"))
    out_features, in_features = (shape[1], shape[0]) if conv1d else shape
    return {
        "name": name, "layer": layer, "group": group, "shape0": out_features, "shape1": in_features,
        "dW_fro": math.sqrt(fro_dw), "dW_stable_rank": stable_rank(fro_dw, spec_dw),
        "W_stable_rank": stable_rank(fro_w, spec_w), "dW_spec": math.sqrt(spec_dw),
        "W_fro": math.sqrt(fro_w), "W_spec": math.sqrt(spec_w),
        "rel_change": math.sqrt(fro_dw / fro_w) if fro_w > 0 else math.nan,
        "dW_iters": it_dw, "W_iters": it_w, "converged": ok_dw and ok_w,
        "component": weight_component(name),
        "rel_dW_fro": math.sqrt(fro_dw / fro_w) if fro_w > 0 else math.nan,
        "cos_sim": cosine_similarity(fro_w, fro_dw, cross),
        "W_fro_sq": fro_w,  # for per_component.csv (not a CSV column)
    }


def cosine_similarity(fro_a_sq: float, fro_dw_sq: float, cross: float) -> float:
    """⟨W_a, W_b⟩_F / (‖W_a‖_F ‖W_b‖_F) from ‖W_a‖², ‖ΔW‖² and ⟨W_a, ΔW⟩ (W_b = W_a + ΔW):
    ⟨W_a, W_b⟩ = ‖W_a‖² + ⟨W_a, ΔW⟩ and ‖W_b‖² = ‖W_a‖² + 2⟨W_a, ΔW⟩ + ‖ΔW‖². Clamped to
    [−1, 1]; NaN when either matrix is zero."""
    fro_b_sq = fro_a_sq + 2.0 * cross + fro_dw_sq
    if fro_a_sq <= 0.0 or fro_b_sq <= 0.0:
        return math.nan
    return max(-1.0, min(1.0, (fro_a_sq + cross) / math.sqrt(fro_a_sq * fro_b_sq)))


def aggregate_per_layer(per_matrix: list[dict]) -> list[dict]:
    """per_layer.csv rows: for each decoder layer and group (layer −1 left out), in that order,

        dW_fro_layer        = √(Σ_i ‖ΔW_i‖_F²)   the layer's total change
        mean_dW_stable_rank = mean of dW_stable_rank over the matrices that changed (ΔW_i ≠ 0),
                              NaN when none did
        count_mats          = matrices aggregated;  count_changed = those with ΔW_i ≠ 0
    """
    groups: dict[tuple[int, str], list[dict]] = {}
    for row in per_matrix:
        if row["layer"] >= 0:
            groups.setdefault((int(row["layer"]), row["group"]), []).append(row)
    rows = []
    for (layer, group), members in sorted(groups.items()):
        changed = [r["dW_stable_rank"] for r in members if r["dW_fro"] > 0]
        rows.append({
            "layer": layer, "group": group,
            "dW_fro_layer": math.sqrt(math.fsum(r["dW_fro"] ** 2 for r in members)),
            "mean_dW_stable_rank": math.fsum(changed) / len(changed) if changed else math.nan,
            "count_mats": len(members), "count_changed": len(changed),
        })
    return rows


def aggregate_per_component(per_matrix: list[dict]) -> list[dict]:
    """per_component.csv rows: for each (layer, component), layer −1 (outside the decoder layers:
    embeddings, LM head) included, sorted by layer then component,

        dW_fro_sq           = Σ_i ‖ΔW_i‖_F²
        rel_dW_fro          = √(Σ_i ‖ΔW_i‖_F² / Σ_i ‖W_a,i‖_F²)   (NaN when the W_a are all zero)
        mean_dW_stable_rank = mean of dW_stable_rank over the matrices that changed, NaN when none did
        count_mats, count_changed
    """
    groups: dict[tuple[int, str], list[dict]] = {}
    for row in per_matrix:
        groups.setdefault((int(row["layer"]), row["component"]), []).append(row)
    rows = []
    for (layer, component), members in sorted(groups.items()):
        changed = [r["dW_stable_rank"] for r in members if r["dW_fro"] > 0]
        dw_sq = math.fsum(r["dW_fro"] ** 2 for r in members)
        w_sq = math.fsum(r["W_fro_sq"] if "W_fro_sq" in r else r["W_fro"] ** 2 for r in members)
        rows.append({
            "layer": layer, "component": component, "dW_fro_sq": dw_sq,
            "rel_dW_fro": math.sqrt(dw_sq / w_sq) if w_sq > 0 else math.nan,
            "mean_dW_stable_rank": math.fsum(changed) / len(changed) if changed else math.nan,
            "count_mats": len(members), "count_changed": len(changed),
        })
    return rows


def write_table_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    """One CSV with a header line; floats as Python writes them (shortest round-trip, `nan`)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(columns)
        out.writerows([row[c] for c in columns] for row in rows)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Per-matrix and per-layer statistics of ΔW = W_b − W_a (Frobenius norm, stable "
                    "rank) between two safetensors checkpoints of the same architecture.",
        formatter_class=_HelpFormatter)
    p.add_argument("--model-a", required=True, help="base model: local directory or Hugging Face hub ID")
    p.add_argument("--model-b", required=True, help="changed model: local directory or hub ID")
    p.add_argument("--outdir", default=None,
                   help="folder for per_matrix.csv, per_layer.csv and per_component.csv "
                        "(default: outputs/<basenameA>_vs_<basenameB>/param_stats)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"],
                   help="where the Gram products run (auto: CUDA > MPS > CPU; the CPU needs no torch)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="accepted for symmetry with the other tools; ΔW and its spectra are always "
                        "computed in fp32 with float64 accumulation, fp16/bf16 are ignored with a warning")
    p.add_argument("--seed", type=int, default=42, help="seed of the Lanczos start block (bit-reproducible)")
    p.add_argument("--tol", type=float, default=1e-5,
                   help="stop when the top Ritz pair's residual ‖Gv − θv‖ ≤ tol·θ (relative error bound on ‖·‖_2²)")
    p.add_argument("--block-size", type=int, default=BLOCK_SIZE, help="Lanczos block size")
    p.add_argument("--max-iter", type=int, default=300, help="max block products with the Gram matrix per matrix")
    p.add_argument("--dense-max", type=int, default=DENSE_MAX,
                   help="on the CPU, Gram matrices up to this size get a dense fp32 eigensolver, larger ones "
                        "block Lanczos (the default is where their measured costs cross); on CUDA always dense")
    p.add_argument("--chunk-mb", type=float, default=4.0,
                   help="large tensors are read in slices of about this many MB (fp32)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    outdir = Path(args.outdir) if args.outdir else Path("outputs") / (
        f"{Path(args.model_a.rstrip('/')).name}_vs_{Path(args.model_b.rstrip('/')).name}") / "param_stats"
    return run_tool(lambda: compare(args, outdir), kept="nothing was written")


def compare(args, outdir: Path) -> None:
    """The comparison: ΔW statistics of every matched matrix, written as the two CSVs."""
    if args.tol <= 0 or args.block_size < 1 or args.max_iter < 1 or args.chunk_mb <= 0 or args.dense_max < 0:
        raise UsageError("--tol and --chunk-mb must be positive, --block-size and --max-iter at least 1, "
                         "--dense-max at least 0")
    device = choose_device(args.device)
    if args.dtype in ("fp16", "bf16"):
        print(f"warning: --dtype {args.dtype} ignored: ΔW is always computed in fp32 from the stored "
              "weights (a half-precision subtraction inflates small differences)", file=sys.stderr)
    a, b = Checkpoint(args.model_a), Checkpoint(args.model_b)
    check_outdir(outdir, "per_*.csv", inputs=(a.dir, b.dir))  # before the work, not after it
    names, warnings = match_matrices(a, b)
    others = [n for n in names if parse_layer_group(n)[0] >= 0 and parse_layer_group(n)[1] == "other"]
    if others:
        warnings.append(f"{len(others)} matrices inside decoder layers are neither attention nor "
                        f"MLP and are grouped as 'other' (e.g. {', '.join(others[:3])})")
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    chunk_elems = max(1, int(args.chunk_mb * 2**20 / 4))
    # the bar is closed (its line ended) before an error line is printed
    # one step per matrix (total = the number of matrices), the periodic line names the last one done
    per_matrix = []
    with progress(names, desc="ΔW spectra", unit="matrix") as bar:
        for name in bar:
            per_matrix.append(matrix_stats(a, b, name, device, chunk_elems=chunk_elems, block_size=args.block_size,
                                           tol=args.tol, max_iter=args.max_iter, seed=args.seed,
                                           dense_max=args.dense_max))
            bar.set_postfix_str(name, refresh=False)
    stalled = [r["name"] for r in per_matrix if not r.pop("converged")]
    if stalled:
        print(f"warning: the spectral norm of {len(stalled)} matrices did not reach --tol "
              f"{args.tol:g} within --max-iter {args.max_iter} (e.g. {stalled[0]}); their stable "
              "ranks are upper bounds", file=sys.stderr)
    per_layer = aggregate_per_layer(per_matrix)
    per_component = aggregate_per_component(per_matrix)
    write_atomically({outdir / "per_matrix.csv": lambda p: write_table_csv(p, per_matrix, PER_MATRIX_COLUMNS),
                      outdir / "per_layer.csv": lambda p: write_table_csv(p, per_layer, PER_LAYER_COLUMNS),
                      outdir / "per_component.csv":
                          lambda p: write_table_csv(p, per_component, PER_COMPONENT_COLUMNS)})
    print(f"wrote {outdir / 'per_matrix.csv'} ({len(per_matrix)} matrices), {outdir / 'per_layer.csv'} "
          f"and {outdir / 'per_component.csv'}")
    changed = [r for r in per_layer if r["dW_fro_layer"] > 0]
    if changed:
        top = max(changed, key=lambda r: r["dW_fro_layer"])
        print(f"largest change: layer {top['layer']} {top['group']}, ‖ΔW‖_F = {top['dW_fro_layer']:.4g}")


if __name__ == "__main__":
    sys.exit(main())
