#!/usr/bin/env bash
# The paper's 11 benchmarks (Table 1) for one checkpoint of this project, DPA or baseline:
#   scripts/eval/run_paper_suite.sh <checkpoint> [output folder]
# then `llava-dpa report <output folder> ...` prints the Table 1 row.
#
# - 8 multimodal + MATH-500 + GPQA-Diamond: lmms-eval with this project's model (`--model llava_dpa`), the
#   template taken from the checkpoint's config, each task's own lmms-eval settings (greedy decoding, the
#   task's prompt and max_new_tokens). The paper states no other evaluation setting.
#   MathVista is `mathvista_testmini_format` (lmms-eval 0.7.3's `mathvista_testmini` is a group of three
#   prompt variants; this is its standard 0-shot format prompt).
#   MMVet and MathVista are judged by an LLM: lmms-eval reads OPENAI_API_KEY / its judge settings.
# - MMLU-Redux is not in lmms-eval: lm-evaluation-harness `mmlu_redux_generative` (zero-shot, chat template)
#   on the target's text path, which `llava-dpa export-llm` writes as a plain model first (LoRA merged).
#   Its text-path logits equal the VLM's on text (tests/test_lmms_eval.py).
# - LLM_ONLY=1: <checkpoint> is the original LLM; only the 3 text tasks run (the forgetting reference).
#
# Environment: MODEL_BASE (LoRA / projector-only checkpoints), CONV_TEMPLATE, DEVICE (cuda:0), DTYPE
# (bfloat16), BATCH_SIZE (1), NUM_PROCESSES (1; >1 runs lmms-eval under accelerate, one GPU per process),
# LIMIT (debug: N docs per task), MM_TASKS / TEXT_TASKS / REDUX_TASK (override task lists),
# SKIP_MMLU_REDUX=1, PYTHON, DRY_RUN=1 (print the commands only).
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 <checkpoint> [output folder]" >&2
  exit 2
fi
CKPT=$1
OUT=${2:-eval_results/$(basename "$CKPT")}
: "${PYTHON:=python}"
: "${DEVICE:=cuda:0}"
: "${DTYPE:=bfloat16}"
: "${BATCH_SIZE:=1}"
: "${NUM_PROCESSES:=1}"
: "${MM_TASKS:=mmvet,mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d}"
: "${TEXT_TASKS:=openai_math,gpqa_diamond_openai}"
: "${REDUX_TASK:=mmlu_redux_generative}"

run() {
  echo "+ $*"
  if [ -z "${DRY_RUN:-}" ]; then "$@"; fi
}

if [ ! -f "$CKPT/config.json" ] && [ -z "${DRY_RUN:-}" ]; then
  echo "$CKPT: no config.json; pass a checkpoint folder" >&2
  exit 2
fi

model_args="pretrained=$CKPT,dtype=$DTYPE"
[ -n "${MODEL_BASE:-}" ] && model_args+=",model_base=$MODEL_BASE"
[ -n "${CONV_TEMPLATE:-}" ] && model_args+=",conv_template=$CONV_TEMPLATE"
limit=()
[ -n "${LIMIT:-}" ] && limit=(--limit "$LIMIT")
if [ "$NUM_PROCESSES" -gt 1 ]; then
  DEVICE=cuda  # the model binds each process to its LOCAL_RANK's GPU
  lmms=("$PYTHON" -m accelerate.commands.launch --num_processes "$NUM_PROCESSES" -m lmms_eval)
else
  lmms=("$PYTHON" -m lmms_eval)
fi

tasks=$TEXT_TASKS
[ -z "${LLM_ONLY:-}" ] && tasks="$MM_TASKS,$TEXT_TASKS"
run "${lmms[@]}" --model llava_dpa --model_args "$model_args" --tasks "$tasks" --device "$DEVICE" \
    --batch_size "$BATCH_SIZE" --output_path "$OUT/lmms_eval" --log_samples "${limit[@]}"

if [ -z "${SKIP_MMLU_REDUX:-}" ]; then
  if [ -z "${DRY_RUN:-}" ] && ! "$PYTHON" -c "import lm_eval" 2>/dev/null; then
    echo "MMLU-Redux needs lm-evaluation-harness: pip install 'lm-eval>=0.4.8' (or set SKIP_MMLU_REDUX=1)" >&2
    exit 3
  fi
  text_model=$CKPT
  if [ -z "${LLM_ONLY:-}" ]; then
    text_model=$OUT/text_path
    if [ ! -f "$text_model/config.json" ]; then
      export_args=("$CKPT" "$text_model")
      [ -n "${MODEL_BASE:-}" ] && export_args+=(--model-base "$MODEL_BASE")
      run "$PYTHON" -m llava_dpa.cli export-llm "${export_args[@]}"
    fi
  fi
  # enable_thinking=False: the prompt the qwen_3 template gives in training and in lmms-eval (other
  # families' chat templates ignore it)
  run "$PYTHON" -m lm_eval --model hf --model_args "pretrained=$text_model,dtype=$DTYPE,enable_thinking=False" \
      --tasks "$REDUX_TASK" \
      --apply_chat_template --device "$DEVICE" --batch_size "$BATCH_SIZE" --output_path "$OUT/lm_eval" \
      --log_samples "${limit[@]}"
fi

run "$PYTHON" -m llava_dpa.cli report "$OUT"
