#!/usr/bin/env bash
# Table 4 'w/ untrained perceiver' (= Table 3's first row).
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-4B}"
: "${PERCEIVER:=$CHECKPOINTS/perceiver-untrained}"
row "$PERCEIVER" "${OUTPUT:=$CHECKPOINTS/table4-untrained}" qwen_3
