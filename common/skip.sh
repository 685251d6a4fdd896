# Skipping finished pipeline steps (sourced by pipeline.sh; bash).
#
# A step is finished when every one of its marker files exists and is not empty. The marker is the
# file the step's tool writes LAST (its report), atomically, so a killed or failed run never leaves
# one behind:
#   weight-diff stats   $OUTPUTS_DIR/<A>_vs_<B>/param_stats/per_layer.csv          (one per comparison)
#   activation stats    $OUTPUTS_DIR/<A>_vs_<B>/activation_stats/activation_stats.csv
#   evaluation          $OUTPUTS_DIR/eval/summary.csv      (written after every model is done)
#   tamper attack       $OUTPUTS_DIR/tamper/attack_report.yaml (the folder is published at once)
#   unlearning          <outdir>/run_report.yaml
# FORCE=1 (or true/yes) re-runs every step. Plots are cheap and always re-made.

declare -F env_flag >/dev/null || source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# step_done MARKER...: status 0 when FORCE is not 1, at least one marker is given and every marker
# is a non-empty file; 1 otherwise.
step_done() {
  env_flag FORCE && return 1   # FORCE=1/true/yes (common/env.sh)
  [ "$#" -gt 0 ] || return 1
  local marker
  for marker in "$@"; do
    [ -s "$marker" ] || return 1
  done
  return 0
}

# unless_done RUNNER NAME MARKER... -- COMMAND...: run "RUNNER NAME COMMAND..." (pipeline.sh's
# `step`) unless step_done says the markers are all there; then say so in one line.
unless_done() {
  local runner="$1" name="$2"; shift 2
  local markers=()
  while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do markers+=("$1"); shift; done
  [ "${1:-}" = "--" ] || { echo "unless_done: missing -- before the command" >&2; return 2; }
  shift
  if step_done "${markers[@]}"; then
    echo "==> $name: done already (${markers[*]}); FORCE=1 re-runs it"
    return 0
  fi
  "$runner" "$name" "$@"
}
