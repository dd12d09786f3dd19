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
# - PROTOCOL=official: the official release's generation settings instead of each task's own
#   (docs/evaluation_and_analysis.md, "The official protocol", cites each one's file and line):
#   multimodal: sampling at temperature 0.01, top-p 0.9, no top-k, at most 4,096 new tokens; MMVet judged
#   by MMVET_JUDGE_MODEL (gpt-4-1106-preview, the release's "gpt-4-turbo"), the other judged task by
#   JUDGE_MODEL (gpt-4o), so MMVet runs in an lmms-eval process of its own (lmms-eval reads its judge from
#   MODEL_VERSION once per process). Text (non-thinking): temperature 0.7, top-p 0.8, top-k 20, presence
#   penalty 1.5, up to 32,768 new tokens; lm-evaluation-harness's hf model has no presence penalty, its vllm
#   model has (REDUX_BACKEND=vllm). The empty think block after the prompt is the qwen_3 template's own.
#   The multimodal runs give the target the release's system prompt "You are a helpful assistant."
#   (model_arg system_prompt; the text runs, like the release's OpenCompass ones, have none). Not applied:
#   its per-dataset prompts and GPT answer extraction (the tasks are lmms-eval's).
#
# Environment: MODEL_BASE (LoRA / projector-only checkpoints), CONV_TEMPLATE, DEVICE (cuda:0), DTYPE
# (bfloat16), BATCH_SIZE (1), NUM_PROCESSES (1; >1 runs lmms-eval under accelerate, one GPU per process),
# LIMIT (debug: N docs per task), MM_TASKS / TEXT_TASKS / REDUX_TASK (override task lists),
# SKIP_MMLU_REDUX=1, REDUX_BACKEND (hf; or vllm), PROTOCOL (default; or official), JUDGE_MODEL /
# MMVET_JUDGE_MODEL (official only), PYTHON, DRY_RUN=1 (print the commands only).
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
: "${REDUX_BACKEND:=hf}"
: "${PROTOCOL:=default}"
case "$PROTOCOL" in
  default | official) ;;
  *) echo "PROTOCOL=$PROTOCOL: choose default (each task's own settings) or official (the release's)" >&2; exit 2 ;;
esac
case "$REDUX_BACKEND" in
  hf | vllm) ;;
  *) echo "REDUX_BACKEND=$REDUX_BACKEND: choose hf or vllm" >&2; exit 2 ;;
esac
# PROTOCOL=official (the release: THUMAI-Lab/Deep-Pre-Alignment @1faf467). Multimodal: in EVAL =
# Multimodal_eval/vlmevalkit/vlmeval/vlm/duplex_pts2_forward_vllm_prefix_custom_llava.py, line 152:
# SamplingParams(temperature=Temperature (0.01, line 34), top_p=0.9, max_tokens=4096), which leaves
# vLLM's top-k off (top_k=0 here turns off the checkpoint's generation_config top_k).
OFFICIAL_MM_GEN="do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096"
# Text: opencompass/opencompass/configs/mb_internal/models/qwen/vllm_qwen3_nothink_sft_reproduce.py lines
# 11-20 (max_out_len 32768; temperature 0.7, top_p 0.8, top_k 20, presence_penalty 1.5; enable_thinking False),
# the infer_type of ms-swift/scripts/eval_DPA_text.sh line 39.
OFFICIAL_TEXT_SAMPLING="do_sample=True,temperature=0.7,top_p=0.8,top_k=20"
# The target's system turn: EVAL line 41 (SYSTEM_PROMPT), line 127. The perceiver's is the checkpoint's own
# (a Qwen-VL perceiver records --perceiver_system_prompt when it is built). lmms-eval splits model_args at
# commas only, so the spaces and the period reach the model as written.
OFFICIAL_SYSTEM_PROMPT="You are a helpful assistant."
# Judges: Multimodal_eval/auto_evaluator.py line 258 ("gpt-4o", "gpt-4-turbo" for MMVet), which
# vlmeval/dataset/utils/judge_util.py maps to gpt-4o (line 26) and gpt-4-1106-preview (line 15).
: "${JUDGE_MODEL:=gpt-4o}"
: "${MMVET_JUDGE_MODEL:=gpt-4-1106-preview}"

