#!/usr/bin/env bash
# The study's report (report.py): one self-contained HTML page from everything under
# $OUTPUTS_DIR and $PLOTS_DIR, written to $REPORT_OUT (default report/index.html); its path is
# printed last.
#
# Settings come from the environment (besides study.sh's OUTPUTS_DIR, PLOTS_DIR, UV_RUN); a variable
# that is not set passes no flag, so the tool's own default applies:
#   REPORT_OUT (--out)  REPORT_TITLE (--title)  REPORT_REFERENCE (--reference; default: model A)
# e.g.  REPORT_OUT=/tmp/study.html ./run_report.sh
set -euo pipefail
cd "$(dirname "$0")"
source ./study.sh   # also common/env.sh: flag, and Ctrl-C/SIGTERM -> 130/143

ARGS=()
flag REPORT_OUT --out
flag REPORT_TITLE --title
flag REPORT_REFERENCE --reference

echo "== report: $OUTPUTS_DIR + $PLOTS_DIR -> ${REPORT_OUT:-report/index.html}"
$UV_RUN report.py --outputs "$OUTPUTS_DIR" --plots "$PLOTS_DIR" ${ARGS[@]+"${ARGS[@]}"}
