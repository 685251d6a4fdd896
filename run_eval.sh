#!/usr/bin/env bash
# Evidence of forgetting (evaluate_unlearning.py): every model of the study (MODEL_A, then each of
# COMPARE_WITH) on the untouched test splits of DATA_DIR, into $OUTPUTS_DIR/eval/.
#
# Settings come from the environment (besides study.sh's MODEL_A, COMPARE_WITH, OUTPUTS_DIR,
# DATA_DIR, UV_RUN); a variable that is not set passes no flag, so the tool's own default applies:
#   DEVICE  DTYPE  BATCH_SIZE  MAX_LENGTH  SEED
#   EVAL_FEW_SHOT (--few-shot)  EVAL_GENERATE (--generate)  LM_EVAL_TASKS (--lm-eval-tasks)
#   DEVICE_MAP (auto: layers over GPUs, CPU, disk)  MAX_MEMORY (e.g. 0=20GiB,cpu=60GiB)  OFFLOAD_FOLDER
# The multiple-choice sets DATA_DIR/forget_mcq.jsonl and retain_mcq.jsonl are used when they exist.
# e.g.  DEVICE=cuda LM_EVAL_TASKS=wmdp_bio ./run_eval.sh
set -euo pipefail
cd "$(dirname "$0")"
source ./study.sh

ARGS=(--model "$MODEL_A")
for model in $COMPARE_WITH; do ARGS+=(--model "$model"); done
for set in forget retain; do
  if [[ -f "$DATA_DIR/${set}_mcq.jsonl" ]]; then
    ARGS+=("--mcq-$set" "$DATA_DIR/${set}_mcq.jsonl")
  else
    ARGS+=("--mcq-$set" "")
  fi
done
ARGS+=(--outdir "$OUTPUTS_DIR/eval" --forget-test "$DATA_DIR/forget_test.txt"
       --retain-test "$DATA_DIR/retain_test.txt" --forget-train "$DATA_DIR/forget.txt")
flag DEVICE --device
flag DTYPE --dtype
flag BATCH_SIZE --batch-size
flag MAX_LENGTH --max-length
flag SEED --seed
flag EVAL_FEW_SHOT --few-shot
flag EVAL_GENERATE --generate
flag LM_EVAL_TASKS --lm-eval-tasks
flag DEVICE_MAP --device-map
flag MAX_MEMORY --max-memory
flag OFFLOAD_FOLDER --offload-folder

echo "== evaluation: $MODEL_A $COMPARE_WITH -> $OUTPUTS_DIR/eval"
$UV_RUN evaluate_unlearning.py "${ARGS[@]}"
