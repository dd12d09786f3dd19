#!/usr/bin/env bash
# Table 4 'w/ untrained perceiver + multi-task': the perceiver's own LM loss added in stage 2 (as the paper reports). The paper gives no weight; AUX_WEIGHT defaults to 1.0.
source "$(dirname "$0")/common.sh"
: "${LLM:=/path/to/Qwen3-4B}"
: "${PERCEIVER:=$CHECKPOINTS/perceiver-untrained}" "${AUX_WEIGHT:=1.0}"
row "$PERCEIVER" "${OUTPUT:=$CHECKPOINTS/table4-untrained-multitask}" qwen_3 --perceiver_aux_loss_weight "$AUX_WEIGHT" --perceiver_aux_loss_stages 2
