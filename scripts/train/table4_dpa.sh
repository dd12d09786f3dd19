#!/usr/bin/env bash
# Table 4 'DPA-Qwen3-4B': the default DPA model, with the 1M-sample perceiver.
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-4B}"
: "${PERCEIVER:=$CHECKPOINTS/llava-qwen3-0.6b-1m}"
row "$PERCEIVER" "${OUTPUT:=$CHECKPOINTS/table4-dpa}" qwen_3
