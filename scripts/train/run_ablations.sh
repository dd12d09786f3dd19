#!/usr/bin/env bash
# Train, then evaluate, rows of Tables 3 and 4.
#   scripts/train/run_ablations.sh [ROW ...]     ROW: a table3_* / table4_* script name without .sh (default: all)
# The perceivers the rows need are built first (perceiver_ladder.sh with SKIP_DPA=1; existing ones are kept).
# Evaluation: with EVAL_QUESTIONS (a LLaVA question .jsonl) and EVAL_IMAGES set, each trained row answers it
# through scripts/eval/llava_vqa.sh into $CHECKPOINTS/eval/<row>.jsonl.
source "$(dirname "$0")/common.sh"
HERE=$(cd "$(dirname "$0")" && pwd)
rows=("$@")
if [ ${#rows[@]} -eq 0 ]; then
  for f in "$HERE"/table3_*.sh "$HERE"/table4_*.sh; do rows+=("$(basename "$f" .sh)"); done
fi
for r in "${rows[@]}"; do
  [ -f "$HERE/$r.sh" ] || { echo "unknown row $r (see scripts/train/table3_*.sh, table4_*.sh)" >&2; exit 2; }
done
SKIP_DPA=1 bash "$HERE/perceiver_ladder.sh"
for r in "${rows[@]}"; do
  echo "=== $r"
  OUTPUT=$CHECKPOINTS/$r bash "$HERE/$r.sh"
  if [ -n "${EVAL_QUESTIONS:-}" ]; then
    mkdir -p "$CHECKPOINTS/eval"
    bash "$HERE/../eval/llava_vqa.sh" "$CHECKPOINTS/$r" "$EVAL_QUESTIONS" "${EVAL_IMAGES:?set EVAL_IMAGES}" "$CHECKPOINTS/eval/$r.jsonl"
  fi
done
