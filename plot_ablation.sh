#!/usr/bin/env bash
# Figure of the training-free attacks (plot_ablation.py):
# $OUTPUTS_DIR/ablation/ablation.csv -> $PLOTS_DIR/ablation/ablation.png.
#
#   OUTPUTS_DIR, PLOTS_DIR, UV_RUN   see study.sh
set -euo pipefail
cd "$(dirname "$0")"
source ./study.sh

echo "== ablation plot: $PLOTS_DIR/ablation"
$UV_RUN plot_ablation.py --indir "$OUTPUTS_DIR/ablation" --outdir "$PLOTS_DIR/ablation"
