#!/usr/bin/env bash
# LLaVA-NeXT-Qwen3-32B (controlled baseline), stage 2 with QLoRA (4-bit target + LoRA), 3 epochs.
# Set the model paths below (or export them) and the cluster settings documented in common.sh.
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-32B}"
: "${STAGE1:=$CHECKPOINTS/llava-next-qwen3-32b-stage1}"
stage2_qlora "$LLM" "$VIT" "$STAGE1" "${OUTPUT:=$CHECKPOINTS/llava-next-qwen3-32b-qlora}" qwen_3
