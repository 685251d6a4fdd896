#!/usr/bin/env bash
# The whole study, end to end:
#   clean outputs/ and plots/ -> weight-diff stats -> their plots -> forget/retain data
#   -> sanity checks (check_experiment.py) -> activation stats -> their plots
#   -> evaluation of every model (evaluate_unlearning.py) -> its plot
#   -> the same fine-tuning attack on every model (tamper_attack.py) -> its plot,
#   then a list of every CSV and PNG produced.
#
#   ./pipeline.sh          the reference study on the EleutherAI deep-ignorance models (GPU, hub)
#   ./pipeline.sh --demo   the embedded miniature: builds (or reuses) the tiny demo model family
#                          under demo/models and runs the same steps on it, offline, on a CPU
#
# Every step is a wrapper (run_*.sh, plot_*.sh) whose settings come from the environment (see
# study.sh and each wrapper); LOG_DIR (default outputs/logs) holds one log per step. Ctrl-C or
# SIGTERM stops the pipeline with 130 / 143 after the running tool has cleaned up.
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
fi
source ./study.sh
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

# Clean results of earlier runs, but never an unlearned model (outputs/<model>__<method>/unlearned_model,
# outputs/<model>__<method>__seed<k>/unlearned_model).
echo "==> cleaning $OUTPUTS_DIR/ and $PLOTS_DIR/ (unlearned models are kept)"
for entry in "$OUTPUTS_DIR"/* "$PLOTS_DIR"/*; do
  [ -e "$entry" ] || continue
  [ -d "$entry/unlearned_model" ] && continue
  rm -rf -- "$entry"
done
mkdir -p "$OUTPUTS_DIR" "$PLOTS_DIR" "$LOG_DIR"

if [ "$DEMO" = 1 ]; then
  step "build demo models" $UV_RUN demo/build_demo.py --outdir "$DEMO_DIR"
fi
step "weight-diff stats" ./run_params_local.sh
step "weight-diff plots" ./plot_param_stats.sh
step "datasets" ./run_datasets.sh
step "sanity checks" ./run_checks.sh
step "activation stats" ./run_activations.sh
step "activation plots" ./plot_activation_norms.sh
# evidence of forgetting: the study's models side by side on the untouched test splits
step "evaluation" ./run_eval.sh
step "evaluation plot" ./plot_unlearning_eval.sh
# the same fine-tuning attack on every model, reference first (the demo's is sized for it, one thread)
if [ "$DEMO" = 1 ]; then
  step "tamper attack" env OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" ./run_tamper.sh
else
  step "tamper attack" ./run_tamper.sh
fi
step "tamper plot" ./plot_tamper.sh

echo "==> done. Files produced:"
find "$OUTPUTS_DIR" "$PLOTS_DIR" -type f \( -name '*.csv' -o -name '*.png' \) | sort | sed 's/^/    /'
