#!/usr/bin/env bash
# Table 3: DPA-Qwen3-4B with a perceiver trained by stage 1 and by stage 2 on 1M samples (perceiver_ladder.sh makes it).
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-4B}"
: "${PERCEIVER:=$CHECKPOINTS/llava-qwen3-0.6b-1m}"
row "$PERCEIVER" "${OUTPUT:=$CHECKPOINTS/table3-stage2-1m}" qwen_3
