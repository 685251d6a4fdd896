#!/usr/bin/env bash
# The attack figure (plot_tamper.py): $OUTPUTS_DIR/tamper -> $PLOTS_DIR/tamper/recovery.png.
#
#   OUTPUTS_DIR, PLOTS_DIR, UV_RUN   see study.sh
set -euo pipefail
cd "$(dirname "$0")"
source ./study.sh

echo "== tamper plot -> $PLOTS_DIR/tamper/recovery.png"
$UV_RUN plot_tamper.py --indir "$OUTPUTS_DIR/tamper" --outdir "$PLOTS_DIR/tamper"
