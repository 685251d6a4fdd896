# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "torch>=2.4",
#     "safetensors>=0.4",
#     "huggingface_hub>=0.30",
#     "numpy>=1.24",
#     "ml_dtypes>=0.4",
#     "scipy>=1.11",
#     "pyyaml>=6.0",
#     "threadpoolctl>=3.1",
#     "tqdm>=4.66",
# ]
# ///
"""Where in weight space did the model change?  Spectra, effective rank, subspace alignment and
intruder dimensions of ΔW = W_b − W_a, with a random baseline next to every alignment number.

For every 2-D weight of the chosen components (default the attention and MLP projections) this
writes one row of weight_geometry.csv (columns: docs/weight_geometry.md):

    dW_eff_rank_99, dW_top10_energy, dW_erank, dW_elbow      how many directions the change uses
    left_overlap_k, right_overlap_k (+ *_random)             do W_a and W_b keep their top-k subspaces
    dW_in_colspace_k, dW_in_rowspace_k (+ *_random)          does ΔW live in W_a's top directions
    intruders, intruder_max_cos_min                          new dominant directions of W_b
                                                             (Shuttleworth et al. 2024)

plus every singular value of every ΔW in dW_spectra.safetensors and the settings, versions and
input hashes in geometry_report.yaml.

Orientation: every matrix is taken as (out_features, in_features), the way torch's nn.Linear
stores it; GPT-2's Conv1D weights, stored (in, out), are transposed first. So "left" singular
vectors always live in a layer's output space (the residual stream for attn_out/mlp_out) and
"right" ones in its input space, whatever the architecture.

How it is computed (one decomposition per matrix shared by every column; accuracy: every column
within 1e-3 relative of a float64 full SVD, tests/test_weight_geometry.py):
  * The checkpoints are streamed tensor by tensor (each tensor read once, in its stored dtype);
    the two versions of one matrix are in memory at a time, never a whole model.
  * With T the matrix turned tall (L × s, L ≥ s), the three small-side Gram matrices TᵀT of W_a,
    W_b and ΔW are accumulated slice by slice in float64 (BLAS dsyrk: products of fp32/bf16 values
    are exact in float64; ΔW is formed in float64 too, where the subtraction is exact).
  * A float64 symmetric eigensolver then gives σ² and the small-side singular vectors: every
    eigenpair of W_a's Gram (the intruder test needs all of W_a's singular vectors), the top ones
    of W_b's and the eigenvalues only of ΔW's. In float64 the Gram route loses nothing that fp32
    weights hold: an eigenvalue's absolute error is ~s·ε₆₄·σ₁², so σ_i keeps ~6 digits down to
    σ_i ≈ 1e-5·σ₁ (an fp32 Gram, ε₃₂, would lose σ_i < 3e-4·σ₁).
  * The long-side vectors follow as T·v/σ for the few top ones (k columns, never the whole
    basis), in one more pass over the slices already in memory.
  * On CUDA the same runs in torch float64 on the device.

Usage:
    uv run --script collect_weight_geometry.py --model-a EleutherAI/deep-ignorance-unfiltered \\
        --model-b EleutherAI/deep-ignorance-unfiltered-cb-lat
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
import sys
import tempfile
from pathlib import Path

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so safetensors' numpy reader takes bf16)
import numpy as np
import scipy.linalg
from safetensors import SafetensorError, safe_open
from scipy.linalg.blas import dsyrk, get_blas_funcs
from threadpoolctl import threadpool_limits

# torch is imported only for a CUDA run (see choose_device)


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


GEOMETRY_COLUMNS = ["layer", "name", "component", "rows", "cols", "dW_fro", "rel_dW_fro", "dW_rank",
           "dW_eff_rank_99", "dW_top10_energy", "dW_erank", "dW_elbow", "k",
           "left_overlap_k", "left_overlap_k_random", "right_overlap_k", "right_overlap_k_random",
           "dW_in_colspace_k", "dW_in_colspace_k_random", "dW_in_rowspace_k", "dW_in_rowspace_k_random",
           "intruder_k", "intruders", "intruder_max_cos_min"]
DEFAULT_COMPONENTS = "qkv,attn_out,mlp_in,mlp_out"
ALL_COMPONENTS = ("qkv", "q", "k", "v", "attn_out", "mlp_in", "mlp_out", "embed", "unembed", "norm", "other")
EPS32, EPS64 = float(np.finfo(np.float32).eps), float(np.finfo(np.float64).eps)


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------
def parse_components(spec: str) -> set[str]:
    """--components: comma-separated names from ALL_COMPONENTS, or `all`. `qkv` also selects the
    separate q, k, v projections of architectures that split them (Llama)."""
    names = {c.strip() for c in spec.split(",") if c.strip()}
    if names == {"all"}:
        return set(ALL_COMPONENTS)
    bad = sorted(names - set(ALL_COMPONENTS))
    if not names or bad:
        raise UsageError(f"--components takes a comma-separated list of {', '.join(ALL_COMPONENTS)} or all "
                         f"(got {spec!r})")
    if "qkv" in names:
        names |= {"q", "k", "v"}
    return names


def parse_layer_spec(spec: str | None) -> set[int] | None:
    """--layers `0-3,7` → {0, 1, 2, 3, 7}; None (all layers) when not given."""
    if spec is None:
        return None
    layers: set[int] = set()
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise UsageError(f"--layers takes non-negative integers and ranges such as 0-3,7 (got {spec!r})")
        lo = int(m.group(1))
        layers.update(range(lo, int(m.group(2) or lo) + 1))
    return layers


def select_matrices(names: list[str], components: set[str], layers: set[int] | None) -> list[str]:
    """The names whose component was asked for; --layers filters the decoder layers (matrices
    outside them, such as the embeddings, are kept when their component was asked for)."""
    out = []
    for name in names:
        layer = parse_layer_group(name)[0]
        if weight_component(name) in components and (layers is None or layer < 0 or layer in layers):
            out.append(name)
    return out


# ----------------------------------------------------------------------------------------------
# The math: statistics of a spectrum
# ----------------------------------------------------------------------------------------------
def spectrum_stats(sigma: np.ndarray) -> dict:
    """The ΔW columns that need only its singular values σ (descending, zeros allowed):

        dW_rank          how many σ_i are non-zero (above the noise floor matrix_geometry applies)
        dW_eff_rank_99   smallest k with Σ_{i≤k} σ_i² ≥ 0.99·Σ σ_i²           (0 for ΔW = 0)
        dW_top10_energy  Σ_{i≤10} σ_i² / Σ σ_i²                               (empty for ΔW = 0)
        dW_erank         exp(H(p)), p_i = σ_i / Σ σ_j, H the Shannon entropy in nats
                         (Roy & Vetterli 2007; 1 for rank 1, r for r equal values; 0 for ΔW = 0)
        dW_elbow         elbow_index(σ)
    """
    s = np.asarray(sigma, dtype=np.float64)
    energy = s * s
    total = float(energy.sum())
    if total <= 0.0:
        return {"dW_rank": 0, "dW_eff_rank_99": 0, "dW_top10_energy": None, "dW_erank": 0.0, "dW_elbow": 0}
    cum = np.cumsum(energy)
    eff = int(np.searchsorted(cum, 0.99 * total, side="left")) + 1
    p = s[s > 0] / float(s.sum())
    return {"dW_rank": int((s > 0).sum()), "dW_eff_rank_99": min(eff, int((s > 0).sum())),
            "dW_top10_energy": float(energy[:10].sum()) / total,
            "dW_erank": float(np.exp(-(p * np.log(p)).sum())),
            "dW_elbow": elbow_index(s)}


def elbow_index(sigma: np.ndarray) -> int:
    """The elbow of a singular-value spectrum σ_1 ≥ … ≥ σ_r > 0 (zeros are dropped first), as a
    count: how many singular values come before the bend.

    The points (i, log10 σ_i), i = 1 … r, are scaled to the unit square (x = (i−1)/(r−1),
    y = (log σ_i − log σ_r)/(log σ_1 − log σ_r)); the chord joins the first point (0, 1) and the
    last (1, 0). The elbow point is the one farthest *below* the chord (distance (1 − x − y)/√2,
    the first of equal maxima: "kneedle" for a decreasing, convex curve), and dW_elbow is the
    number of values before it, i.e. its 0-based index. So a spectrum that drops after r₀ large
    values (a rank-r₀ change on a floor of small ones) has elbow r₀. Without a point below the
    chord (all σ equal, r ≤ 2, an exactly geometric decay or a concave one) there is no bend and
    dW_elbow = r; 0 for ΔW = 0, 1 for a rank-1 ΔW."""
    s = np.asarray(sigma, dtype=np.float64)
    s = s[s > 0]
    r = int(s.size)
    if r <= 2:
        return r
    y = np.log10(s)
    span = float(y[0] - y[-1])
    if span <= 0.0:
        return r
    x = np.arange(r, dtype=np.float64) / (r - 1)
    d = 1.0 - x - (y - y[-1]) / span
    i = int(np.argmax(d))
    return i if d[i] > 1e-12 else r


# ----------------------------------------------------------------------------------------------
# The math: one matrix
# ----------------------------------------------------------------------------------------------
def _gemm(a, b, trans_a: bool = False):
    """a·b (aᵀ·b with trans_a) in float64 by SciPy's BLAS (one OpenBLAS thread pool for the whole
    tool: see collect_param_stats.py's _mm), or torch's matmul for tensors on an accelerator.
    BLAS reads Fortran order: a C-ordered operand is handed over as its (Fortran-ordered)
    transpose with the transpose flag flipped, never copied."""
    if isinstance(a, np.ndarray):
        trans_b = False
        if not a.flags.f_contiguous and a.flags.c_contiguous:
            a, trans_a = a.T, not trans_a
        if not b.flags.f_contiguous and b.flags.c_contiguous:
            b, trans_b = b.T, True
        return get_blas_funcs("gemm", (a, b))(1.0, a, b, trans_a=trans_a, trans_b=trans_b)
    return (a.T if trans_a else a) @ b


class Ops:
    """The few dense operations of matrix_geometry: float64 numpy/SciPy on the CPU, float64 torch
    on a CUDA device."""

    def __init__(self, device: str = "cpu", use_torch: bool | None = None):
        self.device = device
        # the numpy/SciPy route on the CPU; torch on an accelerator (or, for the tests, on the CPU)
        self.cpu = device == "cpu" if use_torch is None else not use_torch

    def f64(self, block: np.ndarray):
        """A float64 copy of a row slice of T: C order, or Fortran order when T = Wᵀ is a transposed
        view (then the slice is a column block of the stored W, copied along its rows; a C-order copy
        would gather it element by element, 8x slower)."""
        if block.flags.c_contiguous or block.strides[0] > block.strides[1]:
            x = np.asarray(block, dtype=np.float64, order="C")
        else:
            x = np.asarray(block.T, dtype=np.float64, order="C").T
        if self.cpu:
            return x
        import torch

        return torch.from_numpy(x).to(self.device)

    def zeros(self, n: int, m: int):
        if self.cpu:
            return np.zeros((n, m), dtype=np.float64, order="F")
        import torch

        return torch.zeros(n, m, dtype=torch.float64, device=self.device)

    def gram_add(self, G, X):
        """G += XᵀX. On the CPU BLAS dsyrk, which writes the upper triangle only (half the work)."""
        if self.cpu:  # handed over in the order BLAS reads (Fortran), never copied
            if X.flags.f_contiguous:
                out = dsyrk(1.0, X, beta=1.0, c=G, trans=1, lower=0, overwrite_c=1)
            else:
                out = dsyrk(1.0, X.T, beta=1.0, c=G, trans=0, lower=0, overwrite_c=1)
            if out is not G:
                G[...] = out
        else:
            G += X.T @ X

    def eigh(self, G, top: int | None = None, vectors: bool = True):
        """Eigenvalues (descending, as numpy float64) and, with `vectors`, eigenvectors (columns,
        same order; on the device for torch) of the symmetric G (upper triangle read); `top`
        asks for the largest `top` only."""
        n = G.shape[0]
        if self.cpu:
            # G is not needed afterwards: LAPACK may overwrite it (no copy); dsyevr's workspace is O(n)
            if not vectors:
                w = scipy.linalg.eigh(G, lower=False, eigvals_only=True, driver="evr", overwrite_a=True,
                                      check_finite=False)
                return w[::-1].copy(), None
            subset = [n - top, n - 1] if top is not None and top < n else None
            # every eigenpair: divide and conquer (dsyevd), 15-25% faster than dsyevr here for 2n²
            # doubles of workspace; a subset: dsyevr, which computes only the vectors asked for
            driver = "evr" if subset else "evd"
            w, V = scipy.linalg.eigh(G, lower=False, subset_by_index=subset, driver=driver, overwrite_a=True,
                                     check_finite=False)
            return w[::-1].copy(), np.asfortranarray(V[:, ::-1])
        import torch

        if not vectors:
            return torch.linalg.eigvalsh(G).flip(0).cpu().numpy(), None
        w, V = torch.linalg.eigh(G)
        w, V = w.flip(0), V.flip(1)
        if top is not None:
            w, V = w[:top], V[:, :top]
        return w.cpu().numpy(), V.contiguous()

    def to_numpy(self, x) -> np.ndarray:
        return x if isinstance(x, np.ndarray) else x.cpu().numpy()

    def vec(self, v: np.ndarray):
        return v if self.cpu else __import__("torch").from_numpy(np.ascontiguousarray(v)).to(self.device)


def tall_view(raw: np.ndarray, conv1d: bool) -> tuple[np.ndarray, int, int, bool]:
    """(T, rows, cols, left_is_long): the stored array as the (out, in) matrix W (a GPT-2 Conv1D
    weight is stored (in, out) and is transposed), then turned tall: T = W when W has at least
    as many rows as columns, else T = Wᵀ. Views only, no copies. When left_is_long, T's long
    side is W's output side (left singular vectors), else W's input side (right ones)."""
    W = raw.T if conv1d else raw
    rows, cols = W.shape
    if rows >= cols:
        return W, rows, cols, True
    return W.T, rows, cols, False


def _sq(x) -> float:
    """Σ x² of a float64 array or tensor."""
    return float((x * x).sum())


def matrix_geometry(raw_a: np.ndarray, raw_b: np.ndarray, conv1d: bool = False, *, top_k: int = 20,
                    intruder_k: int = 10, intruder_eps: float = 0.5, chunk_elems: int = 1 << 19,
                    ops: Ops | None = None, name: str = "matrix") -> tuple[dict, np.ndarray]:
    """The weight_geometry.csv columns of one matrix (from its stored arrays in A and B, any
    float dtype) and the singular values of ΔW (descending, float64).

    Two passes over row slices of the tall matrix T (tall_view), each slice cast to float64:
      1. the Gram matrices TᵀT of W_a, W_b and ΔW (float64 dsyrk), then their eigenproblems:
         all eigenpairs of W_a's, the top K = max(k, intruder_k) of W_b's, the
         eigenvalues of ΔW's;
      2. the long-side top vectors L = T·v/σ of W_a and W_b, slice by slice, with every product
         the columns need: L_aᵀL_b (long-side overlap), L_aᵀ·ΔT (ΔW's energy in W_a's long-side
         top-k subspace), ‖ΔT·v_a‖² (small side), T_aᵀ·L_b (intruders when the left side is long).
    Thresholds: a singular value of W counts as non-zero when σ > max(rows, cols)·ε₃₂·σ₁ (below
    that an fp32 matrix holds only rounding); a ΔW singular value is set to 0 when
    σ² ≤ s·ε₆₄·σ₁², the float64 Gram route's noise floor.
    """
    ops = ops or Ops("cpu")
    if ops.cpu and min(raw_a.shape) < SMALL_SIDE_ONE_THREAD:
        # products and eigenproblems this small are too short to split across CPU threads: on a
        # busy machine OpenBLAS's hand-offs cost 10x the arithmetic (measured on the demo: 12.9 s
        # with 2 threads against 1.2 s with one, under load)
        with threadpool_limits(limits=1, user_api="blas"):
            return _matrix_geometry(raw_a, raw_b, conv1d, top_k, intruder_k, intruder_eps, chunk_elems, ops, name)
    return _matrix_geometry(raw_a, raw_b, conv1d, top_k, intruder_k, intruder_eps, chunk_elems, ops, name)


SMALL_SIDE_ONE_THREAD = 512


def _matrix_geometry(raw_a, raw_b, conv1d, top_k, intruder_k, intruder_eps, chunk_elems, ops, name):
    Ta, rows, cols, left_long = tall_view(raw_a, conv1d)
    Tb = tall_view(raw_b, conv1d)[0]
    L, s = Ta.shape
    step = max(1, chunk_elems // s)
    slices = [slice(i, min(i + step, L)) for i in range(0, L, step)]

    def blocks():
        for sl in slices:
            xa, xb = ops.f64(Ta[sl]), ops.f64(Tb[sl])
            yield sl, xa, xb, xb - xa  # the float64 subtraction of fp32/bf16 values is exact


    def non_finite(what):
        return UsageError(f"{name}: the weights of {what} hold NaN or infinite values, so ΔW and its "
                          "spectrum are undefined; is the checkpoint corrupt or did its training diverge?")

    # one sweep: the three s×s Gram matrices (memory: the largest matrix sets the peak)
    Ga, Gd, Gb = ops.zeros(s, s), ops.zeros(s, s), ops.zeros(s, s)
    for _, xa, xb, xd in blocks():
        ops.gram_add(Ga, xa)
        ops.gram_add(Gd, xd)
        ops.gram_add(Gb, xb)
    fro_a, fro_d, fro_b = (float(G.diagonal().sum()) for G in (Ga, Gd, Gb))
    if not math.isfinite(fro_a):
        raise non_finite("model A")
    if not (math.isfinite(fro_d) and math.isfinite(fro_b)):
        raise non_finite("model B")
    k = min(top_k, s)
    ki = min(intruder_k, s)
    # one after the other: the three tridiagonal reductions are memory-bound (ΔW's in a second thread through
    # NumPy's LAPACK, which releases the GIL, was 30% slower on two cores)
    lam_d, _ = ops.eigh(Gd, vectors=False)
    lam_a, Sa = ops.eigh(Ga) if fro_a > 0 else (np.zeros(s), None)
    lam_b, Sb = ops.eigh(Gb, top=max(k, ki)) if fro_b > 0 else (np.zeros(max(k, ki)), None)
    del Ga, Gd, Gb
    sig_d = np.sqrt(np.clip(lam_d, 0.0, None))
    if fro_d > 0:
        sig_d[lam_d <= s * EPS64 * float(lam_d[0])] = 0.0
    sig_a, sig_b = np.sqrt(np.clip(lam_a, 0.0, None)), np.sqrt(np.clip(lam_b, 0.0, None))
    tol = max(rows, cols) * EPS32
    rank_a = int((sig_a > tol * sig_a[0]).sum()) if fro_a > 0 else 0
    rank_b = int((sig_b > tol * sig_b[0]).sum()) if fro_b > 0 else 0  # among the top K only

    row = {"rows": rows, "cols": cols, "dW_fro": math.sqrt(fro_d),
           "rel_dW_fro": math.sqrt(fro_d / fro_a) if fro_a > 0 else None, **spectrum_stats(sig_d),
           "k": k, "left_overlap_k": None, "left_overlap_k_random": k / rows,
           "right_overlap_k": None, "right_overlap_k_random": k / cols,
           "dW_in_colspace_k": None, "dW_in_colspace_k_random": k / rows,
           "dW_in_rowspace_k": None, "dW_in_rowspace_k_random": k / cols,
           "intruder_k": min(ki, rank_b), "intruders": None, "intruder_max_cos_min": None}
    if Sa is None or Sb is None:  # W_a or W_b is zero: no singular vectors
        return row, sig_d
    ka, kb = min(k, rank_a), min(max(k, ki), rank_b)
    inv_a = ops.vec(1.0 / sig_a[:ka])
    inv_b = ops.vec(1.0 / sig_b[:kb])
    Sa_k, Sb_k = Sa[:, :ka], Sb[:, :kb]
    LL = ops.zeros(ka, kb)                  # L_aᵀ L_b
    LD = ops.zeros(ka, s)                   # L_aᵀ ΔT
    TL = ops.zeros(s, kb) if left_long else None  # T_aᵀ L_b
    small_d = 0.0                           # ‖ΔT·S_a,k‖²
    for _, xa, xb, xd in blocks():
        la = _gemm(xa, Sa_k) * inv_a
        lb = _gemm(xb, Sb_k) * inv_b
        LL += _gemm(la, lb, trans_a=True)
        LD += _gemm(la, xd, trans_a=True)
        if left_long:
            TL += _gemm(xa, lb, trans_a=True)
        small_d += _sq(_gemm(xd, Sa_k))
    long_d = _sq(LD)
    overlap_ok = ka == k and kb >= k
    long_overlap = _sq(LL[:, :k]) / k if overlap_ok else None
    small_overlap = _sq(_gemm(Sa_k, Sb_k[:, :k], trans_a=True)) / k if overlap_ok else None
    share = (lambda x: min(1.0, x / fro_d)) if fro_d > 0 and ka == k else (lambda x: None)
    if left_long:
        row.update(left_overlap_k=long_overlap, right_overlap_k=small_overlap,
                   dW_in_colspace_k=share(long_d), dW_in_rowspace_k=share(small_d))
    else:
        row.update(left_overlap_k=small_overlap, right_overlap_k=long_overlap,
                   dW_in_colspace_k=share(small_d), dW_in_rowspace_k=share(long_d))
    # intruders: cos(u_b,i, u_a,j) for the top left vectors of W_b against every left vector of
    # W_a with a non-zero singular value
    ni = min(ki, rank_b)
    if ni > 0:
        if left_long:  # u_a,j = T_a v_a,j / σ_a,j, so u_a,jᵀ u_b,i = v_a,jᵀ (T_aᵀ u_b,i) / σ_a,j
            C = ops.to_numpy(_gemm(Sa[:, :rank_a], TL[:, :ni], trans_a=True)) / sig_a[:rank_a, None]
        else:          # the left side is the small side: the eigenvectors themselves
            C = ops.to_numpy(_gemm(Sa[:, :rank_a], Sb[:, :ni], trans_a=True))
        best = np.abs(C).max(axis=0)
        row.update(intruders=int((best < intruder_eps).sum()), intruder_max_cos_min=float(best.min()))
    else:
        row.update(intruders=0)
    return row, sig_d


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------
def format_cell(value) -> str:
    """CSV cell: empty for an undefined quantity (None), integers as integers, floats as Python
    writes them (shortest round trip)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_geometry_csv(path: Path, rows: list[dict], columns: list[str] = GEOMETRY_COLUMNS) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(columns)
        out.writerows([format_cell(row[c]) for c in columns] for row in rows)


