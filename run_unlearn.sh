#!/usr/bin/env bash
# Unlearn with one method: ./run_unlearn.sh METHOD [EXTRA unlearn.py FLAGS]
#   METHOD: ga_simple ga grad_diff dpo npo simnpo rmu cb lat cb_lat
# Settings come from the environment; a variable that is not set passes no flag, so unlearn.py's
# own default applies (`uv run --script unlearn.py --help` lists them). For example
#   DEVICE=mps EPOCHS=3 LR=2e-5 ./run_unlearn.sh npo
#   MODEL=demo/models/demo-unfiltered LAYER_ID=1,2 MAX_SAMPLES=200 ./run_unlearn.sh cb_lat
#   SEEDS="42 1337 2024" ./run_unlearn.sh ga   one run per seed, each into
#                                              <outputs>/<model>__ga__seed<k>/unlearned_model
# MODEL (default: the study's $MODEL_A, see study.sh), OUTDIR, OUTPUTS_DIR, DATA_DIR or
# FORGET_DATA / RETAIN_DATA, DEVICE, DTYPE, LR, EPOCHS, BATCH_SIZE, GRAD_ACCUM, MAX_LENGTH,
# MAX_SAMPLES, BETA, ALPHA, STEERING_COEFF, LAYER_ID, FORGET_WEIGHT, LAT_EPS, LAT_STEPS,
# LAT_STEP_SIZE, EVAL_SPLIT, TEST_SPLIT, SPLIT_SEED, EVAL_INTERVAL, EARLY_STOP_PATIENCE, GRAD_CLIP,
# SEED or SEEDS, CB_LOSS, TRAINABLE, REPORT_TO, and for LoRA LORA_R, LORA_ALPHA,
# LORA_DROPOUT, LORA_TARGET_MODULES, LORA_LAYERS (e.g. LORA_R=16 LORA_LAYERS=0-30 LAYER_ID=10,20
# ./run_unlearn.sh cb_lat --save-adapter). For several GPUs run unlearn.py under
# `accelerate launch` instead (see docs).
set -euo pipefail
cd "$(dirname "$0")"
user_data_dir="${DATA_DIR:-}" user_outputs_dir="${OUTPUTS_DIR:-}"  # set by the user, not by study.sh
source ./study.sh

if [[ $# -lt 1 || -z "${1:-}" ]]; then
  echo "usage: $0 METHOD   (ga_simple ga grad_diff dpo npo simnpo rmu cb lat cb_lat; settings from env: MODEL DEVICE DTYPE EPOCHS LR ...)" >&2
  exit 2
fi
METHOD="$1"
shift

ARGS=(--model "${MODEL:-$MODEL_A}" --method "$METHOD")
[[ -n "$user_data_dir" ]] && ARGS+=(--forget-data "$DATA_DIR/forget.txt" --retain-data "$DATA_DIR/retain.txt")
flag FORGET_DATA --forget-data
flag RETAIN_DATA --retain-data
flag OUTDIR --outdir
[[ -n "$user_outputs_dir" ]] && ARGS+=(--outputs-dir "$OUTPUTS_DIR")
flag DEVICE --device
flag DTYPE --dtype
flag LR --lr
flag EPOCHS --epochs
flag BATCH_SIZE --batch-size
flag GRAD_ACCUM --grad-accum-steps
flag MAX_LENGTH --max-length
flag MAX_SAMPLES --max-samples
flag BETA --beta
flag ALPHA --alpha
flag STEERING_COEFF --steering-coeff
flag LAYER_ID --layer-id
flag FORGET_WEIGHT --forget-weight
flag LAT_EPS --lat-eps
flag LAT_STEPS --lat-steps
flag LAT_STEP_SIZE --lat-step-size
flag EVAL_SPLIT --eval-split
flag TEST_SPLIT --test-split
flag SPLIT_SEED --split-seed
flag EVAL_INTERVAL --eval-interval
flag EARLY_STOP_PATIENCE --early-stop-patience
flag GRAD_CLIP --grad-clip
flag CB_LOSS --cb-loss
flag TRAINABLE --trainable
flag REPORT_TO --report-to
flag LORA_R --lora-r
flag LORA_ALPHA --lora-alpha
flag LORA_DROPOUT --lora-dropout
flag LORA_TARGET_MODULES --lora-target-modules
flag LORA_LAYERS --lora-layers

if [[ -z "${SEEDS:-}" ]]; then
  flag SEED --seed
  exec $UV_RUN unlearn.py "${ARGS[@]}" "$@"
fi
# SEEDS="42 1337 2024": one run per seed, each into its own default folder (...__seed<k>)
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
  $UV_RUN unlearn.py "${ARGS[@]}" --seed "$seed" --seed-in-outdir "$@"
done
