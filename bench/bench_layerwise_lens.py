"""Benchmark: the logit lens over ALL layers against one final-layer MCQ + NLL evaluation, same run.

    uv run python bench/bench_layerwise_lens.py [--reps 2] [--threads 1]

Items: the demo's data (data/forget_test.txt, retain_test.txt, forget_mcq.jsonl, retain_mcq.jsonl,
retain.txt for the tuned lens; copy them from a demo run, or run ./pipeline.sh --demo) with the demo
tokenizer, max length 128, batch size 16. For each of two shapes, in the same process:

  (a) evaluate_unlearning.py's own final-layer path: ``score_lines`` on the forget and retain test
      lines (its NLL) + ``MCQ.evaluate`` (lm-eval, its MCQ accuracy) on both MCQ sets;
  (b) layerwise_lens.py's scoring with the logit lens at the last layer only (the same numbers);
  (c) layerwise_lens.py's scoring with the logit lens at EVERY layer (forget/retain NLL, KL to the
      output on the retain lines, both MCQ sets), one forward pass per batch.
Goal: (c) / (a) <= 1.5. (c) / (b) is the price of the extra layers alone. Then the tuned lens's
training time per layer and step (--lens-tokens-per-step 512).

Shapes: the demo model itself (GPT-NeoX, hidden 128, 6 layers, vocabulary 1024), and a random GPT-NeoX
with hidden 256, 4 layers and vocabulary 3072 = 12 x hidden, the ratio of the 6.9B study models
(vocabulary 50304, hidden 4096), where the unembedding of one token costs as much as one decoder layer.
Times: process CPU seconds (one torch thread: it counts the work and barely moves when other jobs
share the machine) and wall seconds.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import evaluate_unlearning as ev  # noqa: E402
import layerwise_lens as ll  # noqa: E402
from conftest import make_tiny_model  # noqa: E402

MAX_LEN, BATCH = 128, 16


def timed(fn):
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c, time.perf_counter() - w


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default=str(ROOT / "data"))
    p.add_argument("--demo-model", default=str(ROOT / "demo/models/demo-unfiltered"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    d = Path(args.data)
    texts = {k: ll.read_lines(d / f"{k}_test.txt") for k in ("forget", "retain")}
    items = {k: ll.read_mcq(d / f"{k}_mcq.jsonl") for k in ("forget", "retain")}
    train = ll.read_lines(d / "retain.txt")
    demo, tok = ll.load_model(Path(args.demo_model), "demo", "fp32", "cpu", False)
    wide = make_tiny_model("gpt_neox", seed=0, vocab_size=3072, hidden=256, layers=4, heads=4, max_pos=256)
    eargs = ev.parse_args(["--model", "x", "--batch-size", str(BATCH), "--max-length", str(MAX_LEN)])
    with tempfile.TemporaryDirectory() as work:
        mcq = ev.MCQ({k: d / f"{k}_mcq.jsonl" for k in ("forget", "retain")}, [], Path(work))
        for shape, model in (("demo (h128, 6 layers, V1024)", demo), ("wide (h256, 4 layers, V3072=12h)", wide)):
            model.eval()
            norm, unembed = ll.lens_parts(model)
            L = ll.n_layers_of(model)
            seqs = {**{k: ll.text_sequences(tok, texts[k], MAX_LEN) for k in texts},
                    **{f"mcq_{k}": ll.mcq_sequences(tok, items[k], MAX_LEN) for k in items}}

            def evaluate():
                for k in texts:
                    ev.score_lines(model, tok, texts[k], eargs, "cpu", k)
                mcq.evaluate(model, tok, eargs)

            def lens(layers):
                return lambda: [ll.layer_scores(model, norm, unembed, s, layers, {"logit": None}, BATCH,
                                                tok.pad_token_id, "cpu", with_kl=k == "retain")
                                for k, s in seqs.items()]

            for rep in range(args.reps):
                _, ca, wa = timed(evaluate)
                _, cb, wb = timed(lens([L]))
                _, cc, wc = timed(lens(list(range(L + 1))))
                print(f"{shape} rep {rep + 1}: (a) evaluate_unlearning {ca:.2f} s CPU / {wa:.2f} s wall; "
                      f"(b) lens last layer {cb:.2f} / {wb:.2f}; (c) lens all {L + 1} layers {cc:.2f} / {wc:.2f}; "
                      f"(c)/(a) = {cc / ca:.2f} CPU, {wc / wa:.2f} wall; (c)/(b) = {cc / cb:.2f} CPU", flush=True)
            ids = [x for x in tok(train, truncation=True, max_length=MAX_LEN)["input_ids"] if x]
            steps = 10
            (_, info), c, w = timed(lambda: ll.train_tuned_lens(model, norm, unembed, ids, L, model.config.hidden_size,
                                                                 steps, 512, 1.0, 0, BATCH, tok.pad_token_id, "cpu"))
            print(f"{shape}: tuned-lens training, {steps} steps x 512 tokens: {c:.2f} s CPU / {w:.2f} s wall = "
                  f"{c / L / steps * 1000:.0f} ms CPU per layer per step "
                  f"({c / L / steps * 250:.1f} s per layer for 250 steps)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
