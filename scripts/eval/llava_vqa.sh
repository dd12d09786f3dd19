#!/usr/bin/env bash
# Answer a LLaVA-format question file (jsonl: question_id, image, text) with LLaVA's own
# llava.eval.model_vqa_loader, for any checkpoint of this project (DPA or baseline). The conversation
# template comes from the checkpoint's config; set CONV_MODE to override it.
#   scripts/eval/llava_vqa.sh <checkpoint> <question.jsonl> <image folder> <answers.jsonl>
# Set MODEL_BASE for LoRA or projector-only checkpoints; TEMPERATURE (default 0), MAX_NEW_TOKENS (128).
set -euo pipefail
if [ $# -ne 4 ]; then
  echo "usage: $0 <checkpoint> <question.jsonl> <image folder> <answers.jsonl>" >&2
  exit 2
fi
args=(--model-path "$1" --question-file "$2" --image-folder "$3" --answers-file "$4"
      --temperature "${TEMPERATURE:-0}" --max_new_tokens "${MAX_NEW_TOKENS:-128}")
[ -n "${MODEL_BASE:-}" ] && args+=(--model-base "$MODEL_BASE")
[ -n "${CONV_MODE:-}" ] && args+=(--conv-mode "$CONV_MODE")
"${PYTHON:-python}" -m llava.eval.model_vqa_loader "${args[@]}"
