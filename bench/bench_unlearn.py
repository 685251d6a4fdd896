"""Benchmarks for unlearn.py against hand-written baselines, on a small GPT-NeoX (random weights).

    uv run python bench/bench_unlearn.py [--hidden 512 --layers 8 --steps 12 --threads 1]

Prints four ratios (goal in brackets):
  1. time/step of `ga` through unlearn.py  ÷  a bare hand-written loop, same model and batches   [≤ 1.10]
  2. peak memory of `npo` and `dpo`        ÷  peak memory of `ga`                              [≤ 1.15]
  3. time/step of `rmu`, target layer at 25% depth  ÷  a full-depth forward/backward step       [≤ 0.50]
  4. peak memory of `rmu` and `cb`         ÷  plain training of the same parameters            [≤ 1.15]

Time: both sides run in this process, alternately, `--repeats` times; per run the median step time
(first step excluded as warm-up) is taken, and the best run of each side is kept.
Memory: each configuration runs in a fresh subprocess; on CPU (Linux) the figure is the peak RSS
(VmHWM, reset through /proc/self/clear_refs once torch, transformers and accelerate are imported)
minus the RSS at that moment, so it counts weights, gradients, optimizer state and activations. On CUDA it is torch.cuda.max_memory_allocated().

The "full-depth step" and the "plain training" baselines are the same hand-written loop: forward
the forget and the retain batch through the whole model (logits included), NLL loss, backward,
clip, AdamW, with exactly the parameters unlearn.py trains (`all` for ga, the target layer for rmu).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from statistics import median
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(workdir: Path, hidden: int, layers: int, vocab: int, n: int, words: int, seed: int = 0) -> None:
    """A random-weight GPT-NeoX, a word-level tokenizer and forget/retain files of n lines each."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, PreTrainedTokenizerFast

    vocab_words = [f"w{i}" for i in range(vocab - 2)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<|endoftext|>", "<|pad|>"] + vocab_words)},
                                     unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  pad_token="<|pad|>")
    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                        max_position_embeddings=2 * words, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(workdir / "model")
    tok.save_pretrained(workdir / "model")
    rng = random.Random(seed)
    half = len(vocab_words) // 2  # forget and retain use disjoint words: no overlap
    for name, pool in (("forget", vocab_words[:half]), ("retain", vocab_words[half:])):
        lines = [" ".join(rng.choice(pool) for _ in range(words)) for _ in range(n)]
        (workdir / f"{name}.txt").write_text("\n".join(lines) + "\n")


