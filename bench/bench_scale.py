# /// script
# requires-python = ">=3.10"
# dependencies = [
#     "torch>=2.4",
#     "transformers>=5.0,<6",
#     "safetensors>=0.4",
#     "tokenizers>=0.21",
# ]
# ///
"""Scale benchmark (not in CI): real-width GPT-NeoX pairs (hidden 4096, intermediate 16384,
vocabulary 50304, bf16) with 1, 2 and 4 decoder layers; each tool's peak memory and time; the
per-layer slope and the 32-layer extrapolation, next to check_experiment.py's memory plan.

    uv run python bench/bench_scale.py --layers 1,2,4 --tools param_stats,activation_norms,evaluate \\
        --workdir /tmp/bench_scale --device cpu

Per size it writes a pair (model A random, model B = A with every decoder layer perturbed by 1e-3
relative noise) with a byte-level tokenizer, then runs each tool as its own process under
``uv run --script`` and reads the child's peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a
fresh wrapper process per tool) and wall time. On a GPU (``--device cuda``) the peak is the RSS of the
process, not the GPU's; read the GPU's from the tools' own reports or nvidia-smi. Each size costs
~0.6B + 0.2B x layers parameters per model (1.2 GB + 0.4 GB x layers in bf16).

The slope is a least-squares line through (layers, peak); the 32-layer value is that line at 32.
The plan's estimate (check_experiment.estimate_memory with the tool's settings) is printed beside it
for the same device kind; compare like with like (CPU RSS includes the Python/torch runtime, ~0.5-1 GB,
which the plan does not count).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTH = {"hidden": 4096, "intermediate": 16384, "vocab": 50304, "heads": 32}
WRAP = ("import resource, subprocess, sys, json, time; t=time.time(); rc=subprocess.call(sys.argv[1:]); "
        "print(json.dumps({'rc': rc, 'seconds': time.time()-t, "
        "'peak_bytes': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))")


def build_pair(folder: Path, layers: int, seed: int = 0) -> tuple[Path, Path]:
    import torch
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    a, b = folder / f"neox-{layers}L-a", folder / f"neox-{layers}L-b"
    if (a / "config.json").exists() and (b / "config.json").exists():
        return a, b
    cfg = GPTNeoXConfig(vocab_size=WIDTH["vocab"], hidden_size=WIDTH["hidden"], num_hidden_layers=layers,
                        num_attention_heads=WIDTH["heads"], intermediate_size=WIDTH["intermediate"],
                        max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    tok = make_tokenizer()
    model.save_pretrained(a)
    tok.save_pretrained(a)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".layers." in name and p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * 1e-3 * p.float().std())
    model.save_pretrained(b)
    tok.save_pretrained(b)
    return a, b


def make_tokenizer():
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_tokenizer  # the test suite's offline byte-level BPE

    return build_tokenizer(vocab_size=300)


def run_tool(cmd: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", WRAP, *cmd], capture_output=True, text=True)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
    res = json.loads(last)
    if res.get("rc") != 0:
        res["stderr_tail"] = out.stderr.strip().splitlines()[-3:]
    return res


def tool_commands(tool: str, a: Path, b: Path, data: Path, out: Path, device: str) -> list[str]:
    uv = ["uv", "run", "--quiet", "--script"]
    common = ["--device", device, "--dtype", "bf16" if device == "cuda" else "fp32"]
    if tool == "param_stats":
        return uv + [str(ROOT / "collect_param_stats.py"), "--model-a", str(a), "--model-b", str(b),
                     "--outdir", str(out), "--device", device]
    if tool == "activation_norms":
        return uv + [str(ROOT / "collect_activation_norms.py"), "--model-a", str(a), "--model-b", str(b),
                     "--forget-text", str(data / "forget.txt"), "--retain-text", str(data / "retain.txt"),
                     "--outdir", str(out), "--max-length", "128", "--batch-size", "4", *common]
    if tool == "evaluate":
        return uv + [str(ROOT / "evaluate_unlearning.py"), "--model", str(a), "--forget-test", str(data / "forget.txt"),
                     "--retain-test", str(data / "retain.txt"), "--forget-train", str(data / "forget.txt"),
                     "--mcq-forget", "", "--mcq-retain", "", "--few-shot", "0", "--generate", "0",
                     "--max-length", "128", "--batch-size", "4", "--outdir", str(out), *common]
    raise ValueError(tool)


def plan_estimate(tool: str, layers: int, device: str) -> int:
    sys.path.insert(0, str(ROOT))
    import check_experiment as ce

    cfg = {"model_type": "gpt_neox", "hidden_size": WIDTH["hidden"], "num_hidden_layers": layers,
           "num_attention_heads": WIDTH["heads"], "intermediate_size": WIDTH["intermediate"],
           "vocab_size": WIDTH["vocab"], "max_position_embeddings": 2048, "tie_word_embeddings": False}
    shape = ce.model_shape(cfg)
    dtype = "bf16" if device == "cuda" else "fp32"
    settings = {"param_stats": ce.StepSettings("p", kind="stream", dtype="fp32"),
                "activation_norms": ce.StepSettings("a", kind="infer", dtype=dtype, batch=4, length=128, logits=False,
                                                    hidden_states=True),
                "evaluate": ce.StepSettings("e", kind="infer", dtype=dtype, batch=4, length=128)}[tool]
    return ce.estimate_memory(shape, settings)["total"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", default="1,2,4")
    p.add_argument("--tools", default="param_stats,activation_norms,evaluate")
    p.add_argument("--workdir", default="/tmp/bench_scale")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = p.parse_args()
    work = Path(a.workdir)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    lines = [f"Sample line {i} about the quartz lattice and the zephyr coil, number {i * 7}." for i in range(16)]
    (data / "forget.txt").write_text("\n".join(lines[:8]) + "\n")
    (data / "retain.txt").write_text("\n".join(lines[8:]) + "\n")
    layers = [int(x) for x in a.layers.split(",")]
    rows = []
    for n in layers:
        t0 = time.time()
        pa, pb = build_pair(work / "models", n)
        print(f"built {n}-layer pair in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        for tool in a.tools.split(","):
            res = run_tool(tool_commands(tool, pa, pb, data, work / "out" / f"{tool}-{n}", a.device))
            res.update(tool=tool, layers=n, plan_bytes=plan_estimate(tool, n, a.device))
            rows.append(res)
            print(json.dumps(res), flush=True)
    for tool in a.tools.split(","):
        pts = [(r["layers"], r["peak_bytes"], r["seconds"]) for r in rows if r["tool"] == tool and r.get("rc") == 0]
        if len(pts) >= 2:
            import numpy as np

            x = np.array([p[0] for p in pts], float)
            mem_slope, mem_icpt = np.polyfit(x, [p[1] for p in pts], 1)
            t_slope, t_icpt = np.polyfit(x, [p[2] for p in pts], 1)
            print(json.dumps({"tool": tool, "bytes_per_layer": mem_slope, "peak_32_layers": mem_icpt + 32 * mem_slope,
                              "seconds_per_layer": t_slope, "seconds_32_layers": t_icpt + 32 * t_slope,
                              "plan_32_layers": plan_estimate(tool, 32, a.device)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
