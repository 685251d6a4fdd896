#!/usr/bin/env bash
# Sanity checks before the expensive steps (check_experiment.py) on DATA_DIR's forget/retain data
# and MODEL_A. check_experiment.py reads MAX_LENGTH, DEVICE, DTYPE, GRAD_ACCUM, CACHE_FP16 and
# CACHE_DIR from the environment itself.
#   MODEL_A, DATA_DIR, UV_RUN   see study.sh
set -euo pipefail
cd "$(dirname "$0")"
source ./study.sh

echo "== sanity checks: $DATA_DIR, $MODEL_A"
$UV_RUN check_experiment.py --forget-data "$DATA_DIR/forget.txt" --retain-data "$DATA_DIR/retain.txt" \
  --model "$MODEL_A"
