#!/usr/bin/env bash
# ΔW statistics (collect_param_stats.py) for each comparison of the study:
# MODEL_A vs every model in COMPARE_WITH, into $OUTPUTS_DIR/<comparison>/param_stats/.
#
#   MODEL_A, MODEL_FILTERED, MODEL_CBLAT, COMPARE_WITH, OUTPUTS_DIR, UV_RUN   see study.sh
#   DEVICE      auto|cuda|mps|cpu                      (auto)
#   DTYPE       auto|fp32|fp16|bf16 (ΔW is always fp32) (auto)
#   SEED        seed of the Lanczos start block        (42)
#   TOL         relative residual stop test            (1e-5)
#   BLOCK_SIZE  Lanczos block size                     (8)
#   MAX_ITER    max block products per matrix          (300)
#   CHUNK_MB    slice size for large tensors, MB       (4)
#   DENSE_MAX   Gram sizes up to this use a dense eigensolver, larger ones block Lanczos (1024)
#
# e.g.  DEVICE=cuda COMPARE_WITH=EleutherAI/deep-ignorance-unfiltered-cb-lat ./run_params_local.sh
set -euo pipefail
cd "$(dirname "$0")"
source ./study.sh

for MODEL_B in $COMPARE_WITH; do
  cmp="$(comparison_name "$MODEL_A" "$MODEL_B")"
  echo "== param stats: $MODEL_A vs $MODEL_B -> $OUTPUTS_DIR/$cmp/param_stats"
  $UV_RUN collect_param_stats.py --model-a "$MODEL_A" --model-b "$MODEL_B" \
    --outdir "$OUTPUTS_DIR/$cmp/param_stats" --device "${DEVICE:-auto}" --dtype "${DTYPE:-auto}" \
    --seed "${SEED:-42}" --tol "${TOL:-1e-5}" --block-size "${BLOCK_SIZE:-8}" \
    --max-iter "${MAX_ITER:-300}" --chunk-mb "${CHUNK_MB:-4}" --dense-max "${DENSE_MAX:-1024}"
done
