#!/usr/bin/env bash
# Activation norms and activation diffs (collect_activation_norms.py) for each comparison of the study:
# MODEL_A against every model in COMPARE_WITH, into $OUTPUTS_DIR/<comparison>/activation_stats/.
#
# Env overrides (besides study.sh's MODEL_A, COMPARE_WITH, OUTPUTS_DIR, DATA_DIR, UV_RUN):
#   FORGET_TEXT ($DATA_DIR/forget.txt)  RETAIN_TEXT ($DATA_DIR/retain.txt)  DEVICE (auto)  DTYPE (auto)
#   BATCH_SIZE (8)  MAX_LENGTH (512)  MAX_SAMPLES (all)  CACHE_FP16 (0; 1 = --cache-fp16)  CACHE_DIR ($TMPDIR)
# e.g.  DEVICE=cuda MAX_SAMPLES=200 ./run_activations.sh
set -euo pipefail
cd "$(dirname "$0")"
source ./study.sh

extra=()
[[ -n "${MAX_SAMPLES:-}" ]] && extra+=(--max-samples "$MAX_SAMPLES")
[[ "${CACHE_FP16:-0}" == 1 ]] && extra+=(--cache-fp16)
[[ -n "${CACHE_DIR:-}" ]] && extra+=(--cache-dir "$CACHE_DIR")

for MODEL_B in $COMPARE_WITH; do
  cmp=$(comparison_name "$MODEL_A" "$MODEL_B")
  echo "== activations: $cmp"
  $UV_RUN collect_activation_norms.py --model-a "$MODEL_A" --model-b "$MODEL_B" \
    --forget-text "${FORGET_TEXT:-$DATA_DIR/forget.txt}" --retain-text "${RETAIN_TEXT:-$DATA_DIR/retain.txt}" \
    --outdir "$OUTPUTS_DIR/$cmp/activation_stats" --device "${DEVICE:-auto}" --dtype "${DTYPE:-auto}" \
    --batch-size "${BATCH_SIZE:-8}" --max-length "${MAX_LENGTH:-512}" ${extra[@]+"${extra[@]}"}
done
