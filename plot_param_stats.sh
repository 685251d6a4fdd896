#!/usr/bin/env bash
# Figures of the ΔW statistics (plot_param_stats.py) for each comparison of the study:
# $OUTPUTS_DIR/<comparison>/param_stats/per_layer.csv -> $PLOTS_DIR/<comparison>/param_plots/.
#
#   MODEL_A, MODEL_FILTERED, MODEL_CBLAT, COMPARE_WITH, OUTPUTS_DIR, PLOTS_DIR, UV_RUN   see study.sh
set -euo pipefail
cd "$(dirname "$0")"
source ./study.sh

index=0  # model B's position in the study (MODEL_A is 0): its colour in every figure
for MODEL_B in $COMPARE_WITH; do
  index=$((index + 1))
  cmp="$(comparison_name "$MODEL_A" "$MODEL_B")"
  echo "== param plots: $cmp -> $PLOTS_DIR/$cmp/param_plots"
  $UV_RUN plot_param_stats.py --stats-dir "$OUTPUTS_DIR/$cmp/param_stats" \
    --outdir "$PLOTS_DIR/$cmp/param_plots" --name "$cmp" \
    --model-a-label "${MODEL_A%/}" --model-b-label "${MODEL_B%/}" --model-b-index "$index"
done
