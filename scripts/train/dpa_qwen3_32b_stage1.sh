#!/usr/bin/env bash
# DPA-Qwen3-32B, stage 1 (ZeRO-3 recommended for the frozen 32B target).
# Set the model paths below (or export them) and the cluster settings documented in common.sh.
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-32B}"
: "${PERCEIVER:=$CHECKPOINTS/llava-qwen3-0.6b}"
stage1 "$LLM" "$PERCEIVER" "${OUTPUT:=$CHECKPOINTS/dpa-qwen3-32b-stage1}"
