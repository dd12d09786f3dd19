#!/usr/bin/env bash
# DPA-Llama-3.2-3B, stage 1: identical to baseline_llama3_2_3b_stage1.sh except --vision_tower, the perceiver VLM.
# Set the model paths below (or export them) and the cluster settings documented in common.sh.
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Llama-3.2-3B-Instruct}"
: "${PERCEIVER:=$CHECKPOINTS/llava-qwen3-0.6b}"
stage1 "$LLM" "$PERCEIVER" "${OUTPUT:=$CHECKPOINTS/dpa-llama3.2-3b-stage1}"
