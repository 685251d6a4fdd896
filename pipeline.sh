#!/usr/bin/env bash
# The whole study, end to end:
#   (demo build) -> weight-diff stats -> their plots -> forget/retain data -> sanity checks
#   -> activation stats -> their plots -> evaluation of every model -> its plot
#   -> the same fine-tuning attack on every model -> its plot -> weight geometry -> its plots
#   -> activation geometry -> its plots -> layer-wise lens -> its plot -> training-free attacks
#   -> their plot -> report/index.html (one page for the whole study).
#
#   ./pipeline.sh          the reference study on the EleutherAI deep-ignorance models (GPU, hub)
#   ./pipeline.sh --demo   the embedded miniature: builds (or reuses) the tiny demo model family
#                          under demo/models and runs the same steps on it, offline, on a CPU
#
# A step whose results are complete (the file its tool writes last exists) is skipped, so a stopped
# study goes on where it stopped; FORCE=1 cleans outputs/ and plots/ (unlearned models are kept)
# and re-runs every step. Plots and the report are always re-made (they take seconds).
# Every setting of the steps can be overridden from the environment (see study.sh and each
# run_*.sh); LOG_DIR (default outputs/logs) holds one log per step.
set -euo pipefail
cd "$(dirname "$0")"

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
DEMO=0
for arg in "$@"; do
  case "$arg" in
    --demo) DEMO=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "pipeline: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

command -v uv >/dev/null 2>&1 || {
  echo "pipeline: uv is not installed; install it with 'pip install uv' (or see https://docs.astral.sh/uv/)" >&2
  exit 1
}

if [ "$DEMO" = 1 ]; then
  DEMO_DIR="${DEMO_DIR:-demo/models}"
  export HF_HUB_OFFLINE=1
  export MODEL_A="$DEMO_DIR/demo-unfiltered"
  export MODEL_FILTERED="$DEMO_DIR/demo-e2e-strong-filter"
  export MODEL_CBLAT="$DEMO_DIR/demo-unfiltered-cb-lat"
  export DATASET_SOURCE="${DATASET_SOURCE:-synthetic}"
  export DEVICE="${DEVICE:-cpu}" DTYPE="${DTYPE:-fp32}"
  export MAX_LENGTH="${MAX_LENGTH:-128}" BATCH_SIZE="${BATCH_SIZE:-16}"
  export EVAL_GENERATE="${EVAL_GENERATE:-2}"   # sampled continuations per prompt: few, on a CPU
  # a short attack sized for the miniature, on the test lines the demo twins were built around
  # (no twin was trained on them), when present
  export TAMPER_STEPS="${TAMPER_STEPS:-60}" TAMPER_EVAL_EVERY="${TAMPER_EVAL_EVERY:-10}"
  export TAMPER_LR="${TAMPER_LR:-3e-4}" TAMPER_BATCH_SIZE="${TAMPER_BATCH_SIZE:-8}"
  [ -f "$DEMO_DIR/data/forget_test.txt" ] && export TAMPER_DATA_DIR="${TAMPER_DATA_DIR:-$DEMO_DIR/data}"
  # the third-round steps, sized for the miniature on a CPU (the tools' defaults are for the real study)
  export GEOMETRY_MAX_SAMPLES="${GEOMETRY_MAX_SAMPLES:-64}" GEOMETRY_MAX_TOKENS="${GEOMETRY_MAX_TOKENS:-2048}"
  export LENS_STEPS="${LENS_STEPS:-60}" LENS_TOKENS_PER_STEP="${LENS_TOKENS_PER_STEP:-512}"
  export ABLATION_LAYERS="${ABLATION_LAYERS:-2,4,6}" ABLATION_RANKS="${ABLATION_RANKS:-1,8}"
  export ABLATION_BITS="${ABLATION_BITS:-4}" DIRECTION_SAMPLES="${DIRECTION_SAMPLES:-64}"
fi
# the demo's tiny models: one thread per tool is faster and steadier, and the two lanes of steps
# (below) fill two cores without oversubscribing them
[ "$DEMO" = 1 ] && export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
lanes="${PIPELINE_JOBS:-$([ "$DEMO" = 1 ] && echo 2 || echo 1)}"
[[ "$lanes" =~ ^[12]$ ]] || { echo "pipeline: PIPELINE_JOBS='$lanes' must be 1 or 2" >&2; exit 1; }
source ./study.sh
source ./common/skip.sh
LOG_DIR="${LOG_DIR:-$OUTPUTS_DIR/logs}"

