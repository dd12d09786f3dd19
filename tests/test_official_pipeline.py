"""The two paper-exact runs of the registry (the official pipeline) on the tiny zoo: stage 1, stage 2, reload, chat."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import PY, run

NATIVE = ["--min_pixels", "256", "--max_pixels", "4096"]


def train(zoo, checkpoints: Path, entry: str, stage: int):
    from llava_dpa.recipes.render import stage_command
    from llava_dpa.zoo.recipes import tiny_flags, tiny_settings

    overrides = tiny_flags(stage) + NATIVE + ["--max_steps", "2", "--per_device_train_batch_size", "2"]
    command = stage_command(entry, stage, tiny_settings(zoo, checkpoints), overrides, drop=("--image_grid_pinpoints",))
    return run([PY, "-m", "llava.train.train_mem"] + command.argv)


@pytest.mark.parametrize("entry, tower, projector", [
    ("llava-qwen3-4b-official-pipeline", "Qwen2_5_VLTower", "qwen_merger"),
    ("dpa-qwen3-4b-official-pipeline", "QwenVLPerceiverTower", "dpa_aligner")])
def test_official_pipeline_trains_reloads_and_chats(zoo, tmp_path, entry, tower, projector):
    first = train(zoo, tmp_path, entry, 1)
    assert "projector            trainable" in first.stdout + first.stderr
    second = train(zoo, tmp_path, entry, 2)
    table = second.stdout + second.stderr
    # the official parameter groups (register_DPA.py): ViT + merger 2e-6, LLM and perceiver LM 1e-5, aligner 1e-5
    vit_row = "perceiver_vit" if tower == "QwenVLPerceiverTower" else "vision_tower"
    assert any(line.split()[:2] == [vit_row, "trainable"] and line.rstrip().endswith("2e-06") for line in table.splitlines())
    out = tmp_path / entry
    config = json.loads((out / "config.json").read_text())
    assert config["mm_projector_type"] == projector and config["image_aspect_ratio"] == "native"
    assert config["mm_vision_tower_processor"]["max_pixels"] == 4096
    image = sorted(Path(zoo["images"]).iterdir())[0]
    chat = run([PY, "-m", "llava.serve.cli", "--model-path", out, "--image-file", image, "--device", "cpu",
                "--max-new-tokens", "4"], input="What colour is it?\nAnd its shape?\n\n", timeout=300)
    assert chat.stdout.count("assistant:") == 2  # two turns answered; the image is encoded whole, no tiles
