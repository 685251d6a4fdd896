"""Benchmark: evaluate_unlearning.py's per-sample scoring against its parts run naively.

    uv run python bench/bench_evaluate.py [--models demo/models] [--reps 3] [--threads 1]

The tool gets NLL, Min-K%, Min-K%++ and ZLib of every line from ONE forward pass per batch
(``score_lines``). The naive baseline computes each statistic on its own, the way four separate
scripts would: four forward passes over the same batches (NLL: log-softmax and gather; Min-K%: the
same plus the sort; Min-K%++: full-vocabulary mean and variance of log p; ZLib: summed log-probs
over the compressed length). Both run on the demo family (the three models of demo/models) over the
same lines the pipeline scores (forget test, retain test, forget training lines), on two batch
shapes. Model loading is outside the timings (the same for both). Goal: fused / naive <= 0.6.
The best of ``--reps`` runs is kept; each line also gives the process CPU time, the figure to trust
on a shared machine. The numbers of both paths are checked equal before timing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import evaluate_unlearning as ev  # noqa: E402

SHAPES = [(8, 128), (32, 64)]  # (batch size, max length)
MODELS = ("demo-unfiltered", "demo-e2e-strong-filter", "demo-unfiltered-cb-lat")


def naive_scores(model, tok, texts, args) -> list[dict]:
    """Each statistic from its own forward pass over the same batches."""
    ids = [list(x) for x in tok(texts, truncation=True, max_length=args.max_length)["input_ids"]]
    n = [len(x) - 1 for x in ids]
    pad = tok.pad_token_id
    out = [dict() for _ in texts]
    # NLL
    for i, (lp, _, _) in enumerate(ev.forward_token_stats(model, ids, n, args.batch_size, pad, "cpu", with_pp=False)):
        out[i]["nll"] = ev.nll_score(lp)
    # Min-K%
    for i, (lp, _, _) in enumerate(ev.forward_token_stats(model, ids, n, args.batch_size, pad, "cpu", with_pp=False)):
        out[i]["mink"] = ev.mink_score(lp, args.mink_k)
    # Min-K%++
    for i, (lp, mu, sg) in enumerate(ev.forward_token_stats(model, ids, n, args.batch_size, pad, "cpu")):
        out[i]["minkpp"] = ev.minkpp_score(lp, mu, sg, args.mink_k)
    # ZLib
    for i, (lp, _, _) in enumerate(ev.forward_token_stats(model, ids, n, args.batch_size, pad, "cpu", with_pp=False)):
        out[i]["zlib"] = ev.zlib_score(lp, texts[i])
    return out


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - t0, time.process_time() - c0, result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=str(ROOT / "demo" / "models"), help="the demo family (default demo/models)")
    p.add_argument("--reps", type=int, default=3, help="runs per measurement, best kept (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    root, data = Path(a.models), Path(a.models) / "data"
    if not all((root / m).is_dir() for m in MODELS) or not (data / "forget_test.txt").is_file():
        print(f"error: {root} lacks the demo family or its test splits; build it with "
              "`uv run --script demo/build_demo.py`", file=sys.stderr)
        return 1
    texts = (ev.read_lines(data / "forget_test.txt") + ev.read_lines(data / "retain_test.txt")
             + ev.read_lines(data / "forget.txt"))
    print(f"{len(texts)} lines (forget test + retain test + forget train), {a.threads} torch thread(s), "
          f"best of {a.reps}")
    print(f"{'model':<24}{'batch x len':>12}{'fused s':>9}{'naive s':>9}{'ratio':>7}{'fused cpu':>11}"
          f"{'naive cpu':>11}{'cpu ratio':>10}")
    ratios = []
    for name in MODELS:
        model, tok = ev.load_model(root / name, name, "fp32", "cpu", False)
        for bs, ml in SHAPES:
            args = ev.parse_args(["--model", name, "--batch-size", str(bs), "--max-length", str(ml)])
            fused_rows = ev.score_lines(model, tok, texts, args, "cpu", "fused")
            naive_rows = naive_scores(model, tok, texts, args)
            for f, n in zip(fused_rows, naive_rows):
                for k in n:
                    assert abs(f[k] - n[k]) <= 1e-6 * max(1.0, abs(n[k])), (k, f[k], n[k])
            fused = min((timed(lambda: ev.score_lines(model, tok, texts, args, "cpu", "fused"))[:2]
                         for _ in range(a.reps)), key=lambda t: t[0])
            naive = min((timed(lambda: naive_scores(model, tok, texts, args))[:2] for _ in range(a.reps)),
                        key=lambda t: t[0])
            ratios.append(fused[0] / naive[0])
            print(f"{name:<24}{f'{bs} x {ml}':>12}{fused[0]:>9.2f}{naive[0]:>9.2f}{fused[0] / naive[0]:>7.2f}"
                  f"{fused[1]:>11.2f}{naive[1]:>11.2f}{fused[1] / naive[1]:>10.2f}", flush=True)
        del model
    print(f"fused / naive wall time: {min(ratios):.2f} - {max(ratios):.2f} (goal <= 0.6)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
