#!/usr/bin/env bash
# LLaVA-NeXT-Qwen3-4B (controlled baseline), stage 1: alignment projector on 558K captions.
# Set the model paths below (or export them) and the cluster settings documented in common.sh.
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-4B}"
stage1 "$LLM" "$VIT" "${OUTPUT:=$CHECKPOINTS/llava-next-qwen3-4b-stage1}"
