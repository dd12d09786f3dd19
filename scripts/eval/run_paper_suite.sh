#!/usr/bin/env bash
# The paper's 11 benchmarks (Table 1) for one checkpoint of this project, DPA or baseline:
#   scripts/eval/run_paper_suite.sh <checkpoint> [output folder]
# then `llava-dpa report <output folder> ...` prints the Table 1 row.
#
# A launcher for `llava-dpa eval run --from-environment <checkpoint> [output folder]`. The protocols (PROTOCOL:
# default, each task's own settings; official, the release's), each generation setting with its source, and
# the commands they give are typed entries in llava_dpa/recipes/evaluation.py: `llava-dpa eval show official`.
# The environment variables and the flags they become are its ENVIRONMENT (`llava-dpa eval run --help`):
# PROTOCOL, MODEL_BASE, CONV_TEMPLATE, DEVICE (cuda:0), DTYPE (bfloat16), BATCH_SIZE (1), NUM_PROCESSES (1),
# LIMIT, MM_TASKS / TEXT_TASKS / REDUX_TASK, SKIP_MMLU_REDUX=1, REDUX_BACKEND (hf; or vllm), LLM_ONLY=1,
# JUDGE_MODEL / MMVET_JUDGE_MODEL (official only), PYTHON (python), DRY_RUN=1 (print the commands only).
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 <checkpoint> [output folder]" >&2
  exit 2
fi
# llava-dpa runs in PYTHON, the interpreter of every command, if there is one by that name (a dry run may name
# another machine's), else in python3
launcher=${PYTHON:-python}
command -v "$launcher" >/dev/null 2>&1 || launcher=python3
exec "$launcher" -m llava_dpa.cli eval run --from-environment "$@"
