#!/usr/bin/env bash
# ΔW statistics (collect_param_stats.py) for each comparison of the study:
# MODEL_A vs every model in COMPARE_WITH, into $OUTPUTS_DIR/<comparison>/param_stats/.
#
#   MODEL_A, MODEL_FILTERED, MODEL_CBLAT, COMPARE_WITH, OUTPUTS_DIR, UV_RUN   see study.sh
#   DEVICE      --device (auto|cuda|mps|cpu)
#   DTYPE       --dtype (ΔW is always computed in fp32)
#   SEED        --seed of the Lanczos start block
#   TOL         --tol, the relative residual stop test
#   BLOCK_SIZE  --block-size of block Lanczos
#   MAX_ITER    --max-iter, block products per matrix
#   CHUNK_MB    --chunk-mb, slice size for large tensors
#   DENSE_MAX   --dense-max: Gram sizes up to this use a dense eigensolver, larger ones block Lanczos
# A variable that is unset passes no flag: the defaults live in the tool
# (uv run --script collect_param_stats.py --help lists them).
#
# e.g.  DEVICE=cuda COMPARE_WITH=EleutherAI/deep-ignorance-unfiltered-cb-lat ./run_params_local.sh
set -euo pipefail
cd "$(dirname "$0")"
source ./study.sh

ARGS=()
flag DEVICE --device
flag DTYPE --dtype
flag SEED --seed
flag TOL --tol
flag BLOCK_SIZE --block-size
flag MAX_ITER --max-iter
flag CHUNK_MB --chunk-mb
flag DENSE_MAX --dense-max

for MODEL_B in $COMPARE_WITH; do
  cmp="$(comparison_name "$MODEL_A" "$MODEL_B")"
  echo "== param stats: $MODEL_A vs $MODEL_B -> $OUTPUTS_DIR/$cmp/param_stats"
  $UV_RUN collect_param_stats.py --model-a "$MODEL_A" --model-b "$MODEL_B" \
    --outdir "$OUTPUTS_DIR/$cmp/param_stats" ${ARGS[@]+"${ARGS[@]}"}
done