# Every setting is checked before anything is cleaned (the allowed values are the tools' choices;
# the defaults of unset settings live in the tools).
fail() { echo "pipeline: $*" >&2; exit 1; }
one_of() {  # one_of NAME VALUE CHOICE...: an unset or empty VALUE is fine (the tool's default)
  local name="$1" value="$2"; shift 2
  [ -z "$value" ] && return 0
  for choice in "$@"; do [ "$value" = "$choice" ] && return 0; done
  fail "$name='$value' is not one of: $*"
}
whole_number() {  # whole_number NAME VALUE: unset or a positive whole number
  [ -z "$2" ] || [[ "$2" =~ ^[1-9][0-9]*$ ]] || fail "$1='$2' must be a positive whole number"
}
one_of DATASET_SOURCE "${DATASET_SOURCE:-}" hub synthetic
one_of DEVICE "${DEVICE:-}" auto cuda mps cpu
one_of DTYPE "${DTYPE:-}" auto fp32 fp16 bf16
for name in MAX_LENGTH BATCH_SIZE MAX_SAMPLES; do whole_number "$name" "${!name:-}"; done
[ -z "${SEED:-}" ] || [[ "$SEED" =~ ^[0-9]+$ ]] || fail "SEED='$SEED' must be a whole number"
[ -n "$MODEL_A" ] && [ -n "$COMPARE_WITH" ] || fail "MODEL_A and COMPARE_WITH must name models"

