#!/usr/bin/env bash
# Table 3 / Table 4 'w/ untrained perceiver': DPA-Qwen3-4B with an untrained perceiver (pretrained ViT and LM, random projector; make it with perceiver_ladder.sh or llava-dpa make-perceiver).
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-4B}"
: "${PERCEIVER:=$CHECKPOINTS/perceiver-untrained}"
row "$PERCEIVER" "${OUTPUT:=$CHECKPOINTS/table3-untrained}" qwen_3
