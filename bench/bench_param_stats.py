"""Benchmark of collect_param_stats.py against the exact SVD route, as whole processes, per shape.

    uv run python bench/bench_param_stats.py [--preset NAME ... | all] [--hidden H --layers L --vocab V]
        [--dtype bf16|fp32|all ...] [--threads N] [--repeat R] [--scipy] [--fp64] [--keep DIR]

Builds a GPT-NeoX-shaped pair of checkpoints (random init, std 0.02, untied embeddings): A, and
B = A + noise·std(W)·N(0, 1) on every weight matrix, so every ΔW has a flat noise-bulk spectrum
(σ2/σ1 ≈ 0.99-0.9999, where power iteration stalls). A is saved in 100 MB shards, B as one file.
Then, R times, each as a fresh process started the way a user starts it, with the same thread
count (OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS = N) and a warm page cache:

  (a) the tool: `uv run --script collect_param_stats.py --model-a A --model-b B --device cpu`
      (start-up, streaming read, fp32 ΔW, Gram matrices, top eigenvalues, CSVs);
  (b) the exact route: `uv run python bench/bench_param_stats.py --exact-run ...`, a script that
      reads A and B tensor by tensor, forms ΔW = B − A in fp32 and runs torch.linalg.svdvals on
      every decoder/embedding matrix and its ΔW (‖·‖_F in float64); with --scipy also
      scipy.linalg.svdvals (OpenBLAS) and with --fp64 torch's float64 SVD, as extra baselines.

Printed per run: wall seconds of (a) and (b) and their ratio (goal ≤ 0.25), CPU seconds, the
largest relative error of the tool's stable ranks (ΔW and W) against the exact float32 SVD (goal
≤ 1e-3), the tool's working memory (its peak resident set minus the peak of its own `--help`
process, i.e. of the imports) against one checkpoint on disk (goal ≤ 0.3), the tool's start-up
(`--help`) and the 1-minute load average. The last lines are markdown table rows.

Presets (--preset, one or several, or all): pythia-160m (768 wide, 12 layers, vocab 50304, the
default), 1024 (12 layers, vocab 8192), 2048 (2 layers, vocab 4096), 4096 (1 layer, vocab 2048);
explicit --hidden/--layers/--vocab/--intermediate override a single preset's values. The README's
table is `--preset all --dtype all --threads 1 --repeat 2` (about 40 minutes on one core).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "collect_param_stats.py"
PRESETS = {  # hidden, layers, vocab
    "pythia-160m": (768, 12, 50304),
    "1024": (1024, 12, 8192),
    "2048": (2048, 2, 4096),
    "4096": (4096, 1, 2048),
}


# ---------------------------------------------------------------------------------------------
# the synthetic pair
# ---------------------------------------------------------------------------------------------
def neox_shapes(hidden: int, layers: int, vocab: int, inter: int) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of a GPT-NeoX model (untied embeddings), as save_pretrained
    writes them."""
    shapes = {"gpt_neox.embed_in.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"gpt_neox.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (hidden,), p + "input_layernorm.bias": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,), p + "post_attention_layernorm.bias": (hidden,),
            p + "attention.query_key_value.weight": (3 * hidden, hidden),
            p + "attention.query_key_value.bias": (3 * hidden,),
            p + "attention.dense.weight": (hidden, hidden), p + "attention.dense.bias": (hidden,),
            p + "mlp.dense_h_to_4h.weight": (inter, hidden), p + "mlp.dense_h_to_4h.bias": (inter,),
            p + "mlp.dense_4h_to_h.weight": (hidden, inter), p + "mlp.dense_4h_to_h.bias": (hidden,),
        })
    shapes.update({"gpt_neox.final_layer_norm.weight": (hidden,), "gpt_neox.final_layer_norm.bias": (hidden,),
                   "embed_out.weight": (vocab, hidden)})
    return shapes


