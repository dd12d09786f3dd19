#!/usr/bin/env bash
# Table 4 'w/ perceiver frozen': the perceiver stays frozen in stage 2.
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-4B}"
: "${PERCEIVER:=$CHECKPOINTS/llava-qwen3-0.6b-1m}"
row "$PERCEIVER" "${OUTPUT:=$CHECKPOINTS/table4-perceiver-frozen}" qwen_3 --freeze_perceiver True
