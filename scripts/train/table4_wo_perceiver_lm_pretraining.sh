#!/usr/bin/env bash
# Table 4 'w/o perceiver LM pre-training': an untrained perceiver whose LM blocks are re-initialised (same architecture).
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-4B}"
: "${PERCEIVER_LM:=/path/to/Qwen3-0.6B}" "${SEED:=0}"
PERCEIVER=${PERCEIVER:-$CHECKPOINTS/perceiver-random-lm}
[ -d "$PERCEIVER" ] || llava_dpa_cli make-perceiver --vision "$VIT" --language-model "$PERCEIVER_LM" --random-lm-init --seed "$SEED" --output "$PERCEIVER"
row "$PERCEIVER" "${OUTPUT:=$CHECKPOINTS/table4-wo-lm-pretraining}" qwen_3
