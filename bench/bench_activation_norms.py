"""Benchmark: collect_activation_norms.py against two bare forward passes, in the same process.

    uv run python bench/bench_activation_norms.py [--texts 200] [--reps 1]

Baseline (a): what a user would write without the tool: load model A, run it over the texts in file
order (batch size 8, padding to the longest text of each batch, max length 256) with a plain
``model(**batch, output_hidden_states=True)`` call (so the LM head computes logits), then the same
for model B. (b): the whole tool, ``collect_activation_norms.main`` (tokenise, pass 1 with the disk
cache, pass 2, CSV), once with the default fp32 cache and once with ``--cache-fp16``.
For attribution it also times (c): bare passes of the base models (no logits), texts in file order.
Model loading is inside every timing. Goal: (b) / (a) <= 1.0.

The models are a random GPT-NeoX pair (hidden 512, 8 layers, GPT-NeoX's vocabulary of 50304) and the
texts are synthetic, log-uniform in length between 8 and 256 tokens, forget and retain 50/50.
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

BATCH, MAX_LEN = 8, 256
CONFIG = dict(vocab_size=50304, hidden=512, layers=8, heads=8, max_pos=2048)


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Synthetic sentences of log-uniform length (roughly 8-256 tokens with the bench tokenizer)."""
    rng = random.Random(seed)
    words = ["reactor", "protein", "the", "of", "virus", "library", "river", "council", "enzyme", "market",
             "a", "and", "signal", "culture", "north", "season", "quartz", "vector", "harbour", "is"]
    texts = []
    for _ in range(n):
        k = int(math.exp(rng.uniform(math.log(3), math.log(110))))
        texts.append(" ".join(rng.choice(words) for _ in range(k)) + ".")
    return texts


def bare_passes(dirs, texts, with_logits: bool) -> float:
    """Seconds for: for each model, load it and run all texts in file order, padded per batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(dirs[0])
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
    return time.perf_counter() - t0


def tool(dirs, files, tmp: Path, *extra) -> tuple[float, int]:
    """Seconds for the whole tool, and the bytes its cache held at the end of pass 1."""
    seen = {}
    real_pass_one = can.pass_one

    def measuring_pass_one(body, batches, device, cache_dir, *args):
        real_pass_one(body, batches, device, cache_dir, *args)
        seen["bytes"] = sum(p.stat().st_size for p in Path(cache_dir).iterdir())

    can.pass_one = measuring_pass_one
    try:
        t0 = time.perf_counter()
        rc = can.main(["--model-a", str(dirs[0]), "--model-b", str(dirs[1]), "--forget-text", str(files[0]),
                       "--retain-text", str(files[1]), "--outdir", str(tmp / "out"), "--device", "cpu",
                       "--dtype", "fp32", "--batch-size", str(BATCH), "--max-length", str(MAX_LEN),
                       "--cache-dir", str(tmp), *extra])
        elapsed = time.perf_counter() - t0
    finally:
        can.pass_one = real_pass_one
    assert rc == 0
    return elapsed, seen["bytes"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--texts", type=int, default=200, help="number of texts (half forget, half retain)")
    p.add_argument("--reps", type=int, default=1, help="repetitions; the minimum time is reported")
    args = p.parse_args()
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
        bare_passes(dirs, texts[:16], True)  # warm-up: imports, allocator, kernels

        times = {"a": [], "b32": [], "b16": [], "c": []}
        for _ in range(args.reps):
            times["a"].append(bare_passes(dirs, texts, with_logits=True))
            t32, bytes32 = tool(dirs, files, tmp)
            times["b32"].append(t32)
            t16, bytes16 = tool(dirs, files, tmp, "--cache-fp16")
            times["b16"].append(t16)
            times["c"].append(bare_passes(dirs, texts, with_logits=False))
        best = {k: min(v) for k, v in times.items()}
        print(f"(a) two bare forward passes, logits, file order: {best['a']:.1f} s")
        print(f"(b) collect_activation_norms, fp32 cache:         {best['b32']:.1f} s  "
              f"ratio {best['b32'] / best['a']:.2f}x  cache {bytes32:,} bytes ({bytes32 / n_tok:,.0f} B/token)")
        print(f"(b) collect_activation_norms, fp16 cache:         {best['b16']:.1f} s  "
              f"ratio {best['b16'] / best['a']:.2f}x  cache {bytes16:,} bytes ({bytes16 / n_tok:,.0f} B/token)")
        print(f"(c) two bare passes, no logits, file order:       {best['c']:.1f} s  "
              f"ratio {best['c'] / best['a']:.2f}x (what dropping the LM head alone saves)")
        print(f"goal (b)/(a) <= 1.0: {'met' if best['b32'] <= best['a'] else 'NOT met'}")


if __name__ == "__main__":
    main()
