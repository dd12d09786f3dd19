# Sourced by every recipe in scripts/train/. Paths come from environment variables; the defaults are the
# paper's hyperparameters (section 3.1 and Appendix A, Table 6).
#
# Per cluster, set:
#   LAUNCHER          deepspeed (default) | torchrun | python
#   NUM_GPUS          GPUs per node (default 8); PER_DEVICE_BATCH (default 8, the paper's); gradient
#                     accumulation is derived so that the global batch is 512 (stage 1) / 256 (stage 2)
#   DEEPSPEED_CONFIG  scripts/deepspeed/zero2.json (default), zero3.json or zero3_offload.json
#   PRECISION_ARGS    "--bf16 True --tf32 True" (default; on CPU set it to "")
#   VIT               the Qwen2.5-VL vision encoder folder (the paper's controlled-baseline ViT)
#   STAGE1_DATA / STAGE1_IMAGES   558K LLaVA-Pretrain captions and their image folder
#   STAGE2_DATA / STAGE2_IMAGES   1M visual instruction samples (MAmmoTH-VL) and their image folder
#   CHECKPOINTS       where outputs go (default ./checkpoints)
#   EXTRA_ARGS        appended last (later flags win), e.g. "--max_steps 10 --report_to wandb"
set -euo pipefail

RECIPES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$RECIPES_DIR/../.." && pwd)

: "${PYTHON:=python}"
: "${LAUNCHER:=deepspeed}"
: "${NUM_GPUS:=8}"
: "${PER_DEVICE_BATCH:=8}"
: "${DEEPSPEED_CONFIG:=$REPO/scripts/deepspeed/zero2.json}"
: "${PRECISION_ARGS:=--bf16 True --tf32 True}"
: "${VIT:=/path/to/Qwen2.5-VL-vit}"
: "${ANYRES_PINPOINTS:=[(448, 896), (896, 448), (896, 896), (448, 1344), (1344, 448)]}"
: "${STAGE1_DATA:=/path/to/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}"
: "${STAGE1_IMAGES:=/path/to/LLaVA-Pretrain/images}"
: "${STAGE2_DATA:=/path/to/MAmmoTH-VL-Instruct-1M.json}"
: "${STAGE2_IMAGES:=/path/to/MAmmoTH-VL-Instruct-1M/images}"
: "${CHECKPOINTS:=$REPO/checkpoints}"
: "${MODEL_MAX_LENGTH:=16384}"
# The paper uses warmup-stable-decay in stage 1 but gives no decay length: 10% of ~2,180 steps.
: "${WSD_DECAY_STEPS:=218}"
: "${EXTRA_ARGS:=}"
eval "EXTRA=($EXTRA_ARGS)"

grad_accum() {  # global batch -> gradient accumulation steps
  local steps=$(( $1 / (NUM_GPUS * PER_DEVICE_BATCH) ))
  echo $(( steps > 0 ? steps : 1 ))
}

launch() {
  case "$LAUNCHER" in
    deepspeed) deepspeed --num_gpus "$NUM_GPUS" --module llava.train.train_mem --deepspeed "$DEEPSPEED_CONFIG" "$@" ;;
    torchrun) torchrun --nproc_per_node "$NUM_GPUS" -m llava.train.train_mem "$@" ;;
    python) "$PYTHON" -m llava.train.train_mem "$@" ;;
    *) echo "unknown LAUNCHER=$LAUNCHER (deepspeed, torchrun or python)" >&2; return 2 ;;
  esac
}


