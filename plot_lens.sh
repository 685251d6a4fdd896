#!/usr/bin/env bash
# Layer-wise lens figure (plot_layerwise_lens.py): reads $OUTPUTS_DIR/lens/layerwise.csv, writes
# $PLOTS_DIR/lens/layerwise_lens.png. Env overrides: study.sh's OUTPUTS_DIR, PLOTS_DIR, UV_RUN.
set -euo pipefail
cd "$(dirname "$0")"
source ./study.sh

echo "== layer-wise lens plot"
$UV_RUN plot_layerwise_lens.py --csv "$OUTPUTS_DIR/lens/layerwise.csv" --outdir "$PLOTS_DIR/lens"