def unlearn_argv(workdir: Path, method: str, args, out: str) -> list[str]:
    argv = ["--model", str(workdir / "model"), "--method", method, "--forget-data", str(workdir / "forget.txt"),
            "--retain-data", str(workdir / "retain.txt"), "--outdir", out, "--device", args.device,
            "--dtype", "fp32", "--batch-size", str(args.batch_size), "--max-length", str(args.words + 1),
            "--eval-split", "0", "--lr", "1e-5", "--no-gradient-checkpointing"]
    if method in ("rmu", "cb", "cb_lat", "lat"):
        argv += ["--layer-id", str(args.layers // 4)]
    return argv


def bare_loop(workdir: Path, args, trainable: str) -> float:
    """Hand-written baseline (nanoGPT style): median seconds per step, first step (warm-up) excluded."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    dev = torch.device(args.device if args.device != "auto" else "cpu")
    tok = AutoTokenizer.from_pretrained(workdir / "model")
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32).to(dev).train()
    if trainable != "all":
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith(trainable))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    f = (workdir / "forget.txt").read_text().splitlines()
    r = (workdir / "retain.txt").read_text().splitlines()
    B = args.batch_size

    def nll(texts):
        enc = tok(texts, return_tensors="pt", padding=True).to(dev)
        logits = model(**enc, use_cache=False).logits[:, :-1].float()
        tgt, m = enc["input_ids"][:, 1:], enc["attention_mask"][:, 1:].float()
        tok_nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), reduction="none")
        return ((tok_nll.view(tgt.shape) * m).sum(1) / m.sum(1)).mean()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    for step in range(args.steps):
        sync()
        t = time.perf_counter()
        fb, rb = f[step * B:(step + 1) * B], r[step * B:(step + 1) * B]
        loss = -nll(fb) + nll(rb) if trainable == "all" else nll(fb) + nll(rb)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        sync()
        times.append(time.perf_counter() - t)
    return median(times[1:])


def harness(workdir: Path, method: str, args) -> float:
    """unlearn.py in-process; returns the median of its own per-step times (first step = warm-up)."""
    import unlearn
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    with tempfile.TemporaryDirectory() as out:
        m = unlearn.run(unlearn.build_parser().parse_args(unlearn_argv(workdir, method, args, out + "/m")))
    return median(m["step_s"][1:])


def child(args) -> None:
    """One configuration in a fresh process: print the peak memory (MB) it needed."""
    import torch
    import transformers  # noqa: F401  (imported before the baseline RSS is read)
    import accelerate  # noqa: F401
    import unlearn  # noqa: F401
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    cuda = args.device == "cuda"
    base = rss_mb()
    reset_peak_rss()
    if args.child.startswith("bare:"):
        bare_loop(workdir, args, args.child[5:])
    else:
        harness(workdir, args.child, args)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb() - base
    print(json.dumps({"peak_mb": peak}))


def measure_memory(config: str, args) -> float:
    cmd = [sys.executable, __file__, "--child", config, "--workdir", args.workdir] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
        if k in ("hidden", "layers", "vocab", "words", "batch_size", "steps", "threads", "device")]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if p.returncode != 0:
        sys.exit(f"child {config} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--words", type=int, default=128, help="tokens per sample")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    import torch
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as wd:
        args.workdir = wd
        workdir = Path(wd)
        build(workdir, args.hidden, args.layers, args.vocab, n=args.steps * args.batch_size, words=args.words)
        n_params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM
                       .from_pretrained(workdir / "model").parameters())
        L = args.layers // 4
        print(f"GPT-NeoX hidden {args.hidden}, {args.layers} layers, vocab {args.vocab} ({n_params / 1e6:.1f}M params); "
              f"batch {args.batch_size} forget + {args.batch_size} retain x {args.words} tokens; {args.steps} steps; "
              f"device {args.device}, {args.threads} thread(s); torch {torch.__version__}", flush=True)

        # 1. time: ga vs bare loop; 3. rmu at 25% depth vs a full-depth step of the same parameters
        layer_prefix = f"gpt_neox.layers.{L}."
        t = {"bare_ga": [], "ga": [], "bare_layer": [], "rmu": []}
        for _ in range(args.repeats):
            t["bare_ga"].append(bare_loop(workdir, args, "all"))
            t["ga"].append(harness(workdir, "ga", args))
            t["bare_layer"].append(bare_loop(workdir, args, layer_prefix))
            t["rmu"].append(harness(workdir, "rmu", args))
        best = {k: min(v) for k, v in t.items()}
        print(f"time/step  bare loop (all params) {best['bare_ga'] * 1e3:8.1f} ms   ga via unlearn.py "
              f"{best['ga'] * 1e3:8.1f} ms   ratio {best['ga'] / best['bare_ga']:.3f}   [goal <= 1.10]")
        print(f"time/step  full-depth step (layer {L} trainable) {best['bare_layer'] * 1e3:8.1f} ms   rmu layer {L} "
              f"({100 * L // args.layers}% depth) {best['rmu'] * 1e3:8.1f} ms   ratio "
              f"{best['rmu'] / best['bare_layer']:.3f}   [goal <= 0.50]", flush=True)

        # 2. memory: npo/dpo vs ga; 4. rmu/cb vs plain training of the same parameters
        mem = {c: measure_memory(c, args) for c in ("ga", "npo", "dpo", f"bare:{layer_prefix}", "rmu", "cb")}
        unit = "MB (CUDA max allocated)" if args.device == "cuda" else "MB (peak RSS - RSS before model load)"
        print(f"memory {unit}: " + ", ".join(f"{k.split(':')[0]} {v:.0f}" for k, v in mem.items()))
        print(f"memory  npo/ga {mem['npo'] / mem['ga']:.3f}   dpo/ga {mem['dpo'] / mem['ga']:.3f}   [goal <= 1.15]")
        plain = mem[f"bare:{layer_prefix}"]
        print(f"memory  rmu/plain {mem['rmu'] / plain:.3f}   cb/plain {mem['cb'] / plain:.3f}   "
              f"(plain = full-model NLL training of layer {L} only)   [goal <= 1.15]")


if __name__ == "__main__":
    main()
