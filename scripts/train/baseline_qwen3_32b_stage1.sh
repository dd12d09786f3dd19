#!/usr/bin/env bash
# LLaVA-NeXT-Qwen3-32B (controlled baseline), stage 1 (the frozen 32B target in bf16; ZeRO-3 recommended: DEEPSPEED_CONFIG=scripts/deepspeed/zero3.json).
# Set the model paths below (or export them) and the cluster settings documented in common.sh.
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-32B}"
stage1 "$LLM" "$VIT" "${OUTPUT:=$CHECKPOINTS/llava-next-qwen3-32b-stage1}"