# run COMMAND...: print it (words with spaces or other shell characters single-quoted, so the line can be
# pasted back), then run it unless DRY_RUN
run() {
  local line="+" word
  for word in "$@"; do
    if [ -n "$word" ] && [[ $word != *[!A-Za-z0-9_./,=:+@%-]* ]]; then
      line+=" $word"
    else
      line+=" '${word//\'/\'\\\'\'}'"
    fi
  done
  echo "$line"
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

# run_lmms TASKS OUTPUT [GEN_KWARGS [JUDGE [MODEL_ARGS]]]: one lmms-eval process (JUDGE: its MODEL_VERSION;
# MODEL_ARGS: added to the model's)
run_lmms() {
  local gen=() judge=() args=$model_args
  [ -n "${3:-}" ] && gen=(--gen_kwargs "$3")
  [ -n "${4:-}" ] && judge=(env "MODEL_VERSION=$4")
  [ -n "${5:-}" ] && args+=",$5"
  run "${judge[@]}" "${lmms[@]}" --model llava_dpa --model_args "$args" --tasks "$1" --device "$DEVICE" \
      --batch_size "$BATCH_SIZE" --output_path "$2" --log_samples "${gen[@]}" "${limit[@]}"
}

if [ "$PROTOCOL" = default ]; then
  tasks=$TEXT_TASKS
  [ -z "${LLM_ONLY:-}" ] && tasks="$MM_TASKS,$TEXT_TASKS"
  run_lmms "$tasks" "$OUT/lmms_eval"
else
  if [ -z "${LLM_ONLY:-}" ]; then
    mm_judged=() mmvet=()
    IFS=, read -r -a mm_list <<< "$MM_TASKS"
    for task in "${mm_list[@]}"; do
      if [ "$task" = mmvet ]; then mmvet=(mmvet); else mm_judged+=("$task"); fi
    done
    if [ ${#mm_judged[@]} -gt 0 ]; then
      run_lmms "$(IFS=,; echo "${mm_judged[*]}")" "$OUT/lmms_eval/multimodal" "$OFFICIAL_MM_GEN" "$JUDGE_MODEL" \
          "system_prompt=$OFFICIAL_SYSTEM_PROMPT"
    fi
    if [ ${#mmvet[@]} -gt 0 ]; then
      run_lmms mmvet "$OUT/lmms_eval/mmvet" "$OFFICIAL_MM_GEN" "$MMVET_JUDGE_MODEL" \
          "system_prompt=$OFFICIAL_SYSTEM_PROMPT"
    fi
  fi
  run_lmms "$TEXT_TASKS" "$OUT/lmms_eval/text" "$OFFICIAL_TEXT_SAMPLING,presence_penalty=1.5,max_new_tokens=32768"
fi

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
  redux_gen=()
  if [ "$PROTOCOL" = official ]; then
    # lm-evaluation-harness names the output length max_gen_toks; its hf model takes no presence penalty
    redux_settings="$OFFICIAL_TEXT_SAMPLING,max_gen_toks=32768"
    if [ "$REDUX_BACKEND" = vllm ]; then redux_settings+=",presence_penalty=1.5"; fi
    redux_gen=(--gen_kwargs "$redux_settings")
  fi
  run "$PYTHON" -m lm_eval --model "$REDUX_BACKEND" \
      --model_args "pretrained=$text_model,dtype=$DTYPE,enable_thinking=False" --tasks "$REDUX_TASK" \
      --apply_chat_template --device "$DEVICE" --batch_size "$BATCH_SIZE" --output_path "$OUT/lm_eval" \
      --log_samples "${redux_gen[@]}" "${limit[@]}"
fi

run "$PYTHON" -m llava_dpa.cli report "$OUT"
