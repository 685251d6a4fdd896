"""Benchmark of collect_param_stats.py against the exact baseline, on a ~160M-parameter pair.

    uv run python bench/bench_param_stats.py [--fp64] [--scipy] [--dtype bf16|fp32] [--threads N] [--keep DIR]

Builds a pythia-160m-shaped GPT-NeoX model A (hidden 768, 12 layers, vocab 50304, untied
embeddings: 162M parameters, random init) and B = A + Gaussian noise on every weight matrix, so
every ΔW has a flat noise-bulk spectrum (the case where power iteration stalls). A is saved in
100 MB shards, B as one file. Then, in the same process and on the same threads:

  (a) the tool: collect_param_stats.main() on the pair (streaming read, fp32 ΔW, Gram matrices,
      top eigenvalue, CSV writing) — everything the command line does;
  (b) the exact baseline: read A and B whole, ΔW = B − A, torch.linalg.svdvals (LAPACK gesdd) of
      every ΔW and every W in float32 (and, with --fp64, again in float64), ‖·‖_F in float64;
      with --scipy also scipy.linalg.svdvals (OpenBLAS gesdd) in float32, to show the speed-up
      is not just the tool's OpenBLAS against torch's MKL.

Printed: wall-time ratio (a)/(b) (goal ≤ 0.25), the largest relative error of the tool's stable
ranks (ΔW and W) against each exact SVD of (b) (goal ≤ 1e-3; the float32 SVD is itself good to
~1e-6 here), and the tool's peak working memory — peak resident set size minus the resident size
after the imports, read from /proc/self/status (VmHWM, VmRSS) of a fresh subprocess that runs
the tool alone — against the size of one checkpoint on disk (goal ≤ 0.3).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import collect_param_stats as cps  # noqa: E402

MEMORY_PROBE = r"""
import sys
sys.path.insert(0, {root!r})
import collect_param_stats as cps
import pandas, torch, safetensors, tqdm

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