def save_sharded(tensors: dict, out: Path, shard_bytes: int) -> None:
    """safetensors shards of at most shard_bytes (a larger tensor gets its own) plus the index,
    the layout save_pretrained writes; one model.safetensors when everything fits."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    shards, size = [[]], 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    if len(shards) == 1:
        save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map = {}
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n] for n in names}, out / fname, metadata={"format": "pt"})
        weight_map.update({n: fname for n in names})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def build_pair(workdir: Path, hidden: int, layers: int, vocab: int, inter: int, dtype: str,
               noise: float, seed: int = 0) -> tuple[Path, Path]:
    """A (100 MB shards) and B = A + noise·std(W)·N(0, 1) per matrix (one file)."""
    import torch

    tdtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    gen = torch.Generator().manual_seed(seed)
    a, b = {}, {}
    for name, shape in neox_shapes(hidden, layers, vocab, inter).items():
        if len(shape) == 1:
            a[name] = b[name] = (torch.ones(shape) if name.endswith("norm.weight") else torch.zeros(shape)).to(tdtype)
            continue
        w = 0.02 * torch.randn(shape, generator=gen)
        a[name] = w.to(tdtype)
        w = a[name].float()
        b[name] = (w + noise * w.std() * torch.randn(shape, generator=gen)).to(tdtype)
        del w
    config = {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "hidden_size": hidden,
              "num_hidden_layers": layers, "intermediate_size": inter, "vocab_size": vocab,
              "num_attention_heads": max(1, hidden // 64), "tie_word_embeddings": False,
              "torch_dtype": {"bf16": "bfloat16", "fp32": "float32"}[dtype]}
    a_dir, b_dir = workdir / "bench-a", workdir / "bench-b"
    for d, tensors, shard in ((a_dir, a, 100 * 2**20), (b_dir, b, 1 << 40)):
        save_sharded(tensors, d, shard)
        (d / "config.json").write_text(json.dumps(config, indent=2))
    return a_dir, b_dir


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def warm_page_cache(*dirs: Path) -> None:
    for d in dirs:
        for f in d.glob("*.safetensors"):
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass


# ---------------------------------------------------------------------------------------------
# (b) the exact route, run as its own process: --exact-run
# ---------------------------------------------------------------------------------------------
def exact_run(a_dir: Path, b_dir: Path, out: Path, svd: str) -> None:
    """name → (dW_stable_rank, W_stable_rank, σ2/σ1 of ΔW) by the exact route: tensor by tensor,
    ΔW = B − A in fp32 (float64 with svd=fp64), all singular values, ‖·‖_F² in float64."""
    import torch
    from safetensors import safe_open

    def weight_map(d):
        index = d / "model.safetensors.index.json"
        if index.is_file():
            return {n: d / f for n, f in json.loads(index.read_text())["weight_map"].items()}
        with safe_open(d / "model.safetensors", "pt") as f:
            return {n: d / "model.safetensors" for n in f.keys()}

    if svd == "scipy":
        import scipy.linalg

        def svdvals(m):
            return torch.from_numpy(scipy.linalg.svdvals(m.numpy(), check_finite=False))
    else:
        svdvals = torch.linalg.svdvals
    dtype = torch.float64 if svd == "fp64" else torch.float32
    map_a, map_b = weight_map(a_dir), weight_map(b_dir)
    result = {}
    for name in map_a:
        if name not in map_b:
            continue
        with safe_open(map_a[name], "pt") as fa, safe_open(map_b[name], "pt") as fb:
            if len(fa.get_slice(name).get_shape()) != 2:
                continue
            wa, wb = fa.get_tensor(name).to(dtype), fb.get_tensor(name).to(dtype)
        dw = wb - wa
        ranks = []
        for m in (dw, wa):
            fro_sq = float(torch.linalg.vector_norm(m, dtype=torch.float64)) ** 2
            s = svdvals(m)
            ranks.append(fro_sq / float(s[0]) ** 2 if s[0] > 0 else math.nan)
            if m is dw:
                gap = float(s[1] / s[0])
        result[name] = (*ranks, gap)
    out.write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# timing whole processes
# ---------------------------------------------------------------------------------------------
def timed(cmd: list[str], env: dict) -> dict:
    """Run cmd to completion; wall s, CPU s (user + sys of it and its children) and peak RSS
    (bytes, the largest process of the tree: uv waits for the Python it starts)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.stdout.close(), proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss * 1024, "stdout": out}


