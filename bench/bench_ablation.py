"""Benchmark of ablation_attack.py: time per attack setting and peak memory.

    uv run python bench/bench_ablation.py [--demo demo/models] [--repeats 2] [--threads 1] [--memory-shape 512x8]

1. Time (on the demo family: reference demo-unfiltered, attacked demo-unfiltered-cb-lat): the
   wall time of one attack setting (applying it, then forget/retain test NLL and both MCQ sets;
   the per-setting clock of ablation_report.yaml) ÷ the wall time of one evaluation of the same
   model by evaluate_unlearning.py with the same test and MCQ files and the pipeline's demo
   settings (its whole process: start-up, loading, NLL, MIA, MCQ, few-shot, generations; the tool
   has no inner clock).                                                                 [goal ≤ 1.2]
2. Memory (random GPT-NeoX of --memory-shape, every matrix changed at full rank): peak RSS of
   ``ablation_attack.py --attacks delta_rank`` minus peak RSS of ``evaluate_unlearning.py`` on the
   same model (one model in memory), against the size of one decoder layer.           [goal ≤ ~1 layer]

Each side runs in its own process, alternately, ``--repeats`` times; the best run of each is kept.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RSS = ("import resource, runpy, sys; sys.argv = sys.argv[1:]; code = 0\n"
       "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
       "except SystemExit as e:\n    code = e.code or 0\n"
       "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
       "sys.exit(code)\n")


def run(argv: list[str], threads: int) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in KiB, stderr) of one tool run in a fresh interpreter."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", RSS, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{p.stderr[-2000:]}")
    rss = int([ln for ln in p.stderr.splitlines() if ln.startswith("MAXRSS_KB")][-1].split()[1])
    return wall, rss, p.stderr


def time_part(a) -> None:
    demo, data = Path(a.demo), Path(a.demo) / "data"
    model = str(demo / "demo-unfiltered-cb-lat")
    files = ["--forget-test", str(data / "forget_test.txt"), "--retain-test", str(data / "retain_test.txt"),
             "--mcq-forget", str(data / "forget_mcq.jsonl"), "--mcq-retain", str(data / "retain_mcq.jsonl"),
             "--device", "cpu", "--dtype", "fp32", "--max-length", "128", "--batch-size", "16"]
    best_eval, best_set = None, {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.repeats):
            wall, _, _ = run(["evaluate_unlearning.py", "--model", model, "--forget-train", str(data / "forget.txt"),
                              "--generate", "2", "--outdir", f"{tmp}/eval{rep}", *files], a.threads)
            best_eval = wall if best_eval is None else min(best_eval, wall)
            out = f"{tmp}/abl{rep}"
            run(["ablation_attack.py", "--reference", str(demo / "demo-unfiltered"), "--model", model,
                 "--direction-data-forget", str(data / "forget.txt"), "--direction-data-retain", str(data / "retain.txt"),
                 "--layers", "2,4,6", "--ranks", "1,8", "--outdir", out, *files], a.threads)
            import yaml
            t = yaml.safe_load(Path(out, "ablation_report.yaml").read_text())["Timings_seconds"]["demo-unfiltered-cb-lat"]
            for k, v in t.items():
                if k != "load":
                    best_set[k] = v if k not in best_set else min(best_set[k], v)
            print(f"repeat {rep + 1}: evaluate_unlearning {wall:.1f} s; settings " +
                  ", ".join(f"{k} {v:.2f}" for k, v in t.items()), flush=True)
    print(f"\none evaluation by evaluate_unlearning.py (whole process, best of {a.repeats}): {best_eval:.2f} s")
    for k, v in best_set.items():
        print(f"  {k:<22} {v:6.2f} s   ratio {v / best_eval:.3f}   {'ok' if v / best_eval <= 1.2 else 'OVER'}")


def memory_part(a) -> None:
    import torch
    from transformers import AutoModelForCausalLM, GPTNeoXConfig
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_tokenizer
    hidden, layers = (int(x) for x in a.memory_shape.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = build_tokenizer()
        cfg = GPTNeoXConfig(vocab_size=320, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                            max_position_embeddings=128, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_config(cfg)
        m.save_pretrained(tmp / "ref")
        tok.save_pretrained(tmp / "ref")
        with torch.no_grad():
            for p in m.parameters():
                p += 0.01 * torch.randn_like(p)
        m.save_pretrained(tmp / "model")
        tok.save_pretrained(tmp / "model")
        layer_bytes = sum(p.numel() * 4 for p in m.gpt_neox.layers[0].parameters())
        model_bytes = sum(p.numel() * 4 for p in m.parameters())
        del m
        from conftest import TINY_TEXTS
        (tmp / "t.txt").write_text("\n".join(TINY_TEXTS) + "\n")
        common = ["--forget-test", str(tmp / "t.txt"), "--retain-test", str(tmp / "t.txt"), "--mcq-forget", "",
                  "--mcq-retain", "", "--device", "cpu", "--dtype", "fp32"]
        ev, ab = [], []
        for rep in range(a.repeats):
            ev.append(run(["evaluate_unlearning.py", "--model", str(tmp / "model"), "--forget-train", str(tmp / "t.txt"),
                           "--generate", "0", "--few-shot", "0", "--outdir", str(tmp / f"e{rep}"), *common], a.threads)[1])
            ab.append(run(["ablation_attack.py", "--reference", str(tmp / "ref"), "--model", str(tmp / "model"),
                           "--attacks", "delta_rank", "--ranks", "1,16", "--outdir", str(tmp / f"a{rep}"), *common],
                          a.threads)[1])
        extra = (min(ab) - min(ev)) * 1024
        print(f"\nmemory, GPT-NeoX {a.memory_shape} (model {model_bytes / 2**20:.0f} MiB, one layer "
              f"{layer_bytes / 2**20:.1f} MiB): peak RSS evaluate_unlearning {min(ev) / 1024:.0f} MiB, "
              f"ablation_attack delta_rank {min(ab) / 1024:.0f} MiB; difference {extra / 2**20:.1f} MiB "
              f"= {extra / layer_bytes:.2f} layers")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", default="demo/models", help="the demo family (demo/build_demo.py)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--memory-shape", default="512x8", help="hidden x layers of the memory model")
    p.add_argument("--skip-time", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    a = p.parse_args()
    if not a.skip_time:
        time_part(a)
    if not a.skip_memory:
        memory_part(a)


if __name__ == "__main__":
    main()