torch.set_num_threads({threads})
before = status("VmRSS")
cps.main({argv!r})
print("PEAK_DELTA", status("VmHWM") - before)
"""


def build_pair(workdir: Path, dtype: torch.dtype, noise: float, seed: int = 0) -> tuple[Path, Path]:
    """pythia-160m-shaped GPT-NeoX A (sharded) and B = A + noise·std(W)·N(0, 1) per matrix (one file)."""
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    config = GPTNeoXConfig(vocab_size=50304, hidden_size=768, num_hidden_layers=12,
                           num_attention_heads=12, intermediate_size=3072,
                           max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    a_dir, b_dir = workdir / "bench-a", workdir / "bench-b"
    model.save_pretrained(a_dir, max_shard_size="100MB")
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                w = p.float()
                p.copy_((w + noise * w.std() * torch.randn(w.shape, generator=gen)).to(dtype))
    model.save_pretrained(b_dir, max_shard_size="10GB")
    return a_dir, b_dir


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def warm_page_cache(*dirs: Path) -> None:
    for d in dirs:
        for f in d.glob("*.safetensors"):
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass


def torch_svdvals(m: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(m)


def scipy_svdvals(m: torch.Tensor) -> torch.Tensor:
    import scipy.linalg
    return torch.from_numpy(scipy.linalg.svdvals(m.numpy(), check_finite=False))


def exact_baseline(a_dir: Path, b_dir: Path, names: list[str], dtype: torch.dtype,
                   svdvals=torch_svdvals) -> dict[str, tuple]:
    """name → (dW_stable_rank, W_stable_rank, σ2/σ1 of ΔW) by the exact route: whole tensors,
    ΔW = B − A, singular values from torch.linalg.svdvals in `dtype`, ‖·‖_F² in float64."""
    def weight_map(d):
        index = d / "model.safetensors.index.json"
        if index.is_file():
            return {n: d / f for n, f in json.loads(index.read_text())["weight_map"].items()}
        with safe_open(d / "model.safetensors", "pt") as f:
            return {n: d / "model.safetensors" for n in f.keys()}

    map_a, map_b = weight_map(a_dir), weight_map(b_dir)
    out = {}
    for name in names:
        with safe_open(map_a[name], "pt") as fa, safe_open(map_b[name], "pt") as fb:
            wa, wb = fa.get_tensor(name).to(dtype), fb.get_tensor(name).to(dtype)
        dw = wb - wa
        ranks = []
        for m in (dw, wa):
            fro_sq = float(torch.linalg.vector_norm(m, dtype=torch.float64)) ** 2
            s = svdvals(m)
            ranks.append(fro_sq / float(s[0]) ** 2 if s[0] > 0 else math.nan)
            if m is dw:
                gap = float(s[1] / s[0])
        out[name] = (*ranks, gap)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="checkpoint dtype on disk")
    p.add_argument("--noise", type=float, default=0.02, help="ΔW entries ~ noise·std(W)·N(0,1)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--keep", type=Path, default=None, help="build (or reuse) the pair here instead of a temp dir")
    p.add_argument("--fp64", action="store_true",
                   help="also time the float64 SVD baseline and check against it (3× longer)")
    p.add_argument("--scipy", action="store_true",
                   help="also time scipy.linalg.svdvals (OpenBLAS) in float32 as a second baseline")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # scipy's and numpy's OpenBLAS too
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]

    with tempfile.TemporaryDirectory(prefix="bench_param_stats_") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        a_dir, b_dir = workdir / "bench-a", workdir / "bench-b"
        if not (a_dir.is_dir() and b_dir.is_dir()):
            t = time.perf_counter()
            build_pair(workdir, dtype, args.noise)
            print(f"built the pair in {time.perf_counter() - t:.0f} s", flush=True)
        ckpt = checkpoint_bytes(a_dir)
        argv = ["--model-a", str(a_dir), "--model-b", str(b_dir), "--device", "cpu"]
        warm_page_cache(a_dir, b_dir)

        # (a) the tool
        t, c = time.perf_counter(), time.process_time()
        assert cps.main(argv + ["--outdir", str(Path(tmp) / "out")]) == 0
        t_tool, c_tool = time.perf_counter() - t, time.process_time() - c
        import pandas as pd
        rows = pd.read_csv(Path(tmp) / "out" / "per_matrix.csv")

        # (b) the exact baseline, same process, same threads: float32 and float64 SVD
        times, cpu, exact = {}, {}, {}
        baselines = [("float32", torch.float32, torch_svdvals)]
        if args.fp64:
            baselines.append(("float64", torch.float64, torch_svdvals))
        if args.scipy:
            baselines.append(("float32 (scipy)", torch.float32, scipy_svdvals))
        for label, dt, svdvals in baselines:
            print(f"exact baseline in {label} ...", flush=True)
            t, c = time.perf_counter(), time.process_time()
            exact[label] = exact_baseline(a_dir, b_dir, list(rows["name"]), dt, svdvals)
            times[label], cpu[label] = time.perf_counter() - t, time.process_time() - c
        errs = {label: max(abs(got - want) / want for r in rows.itertuples()
                           for got, want in ((r.dW_stable_rank, ref[r.name][0]), (r.W_stable_rank, ref[r.name][1])))
                for label, ref in exact.items()}
        gaps = sorted(v[2] for v in exact["float32"].values())

        # peak working memory of the tool alone, in a fresh interpreter
        probe = MEMORY_PROBE.format(root=str(ROOT), threads=args.threads,
                                    argv=argv + ["--outdir", str(Path(tmp) / "out2")])
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
        peak = int(proc.stdout.split("PEAK_DELTA")[-1])

    iters = rows["dW_iters"]
    print(f"\nmodel pair: GPT-NeoX, 162M parameters, {args.dtype} on disk ({ckpt / 2**20:.0f} MiB per checkpoint), "
          f"{len(rows)} weight matrices; ΔW = {args.noise}·std(W)·N(0,1), σ2/σ1 of ΔW: "
          f"{gaps[0]:.4f} … {gaps[-1]:.4f}; torch threads: {args.threads}")
    print(f"block Lanczos products with G per ΔW: median {iters.median():.0f}, max {iters.max()}; "
          f"per W: median {rows['W_iters'].median():.0f}  (0: Gram ≤ --dense-max wide, dense fp32 eigensolver)")
    print(f"tool:                {t_tool:7.2f} s wall, {c_tool:7.2f} s CPU  "
          "(collect_param_stats.main: read, fp32 ΔW, Gram, top eigenvalue, CSVs)")
    for label in times:
        print(f"exact svdvals {label}: {times[label]:7.2f} s wall, {cpu[label]:7.2f} s CPU  -> ratio tool/exact: "
              f"wall {t_tool / times[label]:.3f}, CPU {c_tool / cpu[label]:.3f}  (goal ≤ 0.25)")
    for label in errs:
        print(f"max relative stable-rank error vs exact {label} SVD (every ΔW and W): {errs[label]:.2e}  (goal ≤ 1e-3)")
    print(f"peak working memory above imports: {peak / 2**20:.0f} MiB = {peak / ckpt:.3f}× one checkpoint  "
          f"(goal ≤ 0.3; VmHWM − VmRSS after imports, fresh process)")


if __name__ == "__main__":
    main()
