#!/usr/bin/env bash
# Activation norms and activation diffs (collect_activation_norms.py) for each comparison of the study:
# MODEL_A against every model in COMPARE_WITH, into $OUTPUTS_DIR/<comparison>/activation_stats/.
#
# Settings come from the environment (besides study.sh's MODEL_A, COMPARE_WITH, OUTPUTS_DIR, DATA_DIR,
# UV_RUN); a variable that is not set passes no flag, so the tool's own default applies:
#   FORGET_TEXT, RETAIN_TEXT (or DATA_DIR)  DEVICE  DTYPE  BATCH_SIZE  MAX_LENGTH  MAX_SAMPLES
#   CACHE_FP16 (1/true/yes = --cache-fp16)  CACHE_DIR
#   DEVICE_MAP (auto: layers over GPUs, CPU, disk)  MAX_MEMORY (e.g. 0=20GiB,cpu=60GiB)  OFFLOAD_FOLDER
# e.g.  DEVICE=cuda MAX_SAMPLES=200 ./run_activations.sh
set -euo pipefail
cd "$(dirname "$0")"
user_data_dir="${DATA_DIR:-}"  # set by the user, not by study.sh
source ./study.sh

ARGS=()
[[ -n "$user_data_dir" ]] && ARGS+=(--forget-text "$DATA_DIR/forget.txt" --retain-text "$DATA_DIR/retain.txt")
flag FORGET_TEXT --forget-text
flag RETAIN_TEXT --retain-text
flag DEVICE --device
flag DTYPE --dtype
flag BATCH_SIZE --batch-size
flag MAX_LENGTH --max-length
flag MAX_SAMPLES --max-samples
flag CACHE_DIR --cache-dir
switch CACHE_FP16 --cache-fp16
flag DEVICE_MAP --device-map
flag MAX_MEMORY --max-memory
flag OFFLOAD_FOLDER --offload-folder

for MODEL_B in $COMPARE_WITH; do
  cmp=$(comparison_name "$MODEL_A" "$MODEL_B")
  echo "== activations: $cmp"
  $UV_RUN collect_activation_norms.py --model-a "$MODEL_A" --model-b "$MODEL_B" \
    --outdir "$OUTPUTS_DIR/$cmp/activation_stats" ${ARGS[@]+"${ARGS[@]}"}
done
