#!/usr/bin/env bash
# Tables 2 and 3: the whole perceiver ladder, then DPA-Qwen3-4B on each perceiver.
#   untrained   pretrained ViT + Qwen3-0.6B, random projector       -> $CHECKPOINTS/perceiver-untrained
#   stage 1     + the perceiver's stage 1 (558K captions)            -> $CHECKPOINTS/perceiver-stage1-only
#   stage 2 N   + stage 2 on N instruction samples (10K, 250K, 1M)   -> $CHECKPOINTS/llava-qwen3-0.6b-{10k,250k,1m}
# Subsets are deterministic and nested (llava-dpa subset-data, SUBSET_SEED). Set SKIP_DPA=1 to build the
# perceivers only; LADDER_SIZES to change the N (default "10k:10000 250k:250000 1m:1000000").
source "$(dirname "$0")/common.sh"
: "${PERCEIVER_LM:=/path/to/Qwen3-0.6B}" "${LLM:=/path/to/Qwen3-4B}" "${SUBSET_SEED:=0}"
: "${LADDER_SIZES:=10k:10000 250k:250000 1m:1000000}"
HERE=$(dirname "$0")
P1=$CHECKPOINTS/llava-qwen3-0.6b-stage1

[ -d "$CHECKPOINTS/perceiver-untrained" ] || llava_dpa_cli make-perceiver --vision "$VIT" \
    --language-model "$PERCEIVER_LM" --output "$CHECKPOINTS/perceiver-untrained"
[ -f "$P1/mm_projector.bin" ] || LLM=$PERCEIVER_LM OUTPUT=$P1 bash "$HERE/perceiver_qwen3_0_6b_stage1.sh"
[ -d "$CHECKPOINTS/perceiver-stage1-only" ] || llava_dpa_cli make-perceiver --vision "$VIT" \
    --language-model "$PERCEIVER_LM" --projector-weights "$P1/mm_projector.bin" --output "$CHECKPOINTS/perceiver-stage1-only"
for entry in $LADDER_SIZES; do
  name=${entry%%:*}; n=${entry##*:}
  subset=$CHECKPOINTS/data/stage2-$name.json
  [ -f "$subset" ] || llava_dpa_cli subset-data --input "$STAGE2_DATA" --n "$n" --seed "$SUBSET_SEED" --output "$subset"
  [ -f "$CHECKPOINTS/llava-qwen3-0.6b-$name/config.json" ] || STAGE2_DATA=$subset LLM=$PERCEIVER_LM STAGE1=$P1 \
      OUTPUT=$CHECKPOINTS/llava-qwen3-0.6b-$name bash "$HERE/perceiver_qwen3_0_6b_stage2.sh"
done
[ "${SKIP_DPA:-0}" = 1 ] && exit 0
bash "$HERE/table3_untrained_perceiver.sh"
bash "$HERE/table3_stage1_perceiver.sh"
for entry in $LADDER_SIZES; do
  name=${entry%%:*}
  PERCEIVER=$CHECKPOINTS/llava-qwen3-0.6b-$name OUTPUT=$CHECKPOINTS/table3-stage2-$name bash "$HERE/table3_stage2_${name}.sh"
done
