#!/usr/bin/env bash
# Training-free attacks (ablation_attack.py) on the study's models: MODEL_A is the reference (the
# original, knowledgeable model), every model in COMPARE_WITH is attacked; results in
# $OUTPUTS_DIR/ablation/ (ablation.csv, directions.safetensors, ablation_report.yaml).
#
# Settings come from the environment (besides study.sh's MODEL_A, COMPARE_WITH, OUTPUTS_DIR, DATA_DIR,
# UV_RUN); a variable that is not set passes no flag, so the tool's own default applies:
#   ABLATION_ATTACKS (e.g. direction,quantize)  ABLATION_LAYERS (all | 2,4)  ABLATION_RANKS  ABLATION_BITS
#   ABLATION_GROUP_SIZE  DIRECTION_SOURCE (contrast | reference)  DIRECTION_SAMPLES  SKIP_FIRST
#   FORGET_TEST, RETAIN_TEST, MCQ_FORGET, MCQ_RETAIN, DIRECTION_FORGET, DIRECTION_RETAIN (or DATA_DIR)
#   DEVICE  DTYPE  BATCH_SIZE  MAX_LENGTH  SEED
#   DEVICE_MAP (auto: layers over GPUs, CPU, disk)  MAX_MEMORY (e.g. 0=20GiB,cpu=60GiB)  OFFLOAD_FOLDER
# e.g.  DEVICE=cuda ABLATION_RANKS=1,4,16 ./run_ablation.sh
set -euo pipefail
cd "$(dirname "$0")"
user_data_dir="${DATA_DIR:-}"  # set by the user, not by study.sh
source ./study.sh

ARGS=()
if [[ -n "$user_data_dir" ]]; then
  ARGS+=(--forget-test "$DATA_DIR/forget_test.txt" --retain-test "$DATA_DIR/retain_test.txt"
          --direction-data-forget "$DATA_DIR/forget.txt" --direction-data-retain "$DATA_DIR/retain.txt")
  for set in forget retain; do  # an MCQ set that is not there is skipped, not guessed
    if [[ -f "$DATA_DIR/${set}_mcq.jsonl" ]]; then ARGS+=("--mcq-$set" "$DATA_DIR/${set}_mcq.jsonl")
    else ARGS+=("--mcq-$set" ""); fi
  done
fi
flag FORGET_TEST --forget-test
flag RETAIN_TEST --retain-test
flag MCQ_FORGET --mcq-forget
flag MCQ_RETAIN --mcq-retain
flag DIRECTION_FORGET --direction-data-forget
flag DIRECTION_RETAIN --direction-data-retain
flag ABLATION_ATTACKS --attacks
flag ABLATION_LAYERS --layers
flag ABLATION_RANKS --ranks
flag ABLATION_BITS --bits
flag ABLATION_GROUP_SIZE --group-size
flag DIRECTION_SOURCE --direction-source
flag DIRECTION_SAMPLES --direction-samples
flag SKIP_FIRST --skip-first
flag DEVICE --device
flag DTYPE --dtype
flag BATCH_SIZE --batch-size
flag MAX_LENGTH --max-length
flag SEED --seed
flag DEVICE_MAP --device-map
flag MAX_MEMORY --max-memory
flag OFFLOAD_FOLDER --offload-folder

models=()
for MODEL_B in $COMPARE_WITH; do models+=(--model "$MODEL_B"); done
echo "== ablation attacks: reference $MODEL_A -> $OUTPUTS_DIR/ablation"
$UV_RUN ablation_attack.py --reference "$MODEL_A" "${models[@]}" --outdir "$OUTPUTS_DIR/ablation" \
  ${ARGS[@]+"${ARGS[@]}"}
