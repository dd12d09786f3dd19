#!/usr/bin/env bash
# LLaVA-NeXT-Qwen3-4B (controlled baseline), stage 2: full fine-tuning on 1M instructions.
# Set the model paths below (or export them) and the cluster settings documented in common.sh.
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-4B}"
: "${STAGE1:=$CHECKPOINTS/llava-next-qwen3-4b-stage1}"
stage2 "$LLM" "$VIT" "$STAGE1" "${OUTPUT:=$CHECKPOINTS/llava-next-qwen3-4b}" qwen_3
