#!/usr/bin/env bash
# Unlearn with one method: ./run_unlearn.sh METHOD [more unlearn.py flags]
#   (ga_simple ga grad_diff dpo npo simnpo rmu cb lat cb_lat)
# Settings come from the environment, and a flag is passed only when its variable is set, so every
# default lives in unlearn.py (`uv run --script unlearn.py --help`). For example
#   DEVICE=mps EPOCHS=3 LR=2e-5 ./run_unlearn.sh npo
#   MODEL=demo/models/demo-unfiltered LAYER_ID=1,2 ./run_unlearn.sh cb_lat
#   SEEDS="42 1337 2024" ./run_unlearn.sh ga    one run per seed, each into
#                                               outputs/<model>__ga__seed<k>/unlearned_model
# MODEL defaults to the study's base model ($MODEL_A, see study.sh), the data to $DATA_DIR/forget.txt
# and retain.txt; the output folder to unlearn.py's outputs/<model>__METHOD/unlearned_model (OUTDIR
# overrides it for a single run). Variables: OUTDIR DEVICE DTYPE LR EPOCHS BATCH_SIZE GRAD_ACCUM
# MAX_LENGTH MAX_SAMPLES BETA ALPHA STEERING_COEFF LAYER_ID FORGET_WEIGHT LAT_EPS LAT_STEPS
# LAT_STEP_SIZE EVAL_SPLIT TEST_SPLIT SPLIT_SEED EVAL_INTERVAL EARLY_STOP_PATIENCE GRAD_CLIP SEED
# SEEDS CB_LOSS TRAINABLE REPORT_TO. For several GPUs run unlearn.py under `accelerate launch`.
set -euo pipefail
cd "$(dirname "$0")"
source ./study.sh

if [[ $# -lt 1 || -z "${1:-}" ]]; then
  echo "usage: $0 METHOD   (ga_simple ga grad_diff dpo npo simnpo rmu cb lat cb_lat; settings from env: MODEL DEVICE DTYPE EPOCHS LR SEEDS ...)" >&2
  exit 2
fi
METHOD="$1"
shift

args=(--model "${MODEL:-$MODEL_A}" --method "$METHOD"
      --forget-data "${FORGET_DATA:-$DATA_DIR/forget.txt}" --retain-data "${RETAIN_DATA:-$DATA_DIR/retain.txt}")
# pass FLAG VALUE only when the variable VAR is set and not empty
opt() { if [[ -n "${!1:-}" ]]; then args+=("$2" "${!1}"); fi; }
opt OUTDIR --outdir;               opt DEVICE --device;             opt DTYPE --dtype
opt LR --lr;                       opt EPOCHS --epochs;             opt BATCH_SIZE --batch-size
opt GRAD_ACCUM --grad-accum-steps; opt MAX_LENGTH --max-length;     opt MAX_SAMPLES --max-samples
opt BETA --beta;                   opt ALPHA --alpha;               opt STEERING_COEFF --steering-coeff
opt LAYER_ID --layer-id;           opt FORGET_WEIGHT --forget-weight
opt LAT_EPS --lat-eps;             opt LAT_STEPS --lat-steps;       opt LAT_STEP_SIZE --lat-step-size
opt EVAL_SPLIT --eval-split;       opt TEST_SPLIT --test-split;     opt SPLIT_SEED --split-seed
opt EVAL_INTERVAL --eval-interval; opt EARLY_STOP_PATIENCE --early-stop-patience
opt GRAD_CLIP --grad-clip;         opt CB_LOSS --cb-loss;           opt TRAINABLE --trainable
opt REPORT_TO --report-to

if [[ -z "${SEEDS:-}" ]]; then
  opt SEED --seed
  exec $UV_RUN unlearn.py "${args[@]}" "$@"
fi
if [[ -n "${OUTDIR:-}" || -n "${SEED:-}" ]]; then
  echo "run_unlearn: SEEDS gives every seed its own folder; unset OUTDIR and SEED" >&2
  exit 1
fi
for seed in $SEEDS; do
  if ! [[ "$seed" =~ ^[0-9]+$ ]]; then
    echo "run_unlearn: SEEDS must be whole numbers separated by spaces, e.g. SEEDS=\"42 1337 2024\" (got '$seed')" >&2
    exit 1
  fi
done
for seed in $SEEDS; do
  $UV_RUN unlearn.py "${args[@]}" --seed "$seed" --seed-in-outdir "$@"
done
