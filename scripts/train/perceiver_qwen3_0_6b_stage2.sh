#!/usr/bin/env bash
# The perceiver VLM, LLaVA-Qwen3-0.6B, stage 2. Its output folder is the --vision_tower of every DPA recipe.
# Set the model paths below (or export them) and the cluster settings documented in common.sh.
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-0.6B}"
: "${STAGE1:=$CHECKPOINTS/llava-qwen3-0.6b-stage1}"
stage2 "$LLM" "$VIT" "$STAGE1" "${OUTPUT:=$CHECKPOINTS/llava-qwen3-0.6b}" qwen_3
