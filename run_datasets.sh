#!/usr/bin/env bash
# The forget/retain data of the study (create_datasets.py) into DATA_DIR.
#
# Settings come from the environment; a variable that is not set passes no flag, so the tool's own
# default applies:
#   DATASET_SOURCE (--source: hub or synthetic)  SEED  N_FORGET (--n-forget)  N_RETAIN (--n-retain)
#   N_TEST (--n-test)  N_MCQ (--n-mcq)  MMLU_PATH (--mmlu-path)
# e.g.  DATASET_SOURCE=synthetic DATA_DIR=/tmp/data ./run_datasets.sh
set -euo pipefail
cd "$(dirname "$0")"
source ./study.sh

ARGS=(--outdir "$DATA_DIR")
flag DATASET_SOURCE --source
flag SEED --seed
flag N_FORGET --n-forget
flag N_RETAIN --n-retain
flag N_TEST --n-test
flag N_MCQ --n-mcq
flag MMLU_PATH --mmlu-path

echo "== datasets -> $DATA_DIR"
$UV_RUN create_datasets.py "${ARGS[@]}"
