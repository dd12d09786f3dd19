#!/usr/bin/env bash
# DPA-Qwen3-4B, stage 1: identical to baseline_qwen3_4b_stage1.sh except --vision_tower, the perceiver VLM.
# Set the model paths below (or export them) and the cluster settings documented in common.sh.
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-4B}"
: "${PERCEIVER:=$CHECKPOINTS/llava-qwen3-0.6b}"
stage1 "$LLM" "$PERCEIVER" "${OUTPUT:=$CHECKPOINTS/dpa-qwen3-4b-stage1}"