def load() -> float:
    return os.getloadavg()[0]


def bench_shape(args, hidden: int, layers: int, vocab: int, inter: int, dtype: str, workdir: Path,
                tmp: Path, env: dict) -> list[str]:
    """Build (or reuse) the pair of one shape in workdir and time tool and exact route
    args.repeat times; the markdown rows of the runs."""
    shape = f"h{hidden} L{layers} V{vocab}"
    workdir.mkdir(parents=True, exist_ok=True)
    a_dir, b_dir = workdir / "bench-a", workdir / "bench-b"
    stamp = workdir / "bench-shape.json"
    want = {"hidden": hidden, "layers": layers, "vocab": vocab, "inter": inter, "dtype": dtype, "noise": args.noise}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == want):
        t = time.perf_counter()
        # in a child process: a forked child inherits its parent's peak RSS (ru_maxrss), so this
        # process must stay small for the tool's peak memory to be read from wait4
        subprocess.run([sys.executable, __file__, "--build-only", str(workdir), json.dumps(want)], check=True)
        stamp.write_text(json.dumps(want))
        print(f"built the {shape} {dtype} pair in {time.perf_counter() - t:.0f} s", flush=True)
    ckpt = checkpoint_bytes(a_dir)
    tool = str(args.tool.resolve())
    tool_cmd = ["uv", "run", "--quiet", "--script", tool, "--model-a", str(a_dir), "--model-b", str(b_dir),
                "--device", "cpu", "--outdir", str(tmp / "out"), *args.tool_args.split()]
    baselines = ["torch"] + (["scipy"] if args.scipy else []) + (["fp64"] if args.fp64 else [])
    rows = []
    for run in range(1, args.repeat + 1):
        warm_page_cache(a_dir, b_dir)
        load_before = load()
        start = timed(["uv", "run", "--quiet", "--script", tool, "--help"], env)
        result = timed(tool_cmd, env)
        exact = {}
        for svd in baselines:
            exact[svd] = timed(["uv", "run", "--quiet", "python", str(Path(__file__).resolve()), "--exact-run",
                                str(a_dir), str(b_dir), str(tmp / f"exact-{svd}.json"), svd], env)
            exact[svd]["ref"] = json.loads((tmp / f"exact-{svd}.json").read_text())
        load_after = load()
        got = {}
        with open(tmp / "out" / "per_matrix.csv") as fh:
            for r in csv.DictReader(fh):
                got[r["name"]] = (float(r["dW_stable_rank"]), float(r["W_stable_rank"]), int(r["dW_iters"]))
        ref = exact["torch"]["ref"]
        assert set(got) == set(ref), "the tool and the exact route saw different matrices"
        errs = {svd: max(abs(g - w) / w for n in got for g, w in zip(got[n][:2], e["ref"][n][:2]))
                for svd, e in exact.items()}
        gaps = sorted(v[2] for v in ref.values())
        work = result["rss"] - start["rss"]
        print(f"\nrun {run}: {shape}, {dtype}, {len(got)} matrices, {ckpt / 2**20:.0f} MiB per checkpoint, "
              f"σ2/σ1 of ΔW {gaps[0]:.4f}…{gaps[-1]:.4f}, {args.threads} threads, "
              f"load {load_before:.2f}→{load_after:.2f}")
        print(f"  tool:  {result['wall']:6.2f} s wall {result['cpu']:6.2f} s CPU (start-up alone: {start['wall']:.2f} s wall, "
              f"{start['cpu']:.2f} s CPU); Lanczos products per ΔW: max {max(v[2] for v in got.values())}")
        for svd, e in exact.items():
            print(f"  exact ({svd} svdvals): {e['wall']:6.2f} s wall {e['cpu']:6.2f} s CPU -> ratio wall "
                  f"{result['wall'] / e['wall']:.3f}, CPU {result['cpu'] / e['cpu']:.3f} (goal ≤ 0.25); "
                  f"max stable-rank error {errs[svd]:.1e} (goal ≤ 1e-3)")
        print(f"  tool working memory: {work / 2**20:.0f} MiB = {work / ckpt:.3f}× one checkpoint "
              f"(peak RSS {result['rss'] / 2**20:.0f} MiB − {start['rss'] / 2**20:.0f} MiB of --help)", flush=True)
        rows.append(f"| {shape} | {dtype} | {run} | {load_before:.1f} | {result['wall']:.2f} | "
                    f"{exact['torch']['wall']:.2f} | **{result['wall'] / exact['torch']['wall']:.3f}** | "
                    f"{result['cpu'] / exact['torch']['cpu']:.3f} | {errs['torch']:.1e} | "
                    f"{work / 2**20:.0f} MiB ({work / ckpt:.2f}×) |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", nargs="+", choices=[*PRESETS, "all"], default=["pythia-160m"],
                   help="one or more shapes; all: every preset")
    p.add_argument("--hidden", type=int, help="hidden size (default: the preset's)")
    p.add_argument("--layers", type=int, help="decoder layers (default: the preset's)")
    p.add_argument("--vocab", type=int, help="vocabulary size (default: the preset's)")
    p.add_argument("--intermediate", type=int, help="MLP width (default: 4 × hidden)")
    p.add_argument("--dtype", nargs="+", default=["bf16"], choices=["bf16", "fp32", "all"],
                   help="checkpoint dtype on disk; all: bf16 and fp32")
    p.add_argument("--noise", type=float, default=0.02, help="ΔW entries ~ noise·std(W)·N(0,1)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeat", type=int, default=1, help="timed runs of tool and exact route (alternating)")
    p.add_argument("--keep", type=Path, default=None,
                   help="build (or reuse) the pairs in DIR/<preset>-<dtype> instead of a temp dir")
    p.add_argument("--fp64", action="store_true", help="also time torch's float64 SVD route (3× longer)")
    p.add_argument("--scipy", action="store_true", help="also time scipy.linalg.svdvals (OpenBLAS) in float32")
    p.add_argument("--tool-args", default="", help="extra arguments for collect_param_stats.py (quoted)")
    p.add_argument("--tool", type=Path, default=TOOL, help="the script to time (e.g. an older copy, for before/after)")
    p.add_argument("--exact-run", nargs=4, metavar=("A", "B", "OUT_JSON", "SVD"), help=argparse.SUPPRESS)
    p.add_argument("--build-only", nargs=2, metavar=("DIR", "SHAPE_JSON"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.build_only:
        d, want = Path(args.build_only[0]), json.loads(args.build_only[1])
        build_pair(d, want["hidden"], want["layers"], want["vocab"], want["inter"], want["dtype"], want["noise"])
        return
    if args.exact_run:
        a, b, out, svd = args.exact_run
        exact_run(Path(a), Path(b), Path(out), svd)
        return
    presets = list(PRESETS) if "all" in args.preset else args.preset
    dtypes = ["bf16", "fp32"] if "all" in args.dtype else args.dtype
    if len(presets) > 1 and (args.hidden or args.layers or args.vocab or args.intermediate):
        p.error("--hidden/--layers/--vocab/--intermediate override one --preset, not several")
    env = dict(os.environ, **{v: str(args.threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                               "MKL_NUM_THREADS")})
    timed(["uv", "run", "--quiet", "--script", str(args.tool.resolve()), "--help"], env)  # install its env once
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_param_stats_") as tmp:
        tmp = Path(tmp)
        for preset in presets:
            hidden, layers, vocab = PRESETS[preset]
            hidden, layers, vocab = args.hidden or hidden, args.layers or layers, args.vocab or vocab
            inter = args.intermediate or 4 * hidden
            for dtype in dtypes:
                workdir = (args.keep or tmp) / f"{preset}-{dtype}"
                rows += bench_shape(args, hidden, layers, vocab, inter, dtype, workdir, tmp, env)
                if args.keep is None:
                    shutil.rmtree(workdir)  # a 4096-wide pair is ~1.7 GB
    print("\n| shape | dtype | run | load | tool s | exact s | ratio | CPU ratio | max stable-rank error | tool memory |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
