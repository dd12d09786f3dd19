#!/usr/bin/env bash
# Table 4 'w/ large MLP': the baseline with an alignment MLP as large as Qwen3-0.6B (596,049,920 parameters). VIT_WIDTH / LLM_WIDTH are the ViT's output width and the target's hidden size; LARGE_MLP_DEPTH fixes the depth and the width is solved for the budget.
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-4B}"
: "${VIT_WIDTH:=2048}" "${LLM_WIDTH:=2560}" "${LARGE_MLP_DEPTH:=5}" "${LARGE_MLP_BUDGET:=596049920}"
read -r -a MLP_FLAGS <<< "$(llava_dpa_cli projector-budget --in "$VIT_WIDTH" --out "$LLM_WIDTH" --budget "$LARGE_MLP_BUDGET" --depth "$LARGE_MLP_DEPTH" | sed -n "s/^flags: //p")"
row "$VIT" "${OUTPUT:=$CHECKPOINTS/table4-large-mlp}" qwen_3 "${MLP_FLAGS[@]}"