def spectra_bytes(spectra: dict[str, np.ndarray]) -> bytes:
    """dW_spectra.safetensors: one float32 vector of singular values (descending) per weight name."""
    from safetensors.numpy import save

    return save({name: np.ascontiguousarray(s, dtype=np.float32) for name, s in spectra.items()},
                # one metadata key: safetensors writes a map's keys in no fixed order
                metadata={"content": "singular values of dW = W_b - W_a, descending; matrices as (out_features, in_features)"})


def make_geometry_report(args, device: str, a: Checkpoint, b: Checkpoint, names: list[str]) -> dict:
    """geometry_report.yaml: no timings, so the same inputs give byte-identical files."""
    import scipy
    import yaml  # noqa: F401  (checked here: the report is written with it)

    def hashes(ckpt: Checkpoint) -> dict:
        return {p.name: sha256_file(p) for p in sorted(set(ckpt.files[n] for n in ckpt.shapes))}

    return {
        "Models": {"model_a": args.model_a, "model_b": args.model_b,
                   "model_a_dir": str(a.dir), "model_b_dir": str(b.dir)},
        "Settings": {"top_k": args.top_k, "intruder_k": args.intruder_k, "intruder_eps": args.intruder_eps,
                     "components": args.components, "layers": args.layers, "device": device,
                     "seed": args.seed, "chunk_mb": args.chunk_mb,
                     "orientation": "(out_features, in_features); GPT-2 Conv1D weights transposed",
                     "nonzero_singular_value": "sigma > max(rows, cols) * eps_fp32 * sigma_1",
                     "dW_spectrum_floor": "sigma^2 <= min(rows, cols) * eps_fp64 * sigma_1^2 set to 0"},
        "Matrices": len(names),
        "Input_sha256": {"model_a": hashes(a), "model_b": hashes(b)},
        "Versions": {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__},
    }


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Where in weight space two checkpoints of the same architecture differ: ΔW spectra "
                    "(effective rank, energy, elbow), top-k subspace alignment of W_a and W_b, ΔW's share in "
                    "W_a's top directions and intruder dimensions, each with its random baseline.",
        formatter_class=_HelpFormatter)
    p.add_argument("--model-a", required=True, help="base model: local directory or Hugging Face hub ID")
    p.add_argument("--model-b", required=True, help="changed model: local directory or hub ID")
    p.add_argument("--outdir", default=None,
                   help="folder for weight_geometry.csv, dW_spectra.safetensors and geometry_report.yaml "
                        "(default: outputs/<basenameA>_vs_<basenameB>/weight_geometry)")
    p.add_argument("--top-k", type=int, default=20, help="k of the top-k singular subspaces")
    p.add_argument("--intruder-k", type=int, default=10, help="how many top left singular vectors of W_b are tested")
    p.add_argument("--intruder-eps", type=float, default=0.5,
                   help="a vector of W_b is an intruder when its largest |cos| with W_a's left singular vectors is below this")
    p.add_argument("--components", default=DEFAULT_COMPONENTS,
                   help=f"comma-separated from {','.join(ALL_COMPONENTS)}, or all (qkv includes q,k,v)")
    p.add_argument("--layers", default=None, help="decoder layers, e.g. 0-31 or 0,4,8 (default: all)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                   help="where the Gram products and eigensolvers run (auto: CUDA if present, else CPU without torch)")
    p.add_argument("--seed", type=int, default=0,
                   help="recorded in the report; the computation is deterministic and draws nothing at random")
    p.add_argument("--chunk-mb", type=float, default=4.0, help="matrices are processed in float64 slices of about this size")
    return p


def run(args) -> int:
    outdir = Path(args.outdir) if args.outdir else Path("outputs") / (
        f"{Path(args.model_a.rstrip('/')).name}_vs_{Path(args.model_b.rstrip('/')).name}") / "weight_geometry"
    if args.top_k < 1 or args.intruder_k < 1 or args.chunk_mb <= 0 or not 0 < args.intruder_eps <= 1:
        raise UsageError("--top-k and --intruder-k must be at least 1, --chunk-mb positive, "
                         "--intruder-eps in (0, 1]")
    components, layers = parse_components(args.components), parse_layer_spec(args.layers)
    if args.device == "mps":
        raise UsageError("--device mps has no float64; use cpu")
    device = choose_device(args.device)
    if device == "mps":
        device = "cpu"
    ops = Ops(device)
    a, b = Checkpoint(args.model_a), Checkpoint(args.model_b)
    # the marker is this tool's CSV: collect_activation_geometry.py writes a geometry_report.yaml too
    check_outdir(outdir, "weight_geometry.csv",
                 owned=("weight_geometry.csv", "dW_spectra.safetensors", "geometry_report.yaml"),
                 inputs=(a.dir, b.dir))
    names, warnings = match_matrices(a, b)
    names = select_matrices(names, components, layers)
    if not names:
        raise UsageError(f"no weight matrix matches --components {args.components}"
                         + (f" and --layers {args.layers}" if args.layers else ""))
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    chunk_elems = max(1, int(args.chunk_mb * 2**20 / 8))
    rows, spectra = [], {}
    print(f"weight geometry: {len(names)} matrices of {a.spec} vs {b.spec}", file=sys.stderr, flush=True)
    with progress(names, desc="weight geometry", unit="matrix") as bar:
        for name in bar:
            full = (slice(None), slice(None))
            raw_a, raw_b = a.read(name, *full), b.read(name, *full)
            conv1d = a.model_type in CONV1D_MODEL_TYPES and name.endswith(
                (".c_attn.weight", ".c_fc.weight", ".c_proj.weight"))
            row, sigma = matrix_geometry(raw_a, raw_b, conv1d, top_k=args.top_k, intruder_k=args.intruder_k,
                                         intruder_eps=args.intruder_eps, chunk_elems=chunk_elems, ops=ops,
                                         name=name)
            del raw_a, raw_b
            rows.append({"layer": parse_layer_group(name)[0], "name": name,
                         "component": weight_component(name), **row})
            spectra[name] = sigma
    import yaml

    report = make_geometry_report(args, device, a, b, names)
    write_atomically({
        outdir / "weight_geometry.csv": lambda p: write_geometry_csv(p, rows),
        outdir / "dW_spectra.safetensors": spectra_bytes(spectra),
        outdir / "geometry_report.yaml": yaml.safe_dump(report, sort_keys=False, allow_unicode=True),
    })
    changed = [r for r in rows if r["dW_fro"] > 0]
    print(f"wrote {outdir / 'weight_geometry.csv'} ({len(rows)} matrices, {len(changed)} changed), "
          f"dW_spectra.safetensors and geometry_report.yaml")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(lambda: run(args), kept="nothing was written")


if __name__ == "__main__":
    sys.exit(main())
