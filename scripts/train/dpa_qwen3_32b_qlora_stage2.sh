#!/usr/bin/env bash
# DPA-Qwen3-32B, stage 2 with QLoRA on the target (3 epochs). The perceiver is excluded from LoRA and trains in full: its ViT at 4e-5, its projector and LM blocks at the LoRA learning rate (2e-4) unless PERCEIVER_LR is set; it is saved in non_lora_trainables.bin.
# Set the model paths below (or export them) and the cluster settings documented in common.sh.
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-32B}"
: "${PERCEIVER:=$CHECKPOINTS/llava-qwen3-0.6b}"
: "${STAGE1:=$CHECKPOINTS/dpa-qwen3-32b-stage1}"
if [ -n "${PERCEIVER_LR:-}" ]; then EXTRA=(--perceiver_lr "$PERCEIVER_LR" "${EXTRA[@]}"); fi
stage2_qlora "$LLM" "$PERCEIVER" "$STAGE1" "${OUTPUT:=$CHECKPOINTS/dpa-qwen3-32b-qlora}" qwen_3
