"""Shared fixtures: the tiny zoo and a few trained checkpoints, built once per test session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
TINY_PINPOINTS = "[(32, 64), (64, 32), (64, 64)]"


def run(cmd, env=None, check=True, input=None, timeout=600):
    """Run a command (list) and return the CompletedProcess; on failure show its output."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
    proc = subprocess.run(cmd, env=full_env, input=input, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def train_cmd(zoo, output, *, stage: int, lm="qwen3_lm", tower=None, version=None, extra=(), module="llava.train.train_mem"):
    tower = tower or zoo["clip"]
    args = [PY, "-m", module, "--model_name_or_path", zoo[lm], "--vision_tower", tower, "--output_dir", str(output),
            "--image_folder", zoo["images"], "--mm_projector_type", "mlp2x_gelu", "--mm_use_im_patch_token", "False",
            "--per_device_train_batch_size", "4", "--report_to", "none", "--dataloader_num_workers", "0",
            "--model_max_length", "1024", "--save_strategy", "no", "--logging_steps", "1", "--seed", "0"]
    if "qwen2_5_vl" not in tower and "perceiver" not in tower and "dpa" not in tower:
        args += ["--mm_vision_select_layer", "-2"]
    else:
        args += ["--mm_vision_select_layer", "-1"]
    if stage == 1:
        args += ["--version", "plain", "--data_path", zoo["stage1_data"], "--tune_mm_mlp_adapter", "True",
                 "--learning_rate", "1e-3", "--max_steps", "3"]
    else:
        args += ["--version", version or ("llama_3" if lm == "llama_lm" else "qwen_3"), "--data_path", zoo["stage2_data"],
                 "--learning_rate", "3e-3", "--num_train_epochs", "12", "--lr_scheduler_type", "cosine"]
    return args + list(extra)


def tower_outputs_for_questions(model, tokenizer, processor, zoo, questions):
    from PIL import Image
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token

    seen = []
    handle = model.get_vision_tower().register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    image = process_images([Image.open(f"{zoo['images']}/img_001.png").convert("RGB")], processor, model.config)
    for question in questions:
        conv = conv_templates["qwen_3"].copy()
        conv.append_message("user", "<image>\n" + question)
        conv.append_message("assistant", None)
        ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None]
        with torch.no_grad():
            model(input_ids=ids, images=image, image_sizes=[(32, 32)])
    handle.remove()
    return seen


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    from llava_dpa.zoo import build_zoo

    return build_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def baseline_stage1(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline_stage1")
    run(train_cmd(zoo, out, stage=1))
    return out


@pytest.fixture(scope="session")
def baseline_stage2(zoo, baseline_stage1, tmp_path_factory):
    """A CLIP + tiny-Qwen3 baseline trained until it answers the synthetic questions."""
    out = tmp_path_factory.mktemp("baseline_stage2")
    run(train_cmd(zoo, out, stage=2, extra=["--pretrain_mm_mlp_adapter", str(baseline_stage1 / "mm_projector.bin")]))
    return out


@pytest.fixture(scope="session")
def perceiver(zoo, tmp_path_factory):
    """An untrained perceiver: the tiny Qwen2.5-VL ViT + a second tiny Qwen3 LM, random projector."""
    out = tmp_path_factory.mktemp("perceiver") / "perceiver"
    run([PY, "-m", "llava_dpa.cli", "make-perceiver", "--vision", zoo["qwen2_5_vl_vit"], "--language-model",
         zoo["qwen3_lm_b"], "--output", str(out), "--seed", "0"])
    return out


@pytest.fixture(scope="session")
def dpa_stage1(zoo, perceiver, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpa_stage1")
    run(train_cmd(zoo, out, stage=1, tower=str(perceiver)))
    return out


@pytest.fixture(scope="session")
def dpa_stage2(zoo, perceiver, dpa_stage1, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpa_stage2")
    run(train_cmd(zoo, out, stage=2, tower=str(perceiver), extra=[
        "--pretrain_mm_mlp_adapter", str(dpa_stage1 / "mm_projector.bin"), "--mm_vision_tower_lr", "2e-4"]))
    return out
