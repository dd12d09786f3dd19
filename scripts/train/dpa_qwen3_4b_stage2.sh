#!/usr/bin/env bash
# DPA-Qwen3-4B, stage 2: identical to baseline_qwen3_4b_stage2.sh except --vision_tower. The whole perceiver trains: its ViT at --mm_vision_tower_lr (2e-6), its projector and LM blocks at --perceiver_lr (default: the LLM's 1e-5).
# Set the model paths below (or export them) and the cluster settings documented in common.sh.
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-4B}"
: "${PERCEIVER:=$CHECKPOINTS/llava-qwen3-0.6b}"
: "${STAGE1:=$CHECKPOINTS/dpa-qwen3-4b-stage1}"
if [ -n "${PERCEIVER_LR:-}" ]; then EXTRA=(--perceiver_lr "$PERCEIVER_LR" "${EXTRA[@]}"); fi
stage2 "$LLM" "$PERCEIVER" "$STAGE1" "${OUTPUT:=$CHECKPOINTS/dpa-qwen3-4b}" qwen_3
