"""Benchmark of collect_weight_geometry.py against the naive route, in the same run, per shape.

    uv run python bench/bench_weight_geometry.py [--hidden 768 1024 2048] [--layers 2] [--threads 1 2]
        [--repeat 2] [--vocab 512] [--tool-only] [--keep DIR]

Builds a GPT-NeoX-shaped pair of fp32 checkpoints per width h (MLP 4h, untied embeddings, small
vocabulary): A random (std 0.02), B = A + a rank-8 change + 1e-3·std noise on every matrix. Then,
for each thread count N (OMP/OPENBLAS/MKL_NUM_THREADS = N) and R repeats, alternating, each as
a fresh process of the project's Python:

  (a) the tool: collect_weight_geometry.main() with its default components (the 4 projection
      matrices of every layer), --device cpu: reading, float64 Gram matrices, eigensolvers, every
      column, the CSV, the spectra file and the report (with the inputs' sha256);
  (b) the naive route: for the same matrices, safetensors reads and fp32 torch.linalg.svd (with
      vectors) of W_A and of W_B plus torch.linalg.svdvals(ΔW), nothing else.

Printed per run: wall seconds of (a) and (b) and their ratio (goal ≤ 0.5), the working memory of
(a) (peak resident set minus the resident set after its imports) against one checkpoint on disk (goal
≤ 0.3) and the 1-minute load average. The working memory is set by the largest matrix (both
versions of it in their stored dtype, three s×s float64 Gram matrices, the eigensolver's
workspace), not by the number of layers.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def neox_shapes(hidden: int, layers: int, vocab: int) -> dict[str, tuple[int, int]]:
    shapes = {"gpt_neox.embed_in.weight": (vocab, hidden), "embed_out.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"gpt_neox.layers.{i}"
        shapes.update({f"{p}.attention.query_key_value.weight": (3 * hidden, hidden),
                       f"{p}.attention.dense.weight": (hidden, hidden),
                       f"{p}.mlp.dense_h_to_4h.weight": (4 * hidden, hidden),
                       f"{p}.mlp.dense_4h_to_h.weight": (hidden, 4 * hidden)})
    return shapes


def build_pair(root: Path, hidden: int, layers: int, vocab: int) -> tuple[Path, Path]:
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    a, b = {}, {}
    for name, shape in neox_shapes(hidden, layers, vocab).items():
        w = (0.02 * rng.standard_normal(shape)).astype(np.float32)
        low = (rng.standard_normal((shape[0], 8)) @ rng.standard_normal((8, shape[1]))) * (2e-3 / np.sqrt(8))
        a[name] = w
        b[name] = (w + low + 2e-5 * rng.standard_normal(shape)).astype(np.float32)
    config = {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "hidden_size": hidden,
              "num_hidden_layers": layers, "intermediate_size": 4 * hidden, "vocab_size": vocab}
    dirs = []
    for label, tensors in (("A", a), ("B", b)):
        d = root / f"h{hidden}-{label}"
        d.mkdir(parents=True)
        save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(config))
        dirs.append(d)
    return dirs[0], dirs[1]


def run_tool(a: str, b: str, out: str) -> dict:
    sys.path.insert(0, str(ROOT))
    import collect_weight_geometry as cwg

    # the resident set after the imports (VmRSS, kB): the peak (VmHWM) minus this is the working memory
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    imports = int(status["VmRSS"].split()[0])
    t = time.perf_counter()
    code = cwg.main(["--model-a", a, "--model-b", b, "--outdir", out, "--device", "cpu"])
    seconds = time.perf_counter() - t
    assert code == 0
    # the peak of this process's own memory (VmHWM, reset by exec); getrusage's ru_maxrss is kept across
    # fork + exec, so it would report the parent's resident set (the pair it built) when that is larger
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {"seconds": seconds, "maxrss_kb": int(status["VmHWM"].split()[0]), "imports_kb": imports}


def run_naive(a: str, b: str) -> dict:
    import torch
    from safetensors import safe_open

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    t = time.perf_counter()
    fa, fb = (safe_open(str(Path(d) / "model.safetensors"), framework="pt") for d in (a, b))
    names = [n for n in fa.keys() if ".layers." in n]
    for name in names:
        wa, wb = fa.get_tensor(name), fb.get_tensor(name)
        torch.linalg.svd(wa, full_matrices=False)
        torch.linalg.svd(wb, full_matrices=False)
        torch.linalg.svdvals(wb - wa)
    return {"seconds": time.perf_counter() - t, "matrices": len(names)}


def child(mode: str, a: Path, b: Path, out: Path, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT / 'bench')!r}); import bench_weight_geometry as b; "
            f"print('RESULT', json.dumps(b.run_{mode}({str(a)!r}, {str(b)!r}" + (f", {str(out)!r}" if mode == "tool" else "")
            + ")))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))[7:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[768, 1024, 2048])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--tool-only", action="store_true", help="run the tool only (a memory measurement on many layers)")
    p.add_argument("--keep", default=None, help="build the checkpoints here and keep them")
    args = p.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_wg_"))
    rows = []
    try:
        for hidden in args.hidden:
            a, b = build_pair(root / "models", hidden, args.layers, args.vocab)
            size = (a / "model.safetensors").stat().st_size
            for threads in args.threads:
                for rep in range(args.repeat):
                    out = root / f"out-{hidden}-{threads}-{rep}"
                    tool = child("tool", a, b, out, threads)
                    naive = {"seconds": float("nan")} if args.tool_only else child("naive", a, b, out, threads)
                    work = (tool["maxrss_kb"] - tool["imports_kb"]) * 1024
                    row = {"hidden": hidden, "layers": args.layers, "threads": threads, "repeat": rep,
                           "tool_s": round(tool["seconds"], 2), "naive_s": round(naive["seconds"], 2),
                           "ratio": round(tool["seconds"] / naive["seconds"], 3),
                           "work_mb": round(work / 2**20, 1), "ckpt_mb": round(size / 2**20, 1),
                           "mem_ratio": round(work / size, 3), "load1": round(os.getloadavg()[0], 1)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            shutil.rmtree(root / "models")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print("| width | layers | threads | tool s | naive s | ratio | working MB | checkpoint MB | memory ratio | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['hidden']} | {r['layers']} | {r['threads']} | {r['tool_s']} | {r['naive_s']} | {r['ratio']} | "
              f"{r['work_mb']} | {r['ckpt_mb']} | {r['mem_ratio']} | {r['load1']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
