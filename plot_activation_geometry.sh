#!/usr/bin/env bash
# Activation-geometry plots (plot_activation_geometry.py) for each comparison of the study: reads
# $OUTPUTS_DIR/<comparison>/activation_geometry/activation_geometry.csv, writes
# $PLOTS_DIR/<comparison>/activation_geometry/. Model B gets the colour of its position in COMPARE_WITH.
# Env overrides: study.sh's MODEL_A, COMPARE_WITH, OUTPUTS_DIR, PLOTS_DIR, UV_RUN.
set -euo pipefail
cd "$(dirname "$0")"
source ./study.sh

index=0
for MODEL_B in $COMPARE_WITH; do
  index=$((index + 1))
  cmp=$(comparison_name "$MODEL_A" "$MODEL_B")
  echo "== activation geometry plots: $cmp"
  $UV_RUN plot_activation_geometry.py --csv "$OUTPUTS_DIR/$cmp/activation_geometry/activation_geometry.csv" \
    --outdir "$PLOTS_DIR/$cmp/activation_geometry" --name "$cmp" \
    --model-a-label "${MODEL_A%/}" --model-b-label "${MODEL_B%/}" --model-b-index "$index"
done
