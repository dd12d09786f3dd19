#!/usr/bin/env bash
# Table 4 'w/ instruction context': the perceiver reads the question before the image (training and inference).
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-4B}"
: "${PERCEIVER:=$CHECKPOINTS/llava-qwen3-0.6b-1m}"
row "$PERCEIVER" "${OUTPUT:=$CHECKPOINTS/table4-instruction-context}" qwen_3 --perceiver_instruction_context True