stage1() {  # $1 LLM  $2 vision tower (ViT or perceiver)  $3 output dir
  launch --model_name_or_path "$1" --vision_tower "$2" --output_dir "$3" \
    --version plain --data_path "$STAGE1_DATA" --image_folder "$STAGE1_IMAGES" \
    --mm_vision_select_layer -1 --mm_projector_type mlp2x_gelu \
    --mm_use_im_start_end False --mm_use_im_patch_token False \
    --image_aspect_ratio anyres --image_grid_pinpoints "$ANYRES_PINPOINTS" --mm_patch_merge_type spatial_unpad \
    --tune_mm_mlp_adapter True \
    --num_train_epochs 2 --per_device_train_batch_size "$PER_DEVICE_BATCH" --gradient_accumulation_steps "$(grad_accum 512)" \
    --learning_rate 1e-3 --lr_scheduler_type warmup_stable_decay --lr_scheduler_kwargs "{\"num_decay_steps\": $WSD_DECAY_STEPS}" \
    --warmup_steps 440 --weight_decay 0.01 \
    --model_max_length "$MODEL_MAX_LENGTH" --gradient_checkpointing True --dataloader_num_workers 4 --lazy_preprocess True \
    --save_strategy steps --save_steps 500 --save_total_limit 2 --logging_steps 10 --report_to none \
    $PRECISION_ARGS "${EXTRA[@]}"
}

# Stage 2 arguments shared by the full and the QLoRA recipes.
stage2_with() {  # $1 LLM  $2 vision tower  $3 stage-1 output  $4 output dir  $5 template, then the recipe's flags
  local llm=$1 tower=$2 stage1_dir=$3 out=$4 conv=$5
  shift 5
  launch --model_name_or_path "$llm" --vision_tower "$tower" --output_dir "$out" \
    --version "$conv" --data_path "$STAGE2_DATA" --image_folder "$STAGE2_IMAGES" \
    --pretrain_mm_mlp_adapter "$stage1_dir/mm_projector.bin" \
    --mm_vision_select_layer -1 --mm_projector_type mlp2x_gelu \
    --mm_use_im_start_end False --mm_use_im_patch_token False \
    --image_aspect_ratio anyres --image_grid_pinpoints "$ANYRES_PINPOINTS" --mm_patch_merge_type spatial_unpad \
    --unfreeze_mm_vision_tower True \
    --per_device_train_batch_size "$PER_DEVICE_BATCH" --gradient_accumulation_steps "$(grad_accum 256)" \
    --lr_scheduler_type cosine --warmup_steps 500 --weight_decay 0.01 \
    --model_max_length "$MODEL_MAX_LENGTH" --gradient_checkpointing True --dataloader_num_workers 4 --lazy_preprocess True \
    --group_by_modality_length True \
    --save_strategy steps --save_steps 500 --save_total_limit 2 --logging_steps 10 --report_to none \
    "$@" $PRECISION_ARGS "${EXTRA[@]}"
}

# Full stage 2: everything trains; the (perceiver) ViT at 2e-6, the LLM and projector at 1e-5, 2 epochs.
stage2() {  # $1 LLM  $2 vision tower  $3 stage-1 output  $4 output dir  $5 conversation template
  stage2_with "$1" "$2" "$3" "$4" "$5" --mm_vision_tower_lr 2e-6 --mm_projector_lr 1e-5 --learning_rate 1e-5 \
    --num_train_epochs 2
}

# QLoRA stage 2 (the 32B rows): 4-bit target with LoRA at 2e-4, the (perceiver) ViT at 4e-5, 3 epochs.
# The paper does not state the LoRA rank; r=128, alpha=256 are LLaVA's LoRA defaults.
stage2_qlora() {  # same arguments as stage2
  stage2_with "$1" "$2" "$3" "$4" "$5" --lora_enable True --bits 4 --lora_r 128 --lora_alpha 256 \
    --mm_vision_tower_lr 4e-5 --mm_projector_lr 2e-4 --learning_rate 2e-4 --num_train_epochs 3
}

# Both stages of one row of Tables 3/4 on the target $LLM: $1 vision tower, $2 output dir, $3 template,
# then the flags that define the variant (applied to both stages).
row() {
  local tower=$1 out=$2 conv=$3
  shift 3
  local saved=("${EXTRA[@]}")
  EXTRA=("$@" "${saved[@]}")
  stage1 "$LLM" "$tower" "$out-stage1"
  stage2 "$LLM" "$tower" "$out-stage1" "$out" "$conv"
  EXTRA=("${saved[@]}")
}

llava_dpa_cli() { "$PYTHON" -m llava_dpa.cli "$@"; }
