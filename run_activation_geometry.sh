#!/usr/bin/env bash
# Activation geometry (collect_activation_geometry.py) for each comparison of the study: MODEL_A against
# every model in COMPARE_WITH, into $OUTPUTS_DIR/<comparison>/activation_geometry/.
#
# Settings come from the environment (besides study.sh's MODEL_A, COMPARE_WITH, OUTPUTS_DIR, DATA_DIR,
# UV_RUN); a variable that is not set passes no flag, so the tool's own default applies:
#   FORGET_TEXT, RETAIN_TEXT (or DATA_DIR)  DEVICE  DTYPE  BATCH_SIZE  MAX_LENGTH  SEED
#   MAX_SAMPLES (or GEOMETRY_MAX_SAMPLES, which wins)  GEOMETRY_MAX_TOKENS  GEOMETRY_LAYERS
#   GEOMETRY_SKIP_FIRST  GEOMETRY_PROBE_FOLDS  GEOMETRY_TOP_K  GEOMETRY_SAVE_FEATURES (1/true/yes = --save-features)
#   DEVICE_MAP (auto: layers over GPUs, CPU, disk)  MAX_MEMORY (e.g. 0=20GiB,cpu=60GiB)  OFFLOAD_FOLDER
# e.g.  DEVICE=cuda GEOMETRY_MAX_TOKENS=4096 ./run_activation_geometry.sh
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
flag SEED --seed
flag DEVICE_MAP --device-map
flag MAX_MEMORY --max-memory
flag OFFLOAD_FOLDER --offload-folder
if [[ -n "${GEOMETRY_MAX_SAMPLES:-}" ]]; then flag GEOMETRY_MAX_SAMPLES --max-samples; else flag MAX_SAMPLES --max-samples; fi
flag GEOMETRY_MAX_TOKENS --max-tokens
flag GEOMETRY_LAYERS --layers
flag GEOMETRY_SKIP_FIRST --skip-first
flag GEOMETRY_PROBE_FOLDS --probe-folds
flag GEOMETRY_TOP_K --top-k
switch GEOMETRY_SAVE_FEATURES --save-features

for MODEL_B in $COMPARE_WITH; do
  cmp=$(comparison_name "$MODEL_A" "$MODEL_B")
  echo "== activation geometry: $cmp"
  $UV_RUN collect_activation_geometry.py --model-a "$MODEL_A" --model-b "$MODEL_B" \
    --outdir "$OUTPUTS_DIR/$cmp/activation_geometry" ${ARGS[@]+"${ARGS[@]}"}
done
