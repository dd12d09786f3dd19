#!/usr/bin/env bash
# DPA-Llama-3.2-3B, stage 2: identical to baseline_llama3_2_3b_stage2.sh except --vision_tower. The whole perceiver trains: its ViT at --mm_vision_tower_lr (2e-6), its projector and LM blocks at --perceiver_lr (default: the LLM's 1e-5).
# Set the model paths below (or export them) and the cluster settings documented in common.sh.
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Llama-3.2-3B-Instruct}"
: "${PERCEIVER:=$CHECKPOINTS/llava-qwen3-0.6b}"
: "${STAGE1:=$CHECKPOINTS/dpa-llama3.2-3b-stage1}"
if [ -n "${PERCEIVER_LR:-}" ]; then EXTRA=(--perceiver_lr "$PERCEIVER_LR" "${EXTRA[@]}"); fi
stage2 "$LLM" "$PERCEIVER" "$STAGE1" "${OUTPUT:=$CHECKPOINTS/dpa-llama3.2-3b}" llama_3
