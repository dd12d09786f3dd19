#!/usr/bin/env bash
# Table 4 'LLaVA-NeXT-Qwen3-4B': the controlled baseline (the ViT as tower).
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-4B}"
row "$VIT" "${OUTPUT:=$CHECKPOINTS/table4-baseline}" qwen_3
