#!/usr/bin/env bash
# The perceiver VLM, LLaVA-Qwen3-0.6B, stage 1: the baseline pipeline run on Qwen3-0.6B (same ViT, data and hyperparameters).
# Set the model paths below (or export them) and the cluster settings documented in common.sh.
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-0.6B}"
stage1 "$LLM" "$VIT" "${OUTPUT:=$CHECKPOINTS/llava-qwen3-0.6b-stage1}"
