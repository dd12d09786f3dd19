"""The registry's recipes on the tiny zoo: the cluster settings and the overrides that make a paper run
fit a CPU in seconds. Tests and the demo build their commands from the registry with these. The paper runs' flags
are spelled by `recipes/render.py` alone; tests/conftest.py's `train_cmd` spells its own for the runs that test
LLaVA's flags directly (not paper rows)."""
from __future__ import annotations

import sys
from pathlib import Path

from llava_dpa.recipes.settings import Settings

TINY_PINPOINTS = "[(32, 64), (64, 32), (64, 64)]"

#: every paper run, shrunk: short sequences, small batches, no warmup, no checkpoint saving
TINY_FLAGS = ["--model_max_length", "1024", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
              "--dataloader_num_workers", "0", "--gradient_checkpointing", "False", "--save_strategy", "no",
              "--logging_steps", "1", "--seed", "0", "--warmup_steps", "0", "--group_by_modality_length", "False",
              "--image_grid_pinpoints", TINY_PINPOINTS]
#: the warmup-stable-decay schedule with a decay that fits a few steps
TINY_STAGE1_FLAGS = ["--lr_scheduler_kwargs", '{"num_decay_steps": 1}']


def tiny_settings(zoo: dict, checkpoints: str | Path) -> Settings:
    """Every path key of the registry pointed at the zoo; one CPU process, float32."""
    return Settings(
        paths={"vit": zoo["qwen2_5_vl_vit"], "qwen3_0_6b": zoo["qwen3_lm_b"], "qwen3_4b": zoo["qwen3_lm"],
               "qwen3_32b": zoo["qwen3_lm"], "llama3_2_3b": zoo["llama_lm"],
               "stage1_data": zoo["stage1_data"], "stage1_images": zoo["images"],
               "stage2_data": zoo["stage2_data"], "stage2_images": zoo["images"], "checkpoints": str(checkpoints),
               "official_perceiver": zoo["native_perceiver"]},
        launcher="python", gpus_per_node=1, per_device_batch=4, precision="fp32", dataloader_workers=0,
        python=sys.executable)


def tiny_flags(stage: int) -> list[str]:
    return TINY_FLAGS + (TINY_STAGE1_FLAGS if stage == 1 else [])
