"""Benchmark: collect_activation_norms.py against two bare forward passes, in the same process.

    uv run python bench/bench_activation_norms.py [--texts 100] [--reps 1] [--threads 1]

Baseline (a): what a user would write without the tool: load model A, run it over the texts in file
order (batch size 8, padding to the longest text of each batch, max length 192) with a plain
``model(**batch, output_hidden_states=True)`` call (so the LM head computes logits), then the same
for model B. (b): the whole tool, ``collect_activation_norms.main`` (tokenise, pass 1 with the disk
cache, pass 2, CSV), once with the default fp32 cache and once with ``--cache-fp16``.
To show what the cache itself costs it also times (d), the tool's forward work without the cache:
the base models (no logits) over the texts sorted by length, nothing stored; (b) - (d) is the price
of writing and reading the cache and of the norms. Model loading is inside every timing.
Goal: (b) / (a) <= 1.0 in wall time. Each line also gives the process CPU time: with one torch thread
(the default here) it counts the work done and barely moves when other jobs share the machine, so it
is the figure to trust on a busy box.

The models are a random GPT-NeoX pair (hidden 384, 6 layers, GPT-NeoX's vocabulary of 50304: the LM
head is 2/3 of the baseline's FLOPs here, ~3% on the 6.9B study models) and the texts are synthetic,
log-uniform in length between ~4 and 192 tokens, forget and retain 50/50.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import collect_activation_norms as can  # noqa: E402
from conftest import build_tokenizer, make_tiny_model, save_model  # noqa: E402

BATCH, MAX_LEN = 8, 192
CONFIG = dict(vocab_size=50304, hidden=384, layers=6, heads=6, max_pos=2048)


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Synthetic sentences of log-uniform length (roughly 4-250 tokens with the bench tokenizer)."""
    rng = random.Random(seed)
    words = ["reactor", "protein", "the", "of", "virus", "library", "river", "council", "enzyme", "market",
             "a", "and", "signal", "culture", "north", "season", "quartz", "vector", "harbour", "is"]
    texts = []
    for _ in range(n):
        k = int(math.exp(rng.uniform(math.log(3), math.log(110))))
        texts.append(" ".join(rng.choice(words) for _ in range(k)) + ".")
    return texts


def bare_passes(dirs, texts, with_logits: bool, sort: bool = False) -> tuple[float, float]:
    """Wall and CPU seconds for: for each model, load it and run all texts (file order or sorted), padded per batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0, c0 = time.perf_counter(), time.process_time()
    tok = AutoTokenizer.from_pretrained(dirs[0])
    if sort:
        texts = sorted(texts, key=lambda t: -len(tok(t, truncation=True, max_length=MAX_LEN)["input_ids"]))
    for d in dirs:
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, use_safetensors=True).eval()
        fwd = model if with_logits else model.base_model
        with torch.inference_mode():
            for i in range(0, len(texts), BATCH):
                batch = tok(texts[i:i + BATCH], padding=True, truncation=True, max_length=MAX_LEN,
                            return_tensors="pt")
                out = fwd(**batch, output_hidden_states=True)
                assert len(out.hidden_states) == CONFIG["layers"] + 1
        del model, fwd, out
    return time.perf_counter() - t0, time.process_time() - c0


def tool(dirs, files, tmp: Path, *extra) -> tuple[tuple[float, float], int]:
    """Wall and CPU seconds for the whole tool, and the bytes its cache held at the end of pass 1."""
    seen = {}
    real_pass_one = can.pass_one

    def measuring_pass_one(body, batches, device, cache_dir, *args):
        real_pass_one(body, batches, device, cache_dir, *args)
        seen["bytes"] = sum(p.stat().st_size for p in Path(cache_dir).iterdir())

    can.pass_one = measuring_pass_one
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        rc = can.main(["--model-a", str(dirs[0]), "--model-b", str(dirs[1]), "--forget-text", str(files[0]),
                       "--retain-text", str(files[1]), "--outdir", str(tmp / "out"), "--device", "cpu",
                       "--dtype", "fp32", "--batch-size", str(BATCH), "--max-length", str(MAX_LEN),
                       "--cache-dir", str(tmp), *extra])
        elapsed = time.perf_counter() - t0, time.process_time() - c0
    finally:
        can.pass_one = real_pass_one
    assert rc == 0
    return elapsed, seen["bytes"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--texts", type=int, default=100, help="number of texts (half forget, half retain)")
    p.add_argument("--reps", type=int, default=1, help="repetitions; the minimum time is reported")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        texts = make_texts(args.texts)
        tok = build_tokenizer(texts[:50] + ["Glimmer reactors hum."], vocab_size=320)
        a = make_tiny_model("gpt_neox", seed=0, **CONFIG)
        b = make_tiny_model("gpt_neox", seed=0, **CONFIG)
        with torch.no_grad():  # model B: one decoder layer changed
            for w in b.gpt_neox.layers[4].parameters():
                w.add_(0.02 * torch.randn_like(w))
        dirs = (save_model(a, tmp / "model_a", tok), save_model(b, tmp / "model_b", tok))
        del a, b
        half = len(texts) // 2
        files = (tmp / "forget.txt", tmp / "retain.txt")
        files[0].write_text("\n".join(texts[:half]) + "\n")
        files[1].write_text("\n".join(texts[half:]) + "\n")
        n_tok = sum(len(x) for x in tok(texts, truncation=True, max_length=MAX_LEN)["input_ids"])
        print(f"models: GPT-NeoX hidden {CONFIG['hidden']}, {CONFIG['layers']} layers, vocab {CONFIG['vocab_size']}; "
              f"{len(texts)} texts, {n_tok} tokens; batch {BATCH}, max length {MAX_LEN}; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
        bare_passes(dirs, texts[:8], True)  # warm-up: imports, allocator, kernels

        times = {"a": [], "b32": [], "b16": [], "d": []}
        for _ in range(args.reps):
            times["a"].append(bare_passes(dirs, texts, with_logits=True))
            t32, bytes32 = tool(dirs, files, tmp)
            times["b32"].append(t32)
            t16, bytes16 = tool(dirs, files, tmp, "--cache-fp16")
            times["b16"].append(t16)
            times["d"].append(bare_passes(dirs, texts, with_logits=False, sort=True))
        best = {k: min(v) for k, v in times.items()}  # (wall, cpu) of the fastest repetition
        a = best["a"]

        def line(label, k, note=""):
            w, c = best[k]
            print(f"{label:<50} wall {w:6.1f} s ({w / a[0]:.2f}x)   cpu {c:6.1f} s ({c / a[1]:.2f}x){note}")

        line("(a) two bare forward passes, logits, file order", "a")
        line("(b) collect_activation_norms, fp32 cache", "b32", f"   cache {bytes32:,} bytes")
        line("(b) collect_activation_norms, --cache-fp16", "b16", f"   cache {bytes16:,} bytes")
        line("(d) base models, sorted, no logits, no cache", "d")
        print(f"cache + norms cost, (b fp32) - (d): wall {best['b32'][0] - best['d'][0]:.1f} s, "
              f"cpu {best['b32'][1] - best['d'][1]:.1f} s; cache per token: {bytes32 / n_tok:,.0f} B fp32, "
              f"{bytes16 / n_tok:,.0f} B fp16")
        print(f"goal (b)/(a) <= 1.0 (wall, fp32 cache): {'met' if best['b32'][0] <= a[0] else 'NOT met'} "
              f"({best['b32'][0] / a[0]:.2f}x)")


if __name__ == "__main__":
    main()
