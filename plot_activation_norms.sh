#!/usr/bin/env bash
# Activation plots (plot_activation_norms.py) for each comparison of the study: reads
# $OUTPUTS_DIR/<comparison>/activation_stats/activation_stats.csv, writes $PLOTS_DIR/<comparison>/activation_plots/.
# Env overrides: study.sh's MODEL_A, COMPARE_WITH, OUTPUTS_DIR, PLOTS_DIR, UV_RUN.
set -euo pipefail
cd "$(dirname "$0")"
source ./study.sh

index=0  # model B's position in the study (MODEL_A is 0): its colour in every figure
for MODEL_B in $COMPARE_WITH; do
  index=$((index + 1))
  cmp=$(comparison_name "$MODEL_A" "$MODEL_B")
  echo "== activation plots: $cmp"
  $UV_RUN plot_activation_norms.py --csv "$OUTPUTS_DIR/$cmp/activation_stats/activation_stats.csv" \
    --outdir "$PLOTS_DIR/$cmp/activation_plots" --name "$cmp" \
    --model-a-label "${MODEL_A%/}" --model-b-label "${MODEL_B%/}" --model-b-index "$index"
done
