"""Benchmark: unlearn.py's --precision modes: step time of mixed against fp32, and memory per mode.

    uv run python bench/bench_precision.py [--steps 6] [--reps 2] [--threads 1] [--device cpu|cuda]

For each model shape and each mode (fp32; mixed = fp32 master weights + bf16 autocast; bf16 = bf16
weights with unlearn.py's Kahan-compensated AdamW) it trains a random GPT-NeoX with unlearn.py's own
optimizer (``make_optimizers``) on one fixed batch (4 × 64 tokens) and reports:
  - the mean time of a training step (forward, backward, optimizer step) after 2 warm-up steps,
    modes interleaved and repeated ``--reps`` times, so machine load hits every mode alike;
  - the persistent training state, measured: the bytes of weights + gradients + optimizer state
    tensors after a step, per parameter (compare with unlearn.PRECISION_BYTES, which also counts
    mixed precision's transient half copy of the weights);
  - peak memory: on CPU the peak RSS of a fresh process that builds the model and trains 3 steps,
    minus its RSS before the model was built (so it includes activations and allocator slack); on
    CUDA ``torch.cuda.max_memory_allocated``.
Shapes: "small" hidden 256, 4 layers, vocab 8192; "medium" hidden 512, 4 layers, vocab 16384 (sizes
printed). Small on purpose: the box these numbers come from is shared.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import unlearn as ul  # noqa: E402
from conftest import make_tiny_model  # noqa: E402

SHAPES = {"small": dict(hidden=256, layers=4, heads=4, vocab_size=8192, max_pos=256),
          "medium": dict(hidden=512, layers=4, heads=8, vocab_size=16384, max_pos=256)}
MODES = ("fp32", "mixed", "bf16")
BATCH, SEQ = 4, 64


def build(shape: str, mode: str, device: str):
    model = make_tiny_model("gpt_neox", **SHAPES[shape]).to(torch.bfloat16)  # "stored in bf16"
    model = model.to(device, torch.bfloat16 if mode == "bf16" else torch.float32).train()
    [opt] = ul.make_optimizers(model, list(model.parameters()), 1e-5, "adamw", mode)
    ids = torch.randint(0, SHAPES[shape]["vocab_size"], (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    return model, opt, ids.to(device)


def step(model, opt, ids, mode: str, device: str) -> None:
    with torch.autocast(device, dtype=torch.bfloat16, enabled=mode == "mixed"):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=False)  # keep the gradients allocated: they are part of the state
    if device == "cuda":
        torch.cuda.synchronize()


def state_bytes(model, opt) -> float:
    """Bytes per parameter of weights + gradients + optimizer state tensors."""
    n = sum(p.numel() for p in model.parameters())
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    total += sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
                 if torch.is_tensor(v) and v.dim() > 0)
    return total / n


def peak_child(shape: str, mode: str, device: str) -> None:
    """(child process) print the peak memory of building and training 3 steps."""
    def vm(key: str) -> int:   # this process's own figures (getrusage's ru_maxrss survives fork + exec:
        # it would start at the parent's resident set)
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
        return int(status[key].split()[0]) * 1024

    rss0 = vm("VmRSS")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model, opt, ids = build(shape, mode, device)
    for _ in range(3):
        step(model, opt, ids, mode, device)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else \
        vm("VmHWM") - rss0
    print(json.dumps({"peak_bytes": peak, "n_params": sum(p.numel() for p in model.parameters())}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shapes", default="small,medium")
    ap.add_argument("--peak", nargs=2, metavar=("SHAPE", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.peak:
        peak_child(*a.peak, a.device)
        return
    print(f"device {a.device} ({torch.cuda.get_device_name() if a.device == 'cuda' else f'{a.threads} thread(s)'}), "
          f"torch {torch.__version__}, batch {BATCH}x{SEQ}, {a.steps} timed steps, {a.reps} reps")
    for shape in a.shapes.split(","):
        times = {m: [] for m in MODES}
        per_param = {}
        for _ in range(a.reps):
            for mode in MODES:
                model, opt, ids = build(shape, mode, a.device)
                for _ in range(2):
                    step(model, opt, ids, mode, a.device)
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    step(model, opt, ids, mode, a.device)
                times[mode].append((time.perf_counter() - t0) / a.steps)
                per_param[mode] = state_bytes(model, opt)
                print(f"  {shape} {mode}: {times[mode][-1]:.3f} s/step", flush=True)
                n = sum(p.numel() for p in model.parameters())
                del model, opt
        peaks = {}
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--peak", shape, mode, "--device", a.device,
                                  "--threads", str(a.threads)], capture_output=True, text=True, check=True)
            peaks[mode] = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
        print(f"\n{shape}: {n / 1e6:.1f}M parameters", flush=True)
        print("| mode | step s (each rep) | vs fp32 | state bytes/param (measured) | PRECISION_BYTES | peak MiB |")
        print("|---|---|---|---|---|---|")
        for mode in MODES:
            ratio = [t / f for t, f in zip(times[mode], times["fp32"])]
            print(f"| {mode} | {', '.join(f'{t:.3f}' for t in times[mode])} | "
                  f"{', '.join(f'{r:.2f}x' for r in ratio)} | {per_param[mode]:.1f} | {ul.PRECISION_BYTES[mode]} | "
                  f"{peaks[mode] / 2**20:.0f} |")


if __name__ == "__main__":
    main()
