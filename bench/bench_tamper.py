"""Benchmark of tamper_attack.py against a bare hand-written fine-tuning loop, on random GPT-NeoX models.

    uv run python bench/bench_tamper.py [--shapes 128x6,512x8] [--steps 30] [--repeats 3] [--threads 1]

Prints, per shape (hidden x layers):
  1. time per attack step of tamper_attack.py  ÷  a bare hand-written loop on the same model and
     batches (forward with labels, backward, clip 1.0, AdamW; nothing else)          [goal ≤ 1.10]
  2. the evaluation's share of an attack run at the demo's cadence (forget/retain test NLL and a
     forget MCQ set through lm-eval at step 0 and every --eval-every steps)          [reported]

Time: both sides run in this process, alternately, ``--repeats`` times; per run the median step
time (first step excluded as warm-up) is taken and the best run of each side is kept. The tool's
step time is its own per-step clock (batch assembly, the batch digest, the step and its loss read),
so the ratio is what the attack loop adds around the same arithmetic.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(workdir: Path, hidden: int, layers: int, vocab: int, n: int, words: int, seed: int = 0) -> None:
    """A random-weight GPT-NeoX with a word-level tokenizer; attack, forget-test, retain-test and MCQ files."""
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
                        num_attention_heads=max(1, hidden // 32), intermediate_size=4 * hidden,
                        max_position_embeddings=2 * words, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(workdir / "model")
    tok.save_pretrained(workdir / "model")
    rng = random.Random(seed)

    def lines(k):
        return "\n".join(" ".join(rng.choice(vocab_words) for _ in range(rng.randint(words // 2, words)))
                         for _ in range(k)) + "\n"

    (workdir / "attack.txt").write_text(lines(n))
    (workdir / "forget_test.txt").write_text(lines(50))
    (workdir / "retain_test.txt").write_text(lines(50))
    mcq = [{"question": " ".join(rng.choice(vocab_words) for _ in range(8)),
            "choices": [rng.choice(vocab_words) for _ in range(4)], "answer": rng.randrange(4)} for _ in range(40)]
    (workdir / "mcq.jsonl").write_text("".join(json.dumps(m) + "\n" for m in mcq))


def tool_args(workdir: Path, a, steps: int, eval_every: int, mcq: bool, out: str) -> list[str]:
    argv = ["--model", str(workdir / "model"), "--attack-data", str(workdir / "attack.txt"),
            "--forget-test", str(workdir / "forget_test.txt"), "--retain-test", str(workdir / "retain_test.txt"),
            "--steps", str(steps), "--eval-every", str(eval_every), "--lr", "3e-4", "--batch-size", str(a.batch_size),
            "--max-length", str(a.words + 1), "--device", a.device, "--dtype", "fp32", "--outdir", out]
    return argv + (["--mcq-forget", str(workdir / "mcq.jsonl")] if mcq else [])


def run_tool(workdir: Path, a, steps: int, eval_every: int, mcq: bool) -> dict:
    import tamper_attack as ta
    with tempfile.TemporaryDirectory() as out:
        args = ta.build_parser().parse_args(tool_args(workdir, a, steps, eval_every, mcq, out + "/t"))
        t0 = time.perf_counter()
        res = ta.run(args)
        wall = time.perf_counter() - t0
    r = next(iter(res["results"].values()))
    return {"step": median(r["step_times"][1:]), "train": r["train_seconds"], "eval": r["eval_seconds"],
            "wall": wall}


def bare_loop(workdir: Path, a) -> float:
    """Hand-written baseline (nanoGPT style) on the same batches: median seconds per step."""
    import torch
    import tamper_attack as ta
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = torch.device(a.device if a.device != "auto" else "cpu")
    tok = AutoTokenizer.from_pretrained(workdir / "model")
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
    lines = [ln for ln in (workdir / "attack.txt").read_text().splitlines() if ln.strip()]
    batches = ta.attack_schedule(len(lines), a.steps, a.batch_size, 42)    # the tool's batches
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = []
    for b in batches:
        sync()
        t = time.perf_counter()
        enc = tok([lines[i] for i in b], return_tensors="pt", padding=True, truncation=True,
                  max_length=a.words + 1).to(dev)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        sync()
        times.append(time.perf_counter() - t)
    return median(times[1:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="128x6,512x8", help="hidden x layers, comma-separated")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--eval-every", type=int, default=5, help="the demo's cadence, for the overhead figure")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--words", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    print(f"tamper_attack.py vs a bare loop: {a.steps} steps, batch {a.batch_size}, ≤{a.words} words a line, "
          f"{a.threads} thread(s), {a.device}")
    for shape in a.shapes.split(","):
        hidden, layers = map(int, shape.split("x"))
        with tempfile.TemporaryDirectory() as d:
            work = Path(d)
            build(work, hidden, layers, vocab=2048, n=400, words=a.words)
            tool, bare = [], []
            for _ in range(a.repeats):
                tool.append(run_tool(work, a, a.steps, a.steps, mcq=False)["step"])
                bare.append(bare_loop(work, a))
            ev = run_tool(work, a, a.steps, a.eval_every, mcq=True)
        t, b = min(tool), min(bare)
        share = ev["eval"] / (ev["eval"] + ev["train"])
        print(f"  hidden {hidden} x {layers} layers: tool {t * 1e3:.1f} ms/step, bare {b * 1e3:.1f} ms/step, "
              f"ratio {t / b:.3f}  [goal ≤ 1.10]")
        print(f"    evaluation every {a.eval_every} steps (NLL 2x50 lines + 40 MCQ items via lm-eval): "
              f"{ev['eval']:.1f} s of {ev['eval'] + ev['train']:.1f} s = {100 * share:.0f}% of the run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
