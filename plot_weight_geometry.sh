#!/usr/bin/env bash
# Figures of the weight geometry (plot_weight_geometry.py) for each comparison of the study:
# $OUTPUTS_DIR/<comparison>/weight_geometry/ (+ param_stats/per_component.csv when present)
# -> $PLOTS_DIR/<comparison>/weight_geometry/. Model B keeps its study colour (its position in
# COMPARE_WITH, the reference model being 0).
#
#   MODEL_A, MODEL_FILTERED, MODEL_CBLAT, COMPARE_WITH, OUTPUTS_DIR, PLOTS_DIR, UV_RUN   see study.sh
set -euo pipefail
cd "$(dirname "$0")"
source ./study.sh

index=0
for MODEL_B in $COMPARE_WITH; do
  index=$((index + 1))
  cmp="$(comparison_name "$MODEL_A" "$MODEL_B")"
  echo "== weight geometry plots: $cmp -> $PLOTS_DIR/$cmp/weight_geometry"
  $UV_RUN plot_weight_geometry.py --geometry-dir "$OUTPUTS_DIR/$cmp/weight_geometry" \
    --param-stats-dir "$OUTPUTS_DIR/$cmp/param_stats" --outdir "$PLOTS_DIR/$cmp/weight_geometry" \
    --name "$cmp" --model-a-label "${MODEL_A%/}" --model-b-label "${MODEL_B%/}" --model-b-index "$index"
done
