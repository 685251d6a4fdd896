"""LoRA against full-parameter training in unlearn.py: peak memory and time per step, same model,
same method, same batches, on more than one shape of GPT-NeoX (random weights).

    uv run python bench/bench_unlearn_lora.py [--shapes 128x6x1024,512x8x8192] [--methods ga,npo,cb_lat]

For each shape (hidden x layers x vocab) and method it runs unlearn.py twice:
  full   --trainable all           (every parameter trains: AdamW state and gradients for all of them)
  lora   --lora-r R                (peft adapters on query_key_value; the defaults of unlearn.py:
                                    every layer for ga/npo, layers 0 … --layer-id for cb_lat)
and prints two ratios (goal in brackets):
  peak memory  lora ÷ full   [≤ 0.35]
  time/step    lora ÷ full   [≤ 1.00]

Memory: each run in a fresh subprocess. On CPU (Linux) the figure is the peak RSS (VmHWM, reset
through /proc/self/clear_refs once torch, transformers, accelerate and peft are imported) minus the
RSS at that moment: weights, gradients, optimizer state, activations, the frozen copy of the
representation methods, and the save (merging included). "train" is the same peak read just before
the save phase starts (unlearn.save wrapped), "run" the peak of the whole run. On CUDA:
torch.cuda.max_memory_allocated() (whole run).
Time: both runs in this process, alternately, --repeats times; per run the median of unlearn.py's own
per-step times (metrics.json step_s, first step excluded as warm-up); the best run of each is kept.
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
from pathlib import Path
from statistics import median

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


def build(workdir: Path, hidden: int, layers: int, vocab: int, n: int, words: int, seed: int = 0) -> int:
    """A random-weight GPT-NeoX, a word-level tokenizer and forget/retain files of n lines each.
    Returns the parameter count."""
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
    return sum(p.numel() for p in model.parameters())


def unlearn_argv(workdir: Path, method: str, mode: str, args, out: str) -> list[str]:
    argv = ["--model", str(workdir / "model"), "--method", method, "--forget-data", str(workdir / "forget.txt"),
            "--retain-data", str(workdir / "retain.txt"), "--outdir", out, "--device", args.device,
            "--dtype", "fp32", "--batch-size", str(args.batch_size), "--max-length", str(args.words + 1),
            "--eval-split", "0", "--lr", "1e-4", "--no-gradient-checkpointing", "--lat-steps", "2"]
    if method in ("rmu", "cb", "cb_lat", "lat"):
        argv += ["--layer-id", str(args.layer)]
    return argv + (["--trainable", "all"] if mode == "full" else ["--lora-r", str(args.lora_r)])


def harness(workdir: Path, method: str, mode: str, args, on_save=None) -> dict:
    """unlearn.py in-process; returns its metrics (step_s: its own per-step times)."""
    import unlearn
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    if on_save is not None:
        real = unlearn.save

        def save(*a, **k):
            on_save()
            return real(*a, **k)
        unlearn.save = save
    with tempfile.TemporaryDirectory() as out:
        return unlearn.run(unlearn.build_parser().parse_args(unlearn_argv(workdir, method, mode, args, out + "/m")))


def child(args) -> None:
    """One configuration in a fresh process: print its peak memory (MB) before the save and overall."""
    import torch
    import transformers  # noqa: F401  (imported before the baseline RSS is read)
    import accelerate  # noqa: F401
    import peft  # noqa: F401
    import unlearn  # noqa: F401
    torch.set_num_threads(args.threads)
    method, mode = args.child.split(":")
    cuda = args.device == "cuda"
    base = rss_mb()
    reset_peak_rss()
    seen = {}

    def before_save():
        seen["train"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb() - base

    m = harness(Path(args.workdir), method, mode, args, before_save)
    run = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb() - base
    print(json.dumps({"train": seen["train"], "run": run, "steps": m["steps"]}))


def measure_memory(config: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", config, "--workdir", args.workdir] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
        if k in ("words", "batch_size", "threads", "device", "lora_r", "layer")]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if p.returncode != 0:
        sys.exit(f"child {config} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="128x6x1024,512x8x8192", help="hidden x layers x vocab, comma-separated")
    ap.add_argument("--methods", default="ga,npo,cb_lat")
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--words", type=int, default=128, help="tokens per sample")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    ap.add_argument("--repeats", type=int, default=2, help="timing runs of each side (0: memory only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--layer", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    import torch
    torch.set_num_threads(args.threads)
    print(f"unlearn.py full-parameter (--trainable all) vs LoRA (--lora-r {args.lora_r}); batch {args.batch_size} "
          f"forget + {args.batch_size} retain x {args.words} tokens; {args.steps} steps; device {args.device}, "
          f"{args.threads} thread(s); torch {torch.__version__}", flush=True)
    unit = "CUDA max allocated" if args.device == "cuda" else "peak RSS - RSS before model load"
    rows = []
    for shape in args.shapes.split(","):
        hidden, layers, vocab = (int(x) for x in shape.split("x"))
        args.layer = max(1, (2 * layers) // 3 - 1)  # cb_lat's target layer: the lower two thirds get adapters
        with tempfile.TemporaryDirectory() as wd:
            args.workdir = wd
            n_params = build(Path(wd), hidden, layers, vocab, n=args.steps * args.batch_size, words=args.words)
            print(f"\nGPT-NeoX hidden {hidden}, {layers} layers, vocab {vocab} ({n_params / 1e6:.2f}M params); "
                  f"cb_lat --layer-id {args.layer}", flush=True)
            for method in args.methods.split(","):
                mem = {mode: measure_memory(f"{method}:{mode}", args) for mode in ("full", "lora")}
                t = {"full": [], "lora": []}
                for _ in range(args.repeats):
                    for mode in t:
                        t[mode].append(median(harness(Path(wd), method, mode, args)["step_s"][1:]))
                best = {k: min(v) if v else float("nan") for k, v in t.items()}  # --repeats 0: memory only
                r_mem = mem["lora"]["run"] / mem["full"]["run"]
                r_train = mem["lora"]["train"] / mem["full"]["train"]
                r_time = best["lora"] / best["full"]
                rows.append((shape, method, r_mem, r_train, r_time))
                print(f"  {method:<7} memory MB ({unit}) full {mem['full']['run']:7.1f} (train {mem['full']['train']:7.1f})"
                      f"  lora {mem['lora']['run']:7.1f} (train {mem['lora']['train']:7.1f})"
                      f"  ratio {r_mem:.3f} (train {r_train:.3f}) [goal <= 0.35]   time/step full "
                      f"{best['full'] * 1e3:7.1f} ms  lora {best['lora'] * 1e3:7.1f} ms  ratio {r_time:.3f} "
                      f"[goal <= 1.00]", flush=True)
    print("\nsummary (shape, method, memory run ratio, memory train ratio, time ratio):")
    for row in rows:
        print(f"  {row[0]:<14} {row[1]:<7} {row[2]:.3f}  {row[3]:.3f}  {row[4]:.3f}")


if __name__ == "__main__":
    main()
