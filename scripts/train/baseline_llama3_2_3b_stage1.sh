#!/usr/bin/env bash
# LLaVA-NeXT-LLaMA-3.2-3B (controlled baseline), stage 1.
# Set the model paths below (or export them) and the cluster settings documented in common.sh.
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Llama-3.2-3B-Instruct}"
stage1 "$LLM" "$VIT" "${OUTPUT:=$CHECKPOINTS/llava-next-llama3.2-3b-stage1}"
