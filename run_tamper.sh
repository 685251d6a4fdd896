#!/usr/bin/env bash
# The fine-tuning attack (tamper_attack.py) on every model of the study, reference first (MODEL_A,
# then each of COMPARE_WITH), into $OUTPUTS_DIR/tamper/.
#
# Data: TAMPER_DATA_DIR (default DATA_DIR): forget.txt is the attack data, forget_test.txt and
# retain_test.txt are measured, forget_mcq.jsonl is scored when it exists.
# Settings come from the environment; a variable that is not set passes no flag, so the tool's own
# default applies (the real study's attack):
#   TAMPER_STEPS (--steps)  TAMPER_EVAL_EVERY (--eval-every)  TAMPER_LR (--lr)
#   TAMPER_BATCH_SIZE (--batch-size)  TAMPER_LORA_R (--lora-r)  DEVICE  DTYPE  MAX_LENGTH  SEED
# e.g.  TAMPER_STEPS=200 TAMPER_LR=1e-5 DEVICE=cuda ./run_tamper.sh
set -euo pipefail
cd "$(dirname "$0")"
source ./study.sh
data="${TAMPER_DATA_DIR:-$DATA_DIR}"

ARGS=(--model "$MODEL_A")
for model in $COMPARE_WITH; do ARGS+=(--model "$model"); done
ARGS+=(--attack-data "$data/forget.txt" --forget-test "$data/forget_test.txt"
       --retain-test "$data/retain_test.txt" --outdir "$OUTPUTS_DIR/tamper")
[[ -f "$data/forget_mcq.jsonl" ]] && ARGS+=(--mcq-forget "$data/forget_mcq.jsonl")
flag TAMPER_STEPS --steps
flag TAMPER_EVAL_EVERY --eval-every
flag TAMPER_LR --lr
flag TAMPER_BATCH_SIZE --batch-size
flag TAMPER_LORA_R --lora-r
flag DEVICE --device
flag DTYPE --dtype
flag MAX_LENGTH --max-length
flag SEED --seed

echo "== tamper attack: $MODEL_A $COMPARE_WITH -> $OUTPUTS_DIR/tamper"
$UV_RUN tamper_attack.py "${ARGS[@]}"
