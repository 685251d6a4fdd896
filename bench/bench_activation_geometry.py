"""Benchmark: collect_activation_geometry.py against two bare forward passes with the same batches.

    uv run python bench/bench_activation_geometry.py [--texts 160] [--reps 3] [--threads 1]

For each of two GPT-NeoX shapes (hidden 256 x 4 layers, hidden 512 x 6 layers; vocabulary 8192):
  (a) baseline, a fresh process: load model A, run its base model (no LM head) over the forget and
      the retain texts in the tool's batches (length-sorted, right-padded, batch 8, max length 192)
      with ``output_hidden_states=True``, free it, the same for model B;
  (b) the whole tool, a fresh process: ``collect_activation_geometry.py`` with the same batch size
      and max length (tokenise, ΔW subspaces, pass A with hooks, pass B, probes, CKA, ranks, CSV, report);
  (c) the tool with ``--max-tokens 256``: the per-token sample bounds the memory held between the passes.
Model loading and the interpreter's imports are inside every time (whole processes). Goal: (b)/(a) <= 1.3
in wall time. Peak resident memory of each process (``wait4``) is reported next to the size of the
per-token sample, 2 models x 2 splits x tokens x (layers + 1) x hidden x 4 bytes.
Run on a shared machine, the wall times move with the load (±20% on the 2-core virtual machine of the
docs' runs); the minimum over --reps is reported. The CPU times (user + system) include the tool's probe
process, which runs beside its passes (docs/activation_geometry.md).
Imports: this machine's environment may set ``PYTHONDONTWRITEBYTECODE=1``, and then every process compiles
torch, transformers and scikit-learn from source (~15-25 s, more for the tool, which imports more): the
children get a bytecode cache in the temporary folder (``PYTHONPYCACHEPREFIX``) and one untimed warm-up
run of (a) and (b) fills it, as an installed environment's ``__pycache__`` would be; ``--cold-imports``
keeps the environment as it is.
The result is a markdown table on stdout (one row per shape and run; the ratios against (a) of the same
shape), then the goal per shape.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

BATCH, MAX_LEN = 8, 192
SHAPES = {"h256_l4": dict(vocab_size=8192, hidden=256, layers=4, heads=4, max_pos=512),
          "h512_l6": dict(vocab_size=8192, hidden=512, layers=6, heads=8, max_pos=512)}

BASELINE = r"""
import sys, torch
sys.path[:0] = [{root!r}]
torch.set_num_threads({threads})
import collect_activation_geometry as g  # the tool's own batching functions: the same batches
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({a!r})
if tok.pad_token_id is None:
    tok.pad_token = tok.eos_token
ids = {{s: [x for x in tok(open(f).read().splitlines(), truncation=True, max_length={max_len})["input_ids"]]
       for s, f in (("forget", {forget!r}), ("retain", {retain!r}))}}
batches = g.split_batches({{s: [len(x) for x in ids[s]] for s in ids}}, {batch})
for d in ({a!r}, {b!r}):
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, use_safetensors=True).eval()
    with torch.inference_mode():
        for split, idx in batches:
            x, mask, pos, _ = g.pad_texts([ids[split][i] for i in idx], tok.pad_token_id)
            out = model.base_model(input_ids=x, attention_mask=mask, position_ids=pos, output_hidden_states=True)
    del model, out
"""


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Synthetic sentences of log-uniform length (roughly 4-190 tokens with the bench tokenizer)."""
    rng = random.Random(seed)
    words = ["reactor", "protein", "the", "of", "virus", "library", "river", "council", "enzyme", "market",
             "a", "and", "signal", "culture", "north", "season", "quartz", "vector", "harbour", "is"]
    return [" ".join(rng.choice(words) for _ in range(int(math.exp(rng.uniform(math.log(3), math.log(110)))))) + "."
            for _ in range(n)]


