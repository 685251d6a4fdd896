#!/usr/bin/env bash
# The evaluation figure (plot_unlearning_eval.py): $OUTPUTS_DIR/eval -> $PLOTS_DIR/eval/forgetting_summary.png.
#
#   OUTPUTS_DIR, PLOTS_DIR, UV_RUN   see study.sh
set -euo pipefail
cd "$(dirname "$0")"
source ./study.sh

echo "== evaluation plot -> $PLOTS_DIR/eval/forgetting_summary.png"
$UV_RUN plot_unlearning_eval.py --indir "$OUTPUTS_DIR/eval" --out "$PLOTS_DIR/eval/forgetting_summary.png"
