#!/usr/bin/env bash
# Table 4 'w/o perceiver LM blocks': the baseline pipeline on the perceiver's own (fine-tuned) ViT, extracted from the 1M perceiver.
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-4B}"
: "${PERCEIVER:=$CHECKPOINTS/llava-qwen3-0.6b-1m}"
PERCEIVER_VIT=${PERCEIVER_VIT:-$CHECKPOINTS/perceiver-1m-vit}
[ -d "$PERCEIVER_VIT" ] || llava_dpa_cli extract-vit "$PERCEIVER" --output "$PERCEIVER_VIT"
row "$PERCEIVER_VIT" "${OUTPUT:=$CHECKPOINTS/table4-wo-lm-blocks}" qwen_3
