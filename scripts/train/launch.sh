#!/usr/bin/env bash
# Train a run of the paper from the registry (llava_dpa/recipes/paper.py).
#   scripts/train/launch.sh NAME [--stage 1|2] [--settings cluster.yaml] [--with-prerequisites] [--dry-run] [-- LLaVA flags]
# `llava-dpa recipe list` names the entries; `llava-dpa recipe show NAME` prints their commands. Paths and
# launch settings come from the YAML file or LLAVA_DPA_* variables (docs/recipes.md). The DeepSpeed configs
# are in scripts/train/deepspeed/.
set -euo pipefail
exec "${PYTHON:-python}" -m llava_dpa.cli recipe run "$@"
