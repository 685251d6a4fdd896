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
# Every setting of the steps can be overridden from the environment (see study.sh and each
# run_*.sh); LOG_DIR (default outputs/logs) holds one log per step.
set -euo pipefail
cd "$(dirname "$0")"

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
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
  for model in $MODEL_A $COMPARE_WITH; do
    [ -d "$model" ] && continue
    if ! uv run --quiet --no-project --with huggingface_hub python - "$model" >/dev/null 2>&1 <<'PY'
import sys
from huggingface_hub import HfApi, try_to_load_from_cache
repo = sys.argv[1]
cached = try_to_load_from_cache(repo, "config.json")
if not isinstance(cached, str):
    HfApi().model_info(repo, timeout=10)   # raises when the hub cannot be reached
PY
    then
      echo "pipeline: cannot reach the Hugging Face hub and '$model' is not in the local cache; run './pipeline.sh --demo' for the offline demo, or point MODEL_A/MODEL_FILTERED/MODEL_CBLAT at local directories." >&2
      exit 1
    fi
  done
fi

step_no=0
step() {  # step NAME COMMAND... : announce, run with a log, name the failing step and its log
  local name="$1"; shift
  step_no=$((step_no + 1))
  local log="$LOG_DIR/$(printf '%02d' "$step_no")_${name// /_}.log"
  echo "==> [$step_no] $name  (log: $log)"
  if ! "$@" 2>&1 | tee "$log"; then
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
step "datasets" $UV_RUN create_datasets.py ${DATASET_SOURCE:+--source "$DATASET_SOURCE"} --outdir "$DATA_DIR" \
  ${SEED:+--seed "$SEED"}
step "sanity checks" $UV_RUN check_experiment.py --forget-data "$DATA_DIR/forget.txt" \
  --retain-data "$DATA_DIR/retain.txt" --model "$MODEL_A"   # (it reads MAX_LENGTH, DEVICE, DTYPE itself)
step "activation stats" ./run_activations.sh
step "activation plots" ./plot_activation_norms.sh
# evidence of forgetting: the study's models side by side on the untouched test splits
EVAL_ARGS=(--model "$MODEL_A")
for model in $COMPARE_WITH; do EVAL_ARGS+=(--model "$model"); done
for set in forget retain; do
  [ -f "$DATA_DIR/${set}_mcq.jsonl" ] && EVAL_ARGS+=("--mcq-$set" "$DATA_DIR/${set}_mcq.jsonl") || EVAL_ARGS+=("--mcq-$set" "")
done
step "evaluation" $UV_RUN evaluate_unlearning.py "${EVAL_ARGS[@]}" --outdir "$OUTPUTS_DIR/eval" \
  --forget-test "$DATA_DIR/forget_test.txt" --retain-test "$DATA_DIR/retain_test.txt" --forget-train "$DATA_DIR/forget.txt" \
  ${DEVICE:+--device "$DEVICE"} ${DTYPE:+--dtype "$DTYPE"} ${BATCH_SIZE:+--batch-size "$BATCH_SIZE"} \
  ${MAX_LENGTH:+--max-length "$MAX_LENGTH"} ${EVAL_FEW_SHOT:+--few-shot "$EVAL_FEW_SHOT"} \
  ${EVAL_GENERATE:+--generate "$EVAL_GENERATE"} ${LM_EVAL_TASKS:+--lm-eval-tasks "$LM_EVAL_TASKS"}
step "evaluation plot" $UV_RUN plot_unlearning_eval.py --indir "$OUTPUTS_DIR/eval" \
  --out "$PLOTS_DIR/eval/forgetting_summary.png"

# Fine-tuning attack on the study's models, reference first (tamper_attack.py), and its figure.
# TAMPER_STEPS, TAMPER_EVAL_EVERY, TAMPER_LR, TAMPER_BATCH_SIZE, TAMPER_LORA_R override the tool's
# defaults (the real study's); the demo's miniature gets a short attack sized for it, one thread.
# Demo: the test lines the demo twins were built around (no twin trained on them), when present.
tamper_data="$DATA_DIR"
[ "$DEMO" = 1 ] && [ -f "$DEMO_DIR/data/forget_test.txt" ] && tamper_data="$DEMO_DIR/data"
tamper=(--model "$MODEL_A")
for model in $COMPARE_WITH; do tamper+=(--model "$model"); done
tamper+=(--attack-data "$tamper_data/forget.txt" --forget-test "$tamper_data/forget_test.txt"
         --retain-test "$tamper_data/retain_test.txt" --outdir "$OUTPUTS_DIR/tamper")
[ -f "$tamper_data/forget_mcq.jsonl" ] && tamper+=(--mcq-forget "$tamper_data/forget_mcq.jsonl")
if [ "$DEMO" = 1 ]; then
  : "${TAMPER_STEPS:=60}" "${TAMPER_EVAL_EVERY:=10}" "${TAMPER_LR:=3e-4}" "${TAMPER_BATCH_SIZE:=8}"
  tamper=(env OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" $UV_RUN tamper_attack.py "${tamper[@]}")
else
  tamper=($UV_RUN tamper_attack.py "${tamper[@]}")
fi
for pair in STEPS:steps EVAL_EVERY:eval-every LR:lr BATCH_SIZE:batch-size LORA_R:lora-r; do
  var="TAMPER_${pair%%:*}"
  [ -n "${!var:-}" ] && tamper+=("--${pair#*:}" "${!var}")
done
for pair in DEVICE:device DTYPE:dtype MAX_LENGTH:max-length SEED:seed; do
  var="${pair%%:*}"
  [ -n "${!var:-}" ] && tamper+=("--${pair#*:}" "${!var}")
done
step "tamper attack" "${tamper[@]}"
step "tamper plot" $UV_RUN plot_tamper.py --indir "$OUTPUTS_DIR/tamper" --outdir "$PLOTS_DIR/tamper"

echo "==> done. Files produced:"
find "$OUTPUTS_DIR" "$PLOTS_DIR" -type f \( -name '*.csv' -o -name '*.png' \) | sort | sed 's/^/    /'