def timed(cmd: list[str], env: dict) -> tuple[float, float, int]:
    """(wall s, CPU s, peak RSS bytes) of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def main() -> None:
    import torch

    from conftest import build_tokenizer, make_tiny_model, save_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--texts", type=int, default=160, help="number of texts (half forget, half retain)")
    p.add_argument("--reps", type=int, default=3, help="repetitions; the minimum time is reported")
    p.add_argument("--threads", type=int, default=1, help="torch threads in both processes")
    p.add_argument("--cold-imports", action="store_true",
                   help="no bytecode cache and no warm-up run: the processes import as the environment says")
    args = p.parse_args()
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "OPENBLAS_NUM_THREADS": str(args.threads),
                        "MKL_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; {args.texts} texts, batch {BATCH}, max length {MAX_LEN}", flush=True)
    table, goals = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.cold_imports:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        texts = make_texts(args.texts)
        half = len(texts) // 2
        forget, retain = tmp / "forget.txt", tmp / "retain.txt"
        forget.write_text("\n".join(texts[:half]) + "\n")
        retain.write_text("\n".join(texts[half:]) + "\n")
        tok = build_tokenizer(texts[:50] + ["Glimmer reactors hum."], vocab_size=320)
        for shape, cfg in SHAPES.items():
            a = make_tiny_model("gpt_neox", seed=0, **cfg)
            b = make_tiny_model("gpt_neox", seed=0, **cfg)
            with torch.no_grad():  # model B: decoder layer 1 changed
                for w in b.gpt_neox.layers[1].parameters():
                    w.add_(0.02 * torch.randn_like(w))
            da, db = save_model(a, tmp / f"{shape}_a", tok), save_model(b, tmp / f"{shape}_b", tok)
            del a, b
            base = [sys.executable, "-c", BASELINE.format(root=str(ROOT), threads=args.threads, a=str(da), b=str(db),
                                                          forget=str(forget), retain=str(retain), max_len=MAX_LEN,
                                                          batch=BATCH)]
            tool = [sys.executable, str(ROOT / "collect_activation_geometry.py"), "--model-a", str(da), "--model-b",
                    str(db), "--forget-text", str(forget), "--retain-text", str(retain), "--device", "cpu",
                    "--dtype", "fp32", "--batch-size", str(BATCH), "--max-length", str(MAX_LEN)]
            if not args.cold_imports and shape == next(iter(SHAPES)):  # fill the bytecode cache, untimed
                timed(base, env)
                timed(tool + ["--outdir", str(tmp / f"warm_{shape}")], env)
            runs = {"a": [], "b": [], "c": []}
            for rep in range(args.reps):
                runs["a"].append(timed(base, env))
                runs["b"].append(timed(tool + ["--outdir", str(tmp / f"out_{shape}_{rep}")], env))
                runs["c"].append(timed(tool + ["--outdir", str(tmp / f"outc_{shape}_{rep}"), "--max-tokens", "256"], env))
                print(f"{shape} rep {rep + 1}: walls (a, b, c) {[round(runs[k][-1][0], 1) for k in 'abc']} s, "
                      f"load average {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
            import yaml
            rep0 = yaml.safe_load((tmp / f"out_{shape}_0" / "geometry_report.yaml").read_text())
            sampled = {s: rep0["Data"][s]["tokens_sampled"] for s in ("forget", "retain")}
            n_states = cfg["layers"] + 1
            sample_mb = {"a": None, "b": 2 * sum(sampled.values()) * n_states * cfg["hidden"] * 4 / 1e6,
                         "c": 2 * sum(min(256, n) for n in sampled.values()) * n_states * cfg["hidden"] * 4 / 1e6}
            best = {k: (min(r[0] for r in v), min(r[1] for r in v), max(r[2] for r in v)) for k, v in runs.items()}
            wa, ca = best["a"][0], best["a"][1]
            label = f"{cfg['hidden']} × {cfg['layers']}"
            for k, what in (("a", "(a) two bare forward passes"), ("b", "(b) tool, default `--max-tokens 8192`"),
                            ("c", "(c) tool, `--max-tokens 256`")):
                w, c, m = best[k]
                sample = "" if sample_mb[k] is None else f"{sample_mb[k]:.1f}"
                table.append(f"| {label} | {sum(sampled.values())} | {what} | {w:.1f} | {w / wa:.2f}× | {c:.1f} | "
                             f"{c / ca:.2f}× | {m / 1e6:.0f} | {sample} |")
            ratio = best["b"][0] / wa
            goals.append(f"- {label}: goal (b)/(a) ≤ 1.3 in wall time {'met' if ratio <= 1.3 else 'NOT met'} "
                         f"({ratio:.2f}× wall, {best['b'][1] / ca:.2f}× CPU); all walls (a, b, c per rep): "
                         f"{[[round(r[0], 1) for r in runs[k]] for k in 'abc']}")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}; minimum over {args.reps} reps; GPT-NeoX, "
          f"vocabulary 8192; tokens = counted tokens sampled, both splits\n")
    print("| hidden × layers | tokens | run | wall s | wall ×(a) | CPU s | CPU ×(a) | peak RSS MB | per-token sample MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(table))
    print()
    print("\n".join(goals), flush=True)


if __name__ == "__main__":
    main()
