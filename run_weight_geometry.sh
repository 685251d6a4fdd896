#!/usr/bin/env bash
# Weight geometry (collect_weight_geometry.py) for each comparison of the study:
# MODEL_A vs every model in COMPARE_WITH, into $OUTPUTS_DIR/<comparison>/weight_geometry/.
#
#   MODEL_A, MODEL_FILTERED, MODEL_CBLAT, COMPARE_WITH, OUTPUTS_DIR, UV_RUN   see study.sh
#   DEVICE        --device (auto|cuda|cpu)
#   SEED          --seed (recorded; nothing is drawn at random)
#   TOP_K         --top-k, k of the top-k singular subspaces
#   INTRUDER_K    --intruder-k, top left singular vectors of W_b tested for intruders
#   INTRUDER_EPS  --intruder-eps, the |cos| below which a vector is an intruder
#   COMPONENTS    --components, e.g. qkv,attn_out,mlp_in,mlp_out or all
#   LAYERS        --layers, e.g. 0-31
#   CHUNK_MB      --chunk-mb, float64 slice size
# A variable that is unset passes no flag: the defaults live in the tool
# (uv run --script collect_weight_geometry.py --help lists them).
#
# e.g.  DEVICE=cuda COMPARE_WITH=EleutherAI/deep-ignorance-unfiltered-cb-lat ./run_weight_geometry.sh
set -euo pipefail
cd "$(dirname "$0")"
source ./study.sh

ARGS=()
flag DEVICE --device
flag SEED --seed
flag TOP_K --top-k
flag INTRUDER_K --intruder-k
flag INTRUDER_EPS --intruder-eps
flag COMPONENTS --components
flag LAYERS --layers
flag CHUNK_MB --chunk-mb

for MODEL_B in $COMPARE_WITH; do
  cmp="$(comparison_name "$MODEL_A" "$MODEL_B")"
  echo "== weight geometry: $MODEL_A vs $MODEL_B -> $OUTPUTS_DIR/$cmp/weight_geometry"
  $UV_RUN collect_weight_geometry.py --model-a "$MODEL_A" --model-b "$MODEL_B" \
    --outdir "$OUTPUTS_DIR/$cmp/weight_geometry" ${ARGS[@]+"${ARGS[@]}"}
done
