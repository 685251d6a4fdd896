# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "torch>=2.4",
#     "transformers>=5.0,<6",
#     "tokenizers>=0.21",
#     "safetensors>=0.4",
#     "tqdm>=4.66",
# ]
# ///
"""Build the demo model family: a miniature of the reference study that runs offline on a CPU.

The reference study compares EleutherAI/deep-ignorance-unfiltered (GPT-NeoX 6.9B, pretrained on
data that includes biothreat-proxy text) with two twins that lack that knowledge in different
ways: deep-ignorance-e2e-strong-filter (same recipe, the hazardous documents filtered out of the
pretraining data) and deep-ignorance-unfiltered-cb-lat (the unfiltered model after Circuit
Breakers + Latent Adversarial Training unlearning). This script builds the same three roles at
toy scale, so every analysis tool can be run end to end without a GPU or the hub:

  demo-unfiltered          a tiny GPT-NeoX trained from scratch on forget + retain text
  demo-e2e-strong-filter   the same initialisation, the same number of steps, retain text only
  demo-unfiltered-cb-lat   ``unlearn.py --method cb_lat`` applied to demo-unfiltered, made the way
                           the real one was: LoRA adapters on the attention ``query_key_value``
                           of the lower layers, merged into the weights

The text is ``create_datasets.py --source synthetic``: forget = facts of an invented technical
domain (the stand-in for hazardous knowledge), retain = everyday prose. The models train on all of
``forget.txt`` / ``retain.txt``; the untouched test splits (``forget_test.txt``, ``retain_test.txt``)
are held out, and the NLL of every model on them is printed and saved to
``<outdir>/demo_report.json`` (the unfiltered model knows the domain: its forget NLL is well below
the filtered twin's; the cb-lat twin's forget NLL rises while its retain NLL stays close).

Everything is deterministic from ``--seed`` (CPU, fp32, seeded data order) and cached: each step
writes a ``build_info.json`` with a fingerprint of its settings and inputs, and a rerun skips
every step whose fingerprint still matches (change a setting and that step and the ones after it
are rebuilt). Models are written atomically (temporary folder, then rename) as sharded
safetensors with their tokenizer.

Usage:
    uv run --script demo/build_demo.py [--outdir demo/models] [--seed 0]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
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


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


ROOT = Path(__file__).resolve().parents[1]
BUILD_VERSION = 1  # bump to invalidate every cached step after a change in this script
NAMES = {"unfiltered": "demo-unfiltered", "filtered": "demo-e2e-strong-filter", "cb_lat": "demo-unfiltered-cb-lat"}

# The miniature: GPT-NeoX with the reference model's layout (parallel residual, rotary, untied
# embeddings), 6 layers of width 128. ~1.4 M parameters: a few hundred AdamW steps on a CPU.
MODEL = {"hidden_size": 128, "num_hidden_layers": 6, "num_attention_heads": 4, "intermediate_size": 512,
         "max_position_embeddings": 256, "vocab_size": 1024}
# 400 steps with 8 forget lines a batch: enough repetitions of the invented domain's facts for the
# unfiltered twin to answer its multiple-choice questions well above chance (200 x 4 stayed at chance).
TRAIN = {"steps": 400, "batch_size": 16, "forget_per_batch": 8, "lr": 3e-3, "warmup": 20, "weight_decay": 0.1,
         "max_length": 128, "eval_fraction": 0.1}
# CB-LAT made the way the real deep-ignorance-unfiltered-cb-lat was (LoRA rank 16 on the attention
# query_key_value of layers 0-30 of 32, merged): LoRA rank 8, alpha 16 (hidden size 128) on query_key_value of
# layers 0-4 of 6, the representations of target layers 2 and 4 rerouted on forget text while retain
# representations are held at their original values. Only those five matrices change, each by a
# rank-≤8 update (stable rank near 1, as in the real twin).
CB_LAT = {"layer_id": "2,4", "lora_r": 8, "lora_alpha": 16.0, "lora_target_modules": "query_key_value",
          "lora_layers": "0-4", "lr": 1e-2, "epochs": 1, "batch_size": 8, "alpha": 10.0,
          "steering_coeff": 20.0, "lat_eps": 0.1, "lat_steps": 3, "eval_split": 0.1}


# ----------------------------------------------------------------------------------------------
# Caching: one fingerprint per step
# ----------------------------------------------------------------------------------------------
def fingerprint(settings: dict) -> str:
    """SHA-256 of the canonical JSON of ``settings`` (which include the upstream fingerprints)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def file_sha256(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def cached(folder: Path, fp: str) -> dict | None:
    """The ``build_info.json`` of ``folder`` when it records fingerprint ``fp`` (else None)."""
    try:
        info = json.loads((folder / "build_info.json").read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("fingerprint") == fp else None


def write_info(folder: Path, fp: str, settings: dict, **extra) -> None:
    (folder / "build_info.json").write_text(
        json.dumps({"fingerprint": fp, "settings": settings, **extra}, indent=2, sort_keys=True) + "\n")


def script_command(script: Path) -> list[str]:
    """How a sibling tool is started: ``$UV_RUN`` (as in study.sh), else ``uv run --quiet --script``,
    else this Python (the tools are standalone scripts, never imported)."""
    if os.environ.get("UV_RUN"):
        return shlex.split(os.environ["UV_RUN"]) + [str(script)]
    if shutil.which("uv"):
        return ["uv", "run", "--quiet", "--script", str(script)]
    return [sys.executable, str(script)]


def run_script(name: str, args: list[str]) -> None:
    """Run ``<repo>/<name>`` with ``args``; its output goes to ours; failure -> UsageError."""
    cmd = script_command(ROOT / name) + args
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    # one thread: the demo's numbers must not depend on the core count, and two threads fighting
    # other processes for two cores run many times slower than one
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    rc = subprocess.run(cmd, env=env).returncode
    if rc != 0:
        raise UsageError(f"{name} failed with exit status {rc} (its output is above)")


# ----------------------------------------------------------------------------------------------
# Data, tokenizer, model
# ----------------------------------------------------------------------------------------------
DATA_FILES = ("forget.txt", "retain.txt", "forget_test.txt", "retain_test.txt", "forget_mcq.jsonl", "retain_mcq.jsonl")


def train_and_heldout(forget_file: Path, retain_file: Path):
    """(forget train, forget held-out, retain train, retain held-out, held-out files).

    The models train on every line of the forget and retain files; the report scores the untouched
    test splits that create_datasets.py writes beside them (``forget_test.txt``, ``retain_test.txt``).
    Without those files the last ``eval_fraction`` of each file is held out instead."""
    tests = [Path(forget_file).with_name("forget_test.txt"), Path(retain_file).with_name("retain_test.txt")]
    if all(t.is_file() for t in tests):
        return read_lines(forget_file), read_lines(tests[0]), read_lines(retain_file), read_lines(tests[1]), tests
    forget_train, forget_eval = split_heldout(read_lines(forget_file), TRAIN["eval_fraction"])
    retain_train, retain_eval = split_heldout(read_lines(retain_file), TRAIN["eval_fraction"])
    return forget_train, forget_eval, retain_train, retain_eval, []


def split_heldout(lines: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(train, held-out): the last ``fraction`` of the lines is held out (create_datasets.py already
    wrote them in seeded random order)."""
    n_eval = max(1, round(len(lines) * fraction))
    return lines[:-n_eval], lines[-n_eval:]


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (the GPT-NeoX kind) trained on ``texts``, with NeoX's special
    tokens: ``<|endoftext|>`` (bos/eos, id 0) and ``<|padding|>`` (pad, id 1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|padding|>", model_max_length=MODEL["max_position_embeddings"])


def init_model(tokenizer, seed: int):
    """The shared random initialisation of both pretrained twins (deterministic for ``seed``)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(**{**MODEL, "vocab_size": len(tokenizer)}, tie_word_embeddings=False,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(config)


def encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each line followed by ``<|endoftext|>``, truncated to ``max_length``."""
    ids = tokenizer(texts, truncation=True, max_length=max_length - 1)["input_ids"]
    return [x + [tokenizer.eos_token_id] for x in ids]


def pad(seqs: list[list[int]], pad_id: int):
    """(input_ids, attention_mask, labels) of a right-padded batch; padded labels are -100."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask, ids.masked_fill(mask == 0, -100)


def mean_nll(model, seqs: list[list[int]], pad_id: int, batch_size: int = 32) -> float:
    """Token-weighted mean negative log-likelihood (nats/token) of ``seqs`` under ``model``:
    NLL = −(1/T) Σ_t log p(x_t | x_<t), over every predicted (non-pad) token."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(seqs), batch_size):
            ids, mask, labels = pad(seqs[i:i + batch_size], pad_id)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            target = labels[:, 1:]
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                  ignore_index=-100, reduction="sum")
            total += nll.item()
            count += int((target != -100).sum())
    return total / max(count, 1)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up to ``lr``, then cosine decay to lr/10 (nanoGPT's schedule)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def batch_plan(n_forget: int, n_retain: int, forget_per_batch: int, batch_size: int, steps: int,
               seed: int) -> list[tuple[list[int], list[int]]]:
    """The (forget indices, retain indices) of every step's batch.

    Each set is read epoch by epoch, each epoch a random permutation drawn from its own generator
    (forget: ``seed``, retain: ``seed + 1``), so the retain part of the plan does not depend on
    ``forget_per_batch``: both twins see the same retain lines at the same step.
    """
    import torch

    def stream(n: int, k: int, gen_seed: int):
        gen, order, out = torch.Generator().manual_seed(gen_seed), [], []
        for _ in range(steps):
            while k and len(order) < k:
                order += torch.randperm(n, generator=gen).tolist()
            out.append(order[:k])
            del order[:k]
        return out

    forget_idx = stream(n_forget, forget_per_batch, seed)
    retain_idx = stream(n_retain, batch_size, seed + 1)
    return list(zip(forget_idx, retain_idx))


def pretrain(model, forget: list[list[int]], retain: list[list[int]], forget_per_batch: int, pad_id: int,
             seed: int, train: dict, desc: str = "pretrain", position: int = 0):
    """Plain causal-LM pretraining with AdamW: each of ``steps`` batches holds ``batch_size`` retain
    lines plus ``forget_per_batch`` forget lines (0 for the filtered twin). Each set is read epoch by
    epoch in its own seeded random order, so both twins see exactly the same retain batches in the
    same order and differ only by the forget lines: data filtering in its purest form.
    fp32 on the CPU: bit-reproducible."""
    import torch

    steps = train["steps"]
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": train["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=train["lr"], betas=(0.9, 0.95))
    plan = batch_plan(len(forget), len(retain), forget_per_batch, train["batch_size"], steps, seed)
    model.train()
    bar = progress(range(steps), desc=desc, unit="step", mininterval=2.0, position=position)
    for step in bar:
        fi, ri = plan[step]
        ids, mask, labels = pad([forget[i] for i in fi] + [retain[i] for i in ri], pad_id)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, train["lr"], train["warmup"])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def save_model(model, tokenizer, final: Path, fp: str, settings: dict, files: dict | None = None,
               **extra) -> None:
    """Sharded safetensors (≥ 2 shards, like the hub checkpoints) + tokenizer + build_info.json
    (+ ``files``: name -> text), written to a temporary folder and renamed into place."""
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        model.save_pretrained(tmp, max_shard_size="2MB")
        tokenizer.save_pretrained(tmp)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        write_info(tmp, fp, settings, **extra)
        publish_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def weight_diff_signature(base: dict, new: dict) -> dict:
    """Which weights differ between two state dicts, and how: ``{name: ΔW stable rank}`` of every
    changed matrix (‖ΔW‖_F² / ‖ΔW‖_2², float64; the definition collect_param_stats.py uses), and
    ``null`` for a changed vector."""
    import torch

    out = {}
    for name, w in base.items():
        if torch.equal(w, new[name]):
            continue
        d = new[name].double() - w.double()
        out[name] = (round(float(d.square().sum() / torch.linalg.matrix_norm(d, ord=2) ** 2), 4)
                     if d.dim() == 2 else None)
    return out


def train_twin(job: dict) -> float:
    """Build one pretrained twin from scratch and save it (runs in a worker process, one thread).

    Both twins start from ``init_model(tokenizer, seed)``, hence from identical weights."""
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    t = time.time()
    tokenizer = AutoTokenizer.from_pretrained(job["tokenizer"])
    model = pretrain(init_model(tokenizer, job["seed"]), job["forget"], job["retain"], job["forget_per_batch"],
                     tokenizer.pad_token_id, job["seed"], job["train"], job["name"], job["position"])
    seconds = round(time.time() - t, 1)
    save_model(model, tokenizer, Path(job["final"]), job["fp"], job["settings"], build_seconds=seconds)
    return seconds


# ----------------------------------------------------------------------------------------------
# The build
# ----------------------------------------------------------------------------------------------
def build(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    # 1. data -------------------------------------------------------------------------------
    if args.forget_data or args.retain_data:
        if not (args.forget_data and args.retain_data):
            raise UsageError("give both --forget-data and --retain-data (or neither)")
        forget_file, retain_file = Path(args.forget_data), Path(args.retain_data)
        for f in (forget_file, retain_file):
            if not f.is_file():
                raise UsageError(f"{f} does not exist")
    else:
        data_dir = out / "data"
        settings = {"source": "synthetic", "seed": args.data_seed, "n_forget": 500, "n_retain": 500, "n_test": 100,
                    "script": file_sha256(ROOT / "create_datasets.py")}
        fp = fingerprint(settings)
        forget_file, retain_file = data_dir / "forget.txt", data_dir / "retain.txt"
        if cached(data_dir, fp) and all((data_dir / f).is_file() for f in DATA_FILES):
            print(f"[1/5] data: cached in {data_dir}")
        else:
            print(f"[1/5] data: create_datasets.py --source synthetic -> {data_dir}", flush=True)
            run_script("create_datasets.py", ["--source", "synthetic", "--seed", str(args.data_seed),
                                            "--n-test", "100", "--outdir", str(data_dir)])
            write_info(data_dir, fp, settings)
    forget_train, forget_eval, retain_train, retain_eval, held = train_and_heldout(forget_file, retain_file)
    data_hash = file_sha256(forget_file, retain_file, *held)
    if len(forget_train) < 10 or len(retain_train) < 10:
        raise UsageError("the forget and retain data need at least 12 lines each")

    # 2. tokenizer -------------------------------------------------------------------------------
    tok_dir = out / "tokenizer"
    tok_settings = {"data": data_hash, "vocab_size": MODEL["vocab_size"], "version": BUILD_VERSION}
    tok_fp = fingerprint(tok_settings)
    if cached(tok_dir, tok_fp):
        print(f"[2/5] tokenizer: cached in {tok_dir}")
    else:
        print(f"[2/5] tokenizer: byte-level BPE, vocab {MODEL['vocab_size']}", flush=True)
        tokenizer = train_tokenizer(forget_train + retain_train + forget_eval + retain_eval, MODEL["vocab_size"])
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=".tmp-tokenizer-"))
        try:
            tokenizer.save_pretrained(tmp)
            write_info(tmp, tok_fp, tok_settings)
            publish_folder(tmp, tok_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    pad_id, max_len = tokenizer.pad_token_id, TRAIN["max_length"]
    enc = {k: encode(tokenizer, v, max_len) for k, v in
           {"forget_train": forget_train, "retain_train": retain_train,
            "forget_eval": forget_eval, "retain_eval": retain_eval}.items()}

    # 3./4. the two pretrained twins: same init, same retain batches, forget lines or none ----------
    train = {**TRAIN, "steps": args.steps}
    pre_settings = {"tokenizer": tok_fp, "data": data_hash, "model": MODEL, "train": train,
                    "seed": args.seed, "version": BUILD_VERSION}
    jobs = []
    for i, role in enumerate(("unfiltered", "filtered"), start=3):
        final = out / NAMES[role]
        settings = {**pre_settings, "role": role}
        fp = fingerprint(settings)
        if cached(final, fp):
            print(f"[{i}/5] {NAMES[role]}: cached")
            continue
        k = train["forget_per_batch"] if role == "unfiltered" else 0
        print(f"[{i}/5] {NAMES[role]}: {train['steps']} steps of {train['batch_size']} retain"
              + (f" + {k} forget lines" if k else " lines (forget data filtered out)"), flush=True)
        jobs.append({"name": NAMES[role], "final": str(final), "fp": fp, "settings": settings, "seed": args.seed,
                     "tokenizer": str(tok_dir), "forget": enc["forget_train"], "retain": enc["retain_train"],
                     "forget_per_batch": k, "train": train, "position": len(jobs)})
    if len(jobs) > 1 and args.jobs > 1:
        # the twins are independent: one single-threaded process each (no thread oversubscription,
        # and the same bits as a sequential build)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(train_twin, jobs))
    else:
        for job in jobs:
            train_twin(job)
    torch.set_num_threads(1)

    # 5. cb-lat twin: unlearn.py on the unfiltered model --------------------------------------
    base_fp = json.loads((out / NAMES["unfiltered"] / "build_info.json").read_text())["fingerprint"]
    unlearn = ROOT / "unlearn.py"
    if not unlearn.is_file():
        raise UsageError(f"{unlearn} is missing; it builds the cb-lat twin")
    cb = {**CB_LAT, "epochs": args.cb_lat_epochs}
    cb_settings = {"base": base_fp, "cb_lat": cb, "max_length": max_len, "seed": args.seed,
                   "unlearn_py": file_sha256(unlearn), "version": BUILD_VERSION}
    cb_fp = fingerprint(cb_settings)
    final = out / NAMES["cb_lat"]
    if cached(final, cb_fp):
        print(f"[5/5] {NAMES['cb_lat']}: cached")
    else:
        print(f"[5/5] {NAMES['cb_lat']}: unlearn.py --method cb_lat, target layers {cb['layer_id']}, LoRA rank "
              f"{cb['lora_r']} on {cb['lora_target_modules']} of layers {cb['lora_layers']}", flush=True)
        work = Path(tempfile.mkdtemp(dir=out, prefix=".tmp-cb-lat-run-"))
        try:
            (work / "forget.txt").write_text("".join(s + "\n" for s in forget_train), encoding="utf-8")
            (work / "retain.txt").write_text("".join(s + "\n" for s in retain_train), encoding="utf-8")
            t = time.time()
            run_script("unlearn.py", [
                "--model", str(out / NAMES["unfiltered"]), "--method", "cb_lat",
                "--forget-data", str(work / "forget.txt"), "--retain-data", str(work / "retain.txt"),
                "--outdir", str(work / "model"), "--layer-id", cb["layer_id"], "--lr", str(cb["lr"]),
                "--epochs", str(cb["epochs"]), "--batch-size", str(cb["batch_size"]),
                "--alpha", str(cb["alpha"]), "--steering-coeff", str(cb["steering_coeff"]),
                "--lat-eps", str(cb["lat_eps"]), "--lat-steps", str(cb["lat_steps"]),
                "--lora-r", str(cb["lora_r"]), "--lora-alpha", str(cb["lora_alpha"]),
                "--lora-target-modules", cb["lora_target_modules"], "--lora-layers", cb["lora_layers"],
                "--max-length", str(max_len), "--seed", str(args.seed), "--device", "cpu", "--dtype", "fp32",
                "--eval-split", str(cb["eval_split"]),
                "--forget-domain", "synthetic crystal-engineering facts", "--retain-domain", "synthetic everyday prose"])
            seconds = round(time.time() - t, 1)
            # re-save in the family's format (sharded, with build_info.json), keeping unlearn.py's reports
            model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32)
            reports = {name: (work / "model" / name).read_text() for name in ("metrics.json", "run_report.yaml")
                       if (work / "model" / name).is_file()}
            save_model(model, AutoTokenizer.from_pretrained(tok_dir), final, cb_fp, cb_settings, files=reports,
                       build_seconds=seconds)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # report: held-out NLL of every model ----------------------------------------------------------
    report = {"seed": args.seed, "models": {}, "heldout": {"forget": len(forget_eval), "retain": len(retain_eval)},
              "model_config": MODEL, "pretraining": train, "cb_lat": cb}
    for role, name in NAMES.items():
        model = AutoModelForCausalLM.from_pretrained(out / name, dtype=torch.float32)
        info = json.loads((out / name / "build_info.json").read_text())
        report["models"][name] = {"forget_nll": round(mean_nll(model, enc["forget_eval"], pad_id), 4),
                                  "retain_nll": round(mean_nll(model, enc["retain_eval"], pad_id), 4),
                                  "build_seconds": info.get("build_seconds"),
                                  "parameters": sum(p.numel() for p in model.parameters())}
    # the cb-lat twin's weight-diff signature (the real one: only query_key_value, rank 1-2)
    report["cb_lat_weight_diff"] = weight_diff_signature(
        AutoModelForCausalLM.from_pretrained(out / NAMES["unfiltered"], dtype=torch.float32).state_dict(),
        AutoModelForCausalLM.from_pretrained(out / NAMES["cb_lat"], dtype=torch.float32).state_dict())
    m = report["models"]
    u, f, c = m[NAMES["unfiltered"]], m[NAMES["filtered"]], m[NAMES["cb_lat"]]
    report["checks"] = {
        "forget_nll_filtered_minus_unfiltered": round(f["forget_nll"] - u["forget_nll"], 4),
        "retain_nll_filtered_minus_unfiltered": round(f["retain_nll"] - u["retain_nll"], 4),
        "forget_nll_cb_lat_minus_unfiltered": round(c["forget_nll"] - u["forget_nll"], 4),
        "retain_nll_cb_lat_minus_unfiltered": round(c["retain_nll"] - u["retain_nll"], 4),
    }
    report["run_seconds"] = round(time.time() - t0, 1)
    tmp = out / f".demo_report.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out / "demo_report.json")
    return report


def print_report(report: dict) -> None:
    print(f"\nheld-out NLL (nats/token; {report['heldout']['forget']} forget, "
          f"{report['heldout']['retain']} retain lines):")
    cb = report["cb_lat"]
    print(f"  {'model':<26}{'forget':>9}{'retain':>9}   (cb-lat: LoRA rank {cb['lora_r']} on "
          f"{cb['lora_target_modules']} of layers {cb['lora_layers']}, target layers {cb['layer_id']})")
    for name, r in report["models"].items():
        print(f"  {name:<26}{r['forget_nll']:>9.3f}{r['retain_nll']:>9.3f}")
    for k, v in report["checks"].items():
        print(f"  {k}: {v:+.3f}")
    diff = report.get("cb_lat_weight_diff", {})
    print(f"cb-lat weight diff: {len(diff)} changed tensors, ΔW stable rank "
          + ", ".join(f"{k.removesuffix('.weight')} {v:.2f}" for k, v in diff.items() if v is not None))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outdir", default=str(ROOT / "demo" / "models"), help="where the family goes (default demo/models)")
    p.add_argument("--seed", type=int, default=0, help="initialisation, data order and unlearning seed (default 0)")
    p.add_argument("--data-seed", type=int, default=42,
                   help="seed of create_datasets.py --source synthetic (default 42, its own default)")
    p.add_argument("--forget-data", help="use this forget file instead of generating the synthetic one")
    p.add_argument("--retain-data", help="use this retain file instead of generating the synthetic one")
    p.add_argument("--steps", type=int, default=TRAIN["steps"],
                   help=f"pretraining steps of each twin (default {TRAIN['steps']})")
    p.add_argument("--cb-lat-epochs", type=int, default=CB_LAT["epochs"],
                   help=f"epochs of the cb-lat unlearning run (default {CB_LAT['epochs']})")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes for the two pretraining runs, one thread each (default: 2 when 2 cores)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def work() -> None:
        report = build(args)
        print_report(report)
        print(f"\ndemo family ready in {args.outdir} ({report['run_seconds']:.0f} s); report: "
              f"{Path(args.outdir) / 'demo_report.json'}")

    return run_tool(work, kept="finished models are kept, unfinished ones were not written")


if __name__ == "__main__":
    sys.exit(main())
