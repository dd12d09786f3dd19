#!/usr/bin/env bash
# LLaVA-NeXT-LLaMA-3.2-3B (controlled baseline), stage 2.
# Set the model paths below (or export them) and the cluster settings documented in common.sh.
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Llama-3.2-3B-Instruct}"
: "${STAGE1:=$CHECKPOINTS/llava-next-llama3.2-3b-stage1}"
stage2 "$LLM" "$VIT" "$STAGE1" "${OUTPUT:=$CHECKPOINTS/llava-next-llama3.2-3b}" llama_3
