#!/usr/bin/env bash
# FSDP == one process, on a machine with 2+ CUDA GPUs (not in CI; never run on the CPU-only dev box).
#   bench/bench_fsdp.sh MODEL_DIR [FORGET RETAIN]
# Trains the same short ga run twice, as one process on one GPU with --batch-size 8, and under
# configs/accelerate_fsdp.yaml with 2 processes and --batch-size 4 each (the same 8 samples per step),
# both in fp32, then compares metrics.json and every saved tensor. Expected: equal to fp32 reduction
# order (max |diff| of the weights below ~1e-5 relative); the saved dtype equals the input's in both.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:?usage: bench/bench_fsdp.sh MODEL_DIR [FORGET RETAIN]}"
FORGET="${2:-data/forget.txt}" RETAIN="${3:-data/retain.txt}"
OUT="${OUT:-/tmp/bench_fsdp}"
rm -rf "$OUT"; mkdir -p "$OUT"
common=(--model "$MODEL" --method ga --forget-data "$FORGET" --retain-data "$RETAIN" --device cuda --dtype fp32
        --max-length 128 --max-samples 64 --eval-split 0.25 --lr 1e-5 --seed 0 --no-gradient-checkpointing)
uv run --script unlearn.py "${common[@]}" --batch-size 8 --outdir "$OUT/single"
uv run --with accelerate accelerate launch --config_file configs/accelerate_fsdp.yaml --num_processes 2 \
  unlearn.py "${common[@]}" --batch-size 4 --outdir "$OUT/fsdp"
uv run --no-project --with torch --with safetensors python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
from safetensors.torch import load_file
out = Path(sys.argv[1])
def weights(d):
    w = {}
    for f in sorted(d.glob("*.safetensors")):
        w.update(load_file(f))
    return w
a, b = weights(out / "single"), weights(out / "fsdp")
assert a.keys() == b.keys(), "different tensor names"
worst = max(float((a[k].double() - b[k].double()).abs().max() / (a[k].double().abs().max() + 1e-12)) for k in a)
dtypes = {str(t.dtype) for t in a.values()} | {str(t.dtype) for t in b.values()}
ma, mb = (json.loads((out / d / "metrics.json").read_text()) for d in ("single", "fsdp"))
print(f"max relative weight difference {worst:.3g}; dtypes {sorted(dtypes)}")
for k in ("forget_NLL", "retain_NLL"):
    print(k, ma.get("after", ma).get(k) if isinstance(ma.get("after"), dict) else ma.get(k),
          mb.get("after", mb).get(k) if isinstance(mb.get("after"), dict) else mb.get(k))
print("PASS" if worst < 1e-4 else "FAIL")
PY