# The cleaning step empties OUTPUTS_DIR and PLOTS_DIR: only folders of results qualify. Refused:
# the home folder, the file system root, the checkout (or a folder above it), and any folder
# holding a .git or a file git tracks here (outputs/.gitkeep and plots/.gitkeep aside).
here="$(pwd -P)"
tracked="$(git -C "$here" ls-files 2>/dev/null || true)"
check_cleanable() {  # check_cleanable NAME DIR
  local name="$1" dir="$2" real
  [ -n "$dir" ] || fail "$name is empty"
  [ -e "$dir" ] || return 0
  [ -d "$dir" ] || fail "$name=$dir is not a folder"
  real="$(cd "$dir" && pwd -P)"
  case "$real" in /) fail "refusing to clean $name=$dir: it is the root folder" ;; esac
  [ "$real" != "$(cd ~ 2>/dev/null && pwd -P)" ] || fail "refusing to clean $name=$dir: it is the home folder"
  case "$here/" in "$real"/*) fail "refusing to clean $name=$dir: it holds this checkout" ;; esac
  [ ! -e "$real/.git" ] || fail "refusing to clean $name=$dir: it holds a .git (a repository, not results)"
  case "$real/" in "$here"/*)
    local rel="${real#"$here"}"; rel="${rel#/}/"
    if printf '%s\n' "$tracked" | awk -v p="$rel" 'index($0, p) == 1 && $0 != p ".gitkeep" {f = 1} END {exit !f}'; then
      fail "refusing to clean $name=$dir: it holds the project's own files"
    fi ;;
  esac
  if [ -z "$tracked" ]; then  # no git: look for the project's own files by name
    for own in pipeline.sh study.sh pyproject.toml unlearn.py collect_param_stats.py; do
      [ ! -e "$real/$own" ] || fail "refusing to clean $name=$dir: it holds the project's own files ($own)"
    done
  fi
}
check_cleanable OUTPUTS_DIR "$OUTPUTS_DIR"
check_cleanable PLOTS_DIR "$PLOTS_DIR"

# Offline without --demo: say so in one sentence instead of five failing steps.
if [ "$DEMO" = 0 ]; then
  # shellcheck disable=SC2086  # the model lists are space-separated
  $UV_RUN check_models.py $MODEL_A $COMPARE_WITH || exit $?
fi

step_no=0
step() {  # step NAME COMMAND... : announce, run with a log, name the failing step and its log
  local name="$1"; shift
  step_no=$((step_no + 1))
  local log="$LOG_DIR/$(printf '%02d' "$step_no")_${name// /_}.log"
  echo "==> [$step_no] $name  (log: $log)"
  local status=0
  "$@" 2>&1 | tee "$log" || status=$?
  stop_on_signal_status "$status"   # Ctrl-C / SIGTERM: stop with 130 / 143, as the tools do
  if [ "$status" != 0 ]; then
    echo "pipeline: step '$name' failed; its log is $log" >&2
    exit 1
  fi
}

# FORCE=1: clean results of earlier runs, but never an unlearned model
# (outputs/<model>__<method>/unlearned_model, outputs/<model>__<method>__seed<k>/unlearned_model).
# Without it, finished steps are kept and skipped (common/skip.sh).
force=0
env_flag FORCE || force=$?
[ "$force" != 2 ] || exit 2
if [ "$force" = 0 ]; then
  echo "==> cleaning $OUTPUTS_DIR/ and $PLOTS_DIR/ (FORCE=1; unlearned models are kept)"
  for entry in "$OUTPUTS_DIR"/* "$PLOTS_DIR"/*; do
    [ -e "$entry" ] || continue
    [ -d "$entry/unlearned_model" ] && continue
    rm -rf -- "$entry"
  done
fi
mkdir -p "$OUTPUTS_DIR" "$PLOTS_DIR" "$LOG_DIR"

# markers MODE: the file each comparison's tool writes last, for every comparison of the study
markers() {
  local sub="$1" model_b
  for model_b in $COMPARE_WITH; do
    echo "$OUTPUTS_DIR/$(comparison_name "$MODEL_A" "$model_b")/$sub"
  done
}
if [ "$DEMO" = 1 ]; then
  step "build demo models" $UV_RUN demo/build_demo.py --outdir "$DEMO_DIR"
fi
unless_done step "weight-diff stats" $(markers param_stats/per_component.csv) -- ./run_params_local.sh
step "weight-diff plots" ./plot_param_stats.sh
unless_done step "datasets" "$DATA_DIR/PROVENANCE.md" -- ./run_datasets.sh
step "sanity checks" ./run_checks.sh
# Two lanes of steps that do not read each other's results. PIPELINE_JOBS=2 (the default with
# --demo, whose steps each use one CPU thread) runs them side by side; otherwise one after the
# other (a real study's steps each fill the GPU). A failed step fails the pipeline once the other
# lane is done; the report needs both.
models_lane() {  # what the models do: activations, evaluation, the fine-tuning attack
  unless_done step "activation stats" $(markers activation_stats/activation_stats.csv) -- ./run_activations.sh
  step "activation plots" ./plot_activation_norms.sh
  # evidence of forgetting: the study's models side by side on the untouched test splits
  unless_done step "evaluation" "$OUTPUTS_DIR/eval/summary.csv" -- ./run_eval.sh
  step "evaluation plot" ./plot_unlearning_eval.sh
  # the same fine-tuning attack on every model, reference first
  unless_done step "tamper attack" "$OUTPUTS_DIR/tamper/attack_report.yaml" -- ./run_tamper.sh
  step "tamper plot" ./plot_tamper.sh
}
why_lane() {  # why it comes back: weights, representations, each layer, training-free attacks
  unless_done step "weight geometry" $(markers weight_geometry/geometry_report.yaml) -- ./run_weight_geometry.sh
  step "weight geometry plots" ./plot_weight_geometry.sh
  unless_done step "activation geometry" $(markers activation_geometry/geometry_report.yaml) -- ./run_activation_geometry.sh
  step "activation geometry plots" ./plot_activation_geometry.sh
  # what each layer still knows (tuned lenses already trained for a model are reused)
  step "layer-wise lens" ./run_lens.sh
  step "layer-wise lens plot" ./plot_lens.sh
  # training-free attacks: MODEL_A is the reference, the compared models are attacked (the demo: on
  # the test lines its twins were built around, as the tamper attack)
  unless_done step "training-free attacks" "$OUTPUTS_DIR/ablation/ablation_report.yaml" -- \
    env DATA_DIR="${TAMPER_DATA_DIR:-$DATA_DIR}" ./run_ablation.sh
  step "training-free attacks plot" ./plot_ablation.sh
}
if [ "$lanes" -ge 2 ]; then
  # the second lane runs in a process group of its own (set -m): a Ctrl-C or SIGTERM that stops
  # this script is passed on to it (stop_lane), and its tools stop as they would in the foreground
  stop_lane() {  # stop_lane SIGNAL: stop the second lane if it still runs, and wait for it
    [ -n "${why_pid:-}" ] || return 0
    kill -s "$1" -- "-$why_pid" 2>/dev/null || true
    wait "$why_pid" 2>/dev/null || true
  }
  trap 'trap - INT; stop_lane INT; echo "interrupted (Ctrl-C): ${0##*/} stopped" >&2; exit 130' INT
  trap 'trap - TERM; stop_lane TERM; echo "terminated (SIGTERM): ${0##*/} stopped" >&2; exit 143' TERM
  trap 'stop_lane TERM' EXIT
  set -m
  (on_signals; step_no=$((step_no + 6)); why_lane) &
  why_pid=$!
  set +m
  models_lane
  step_no=$((step_no + 8))
  why_status=0
  wait "$why_pid" || why_status=$?
  why_pid=
  stop_on_signal_status "$why_status"
  [ "$why_status" = 0 ] || exit 1
else
  models_lane
  why_lane
fi
step "report" ./run_report.sh

echo "==> done. Files produced:"
find "$OUTPUTS_DIR" "$PLOTS_DIR" -type f \( -name '*.csv' -o -name '*.png' \) | sort | sed 's/^/    /'
echo "==> the study's report: ${REPORT_OUT:-report/index.html} (open it in a browser)"
