#!/usr/bin/env bash
# Table 3: DPA-Qwen3-4B with a perceiver trained by stage 1 only (perceiver_ladder.sh makes it).
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-4B}"
: "${PERCEIVER:=$CHECKPOINTS/perceiver-stage1-only}"
row "$PERCEIVER" "${OUTPUT:=$CHECKPOINTS/table3-stage1}" qwen_3
