#!/usr/bin/env bash
# Layer-wise logit and tuned lens (layerwise_lens.py) on the study's models: MODEL_A first, then every
# model in COMPARE_WITH, into $OUTPUTS_DIR/lens/ (layerwise.csv, <model>/tuned_lens.safetensors).
#
# Settings come from the environment (besides study.sh's MODEL_A, COMPARE_WITH, OUTPUTS_DIR, DATA_DIR,
# UV_RUN); a variable that is not set passes no flag, so the tool's own default applies:
#   MCQ_FORGET, MCQ_RETAIN, FORGET_TEST, RETAIN_TEST, LENS_TRAIN_TEXT (or DATA_DIR)
#   LENS (logit,tuned)  LENS_STEPS  LENS_TOKENS_PER_STEP  LENS_LR  LAYERS  SEED
#   DEVICE  DTYPE  BATCH_SIZE  MAX_LENGTH
#   DEVICE_MAP (auto: layers over GPUs, CPU, disk)  MAX_MEMORY (e.g. 0=20GiB,cpu=60GiB)  OFFLOAD_FOLDER
# e.g.  DEVICE=cuda LENS_STEPS=250 ./run_lens.sh
set -euo pipefail
cd "$(dirname "$0")"
user_data_dir="${DATA_DIR:-}"  # set by the user, not by study.sh
source ./study.sh

ARGS=()
if [[ -n "$user_data_dir" ]]; then
  ARGS+=(--forget-test "$DATA_DIR/forget_test.txt" --retain-test "$DATA_DIR/retain_test.txt"
          --mcq-forget "$DATA_DIR/forget_mcq.jsonl" --mcq-retain "$DATA_DIR/retain_mcq.jsonl"
          --lens-train-text "$DATA_DIR/retain.txt")
fi
flag MCQ_FORGET --mcq-forget
flag MCQ_RETAIN --mcq-retain
flag FORGET_TEST --forget-test
flag RETAIN_TEST --retain-test
flag LENS_TRAIN_TEXT --lens-train-text
flag LENS --lens
flag LENS_STEPS --lens-steps
flag LENS_TOKENS_PER_STEP --lens-tokens-per-step
flag LENS_LR --lens-lr
flag LAYERS --layers
flag SEED --seed
flag DEVICE --device
flag DTYPE --dtype
flag BATCH_SIZE --batch-size
flag MAX_LENGTH --max-length
flag DEVICE_MAP --device-map
flag MAX_MEMORY --max-memory
flag OFFLOAD_FOLDER --offload-folder

models=()
for model in $MODEL_A $COMPARE_WITH; do models+=(--model "$model"); done
echo "== layer-wise lens: $MODEL_A $COMPARE_WITH"
$UV_RUN layerwise_lens.py "${models[@]}" --outdir "$OUTPUTS_DIR/lens" ${ARGS[@]+"${ARGS[@]}"}
