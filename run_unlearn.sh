#!/usr/bin/env bash
# Unlearn with one method: ./run_unlearn.sh METHOD   (ga_simple ga grad_diff dpo npo simnpo rmu cb lat cb_lat)
# Every setting comes from the environment, with unlearn.py's defaults, e.g.
#   DEVICE=mps EPOCHS=3 LR=2e-5 ./run_unlearn.sh npo
#   MODEL=demo/models/demo-unfiltered LAYER_ID=1,2 ./run_unlearn.sh cb_lat
#   LORA_R=16 LORA_LAYERS=0-30 LAYER_ID=10,20 ./run_unlearn.sh cb_lat --save-adapter   (LoRA, merged on save)
# MODEL defaults to the study's base model ($MODEL_A, see study.sh); OUTDIR to
# $OUTPUTS_DIR/<basename of MODEL>__METHOD/unlearned_model. For several GPUs run unlearn.py under
# `accelerate launch` instead (see README).
set -euo pipefail
cd "$(dirname "$0")"
source ./study.sh

if [[ $# -lt 1 || -z "${1:-}" ]]; then
  echo "usage: $0 METHOD   (ga_simple ga grad_diff dpo npo simnpo rmu cb lat cb_lat; settings from env: MODEL DEVICE DTYPE EPOCHS LR ...)" >&2
  exit 2
fi
METHOD="$1"
shift

MODEL="${MODEL:-$MODEL_A}"
_model="${MODEL%/}"
OUTDIR="${OUTDIR:-$OUTPUTS_DIR/${_model##*/}__${METHOD}/unlearned_model}"

exec $UV_RUN unlearn.py \
  --model "$MODEL" \
  --method "$METHOD" \
  --forget-data "${FORGET_DATA:-$DATA_DIR/forget.txt}" \
  --retain-data "${RETAIN_DATA:-$DATA_DIR/retain.txt}" \
  --outdir "$OUTDIR" \
  --device "${DEVICE:-auto}" \
  --dtype "${DTYPE:-auto}" \
  --lr "${LR:-1e-5}" \
  --epochs "${EPOCHS:-1}" \
  --batch-size "${BATCH_SIZE:-4}" \
  --grad-accum-steps "${GRAD_ACCUM:-1}" \
  --max-length "${MAX_LENGTH:-512}" \
  --beta "${BETA:-0.1}" \
  --alpha "${ALPHA:-100.0}" \
  --steering-coeff "${STEERING_COEFF:-20.0}" \
  --layer-id "${LAYER_ID:-5,6,7}" \
  --forget-weight "${FORGET_WEIGHT:-1.0}" \
  --lat-eps "${LAT_EPS:-0.1}" \
  --lat-steps "${LAT_STEPS:-5}" \
  --eval-split "${EVAL_SPLIT:-0.1}" \
  --eval-interval "${EVAL_INTERVAL:-0}" \
  --grad-clip "${GRAD_CLIP:-1.0}" \
  --seed "${SEED:-42}" \
  --cb-loss "${CB_LOSS:-cos}" \
  ${TRAINABLE:+--trainable "$TRAINABLE"} \
  ${LORA_R:+--lora-r "$LORA_R"} \
  ${LORA_ALPHA:+--lora-alpha "$LORA_ALPHA"} \
  ${LORA_DROPOUT:+--lora-dropout "$LORA_DROPOUT"} \
  ${LORA_TARGET_MODULES:+--lora-target-modules "$LORA_TARGET_MODULES"} \
  ${LORA_LAYERS:+--lora-layers "$LORA_LAYERS"} \
  "$@"
