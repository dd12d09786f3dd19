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
from llava_dpa.zoo.recipes import TINY_PINPOINTS  # noqa: F401  (tests import it from here)


def run(cmd, env=None, check=True, input=None, timeout=600, cwd=REPO):
    """Run a command (list) and return the CompletedProcess; on failure show its output."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
    proc = subprocess.run([str(c) for c in cmd], env=full_env, input=input, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
                             f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def train_cmd(zoo, output, *, stage: int, lm="qwen3_lm", tower=None, version=None, extra=(), module="llava.train.train_mem"):
    """A registry baseline's stage command on the tiny zoo (llava_dpa.zoo.recipes), with the defaults these tests
    were written against: a CLIP tower, square images, a frozen tower, LLaVA's plain stage 1, no stage-1 input."""
    from llava_dpa.recipes.render import stage_command
    from llava_dpa.zoo.recipes import tiny_flags, tiny_settings

    tower = tower or zoo["clip"]
    entry = "llava-next-llama3.2-3b" if lm == "llama_lm" else "llava-next-qwen3-4b"
    not_clip = any(key in tower for key in ("qwen2_5_vl", "perceiver", "dpa"))
    overrides = tiny_flags(stage) + [
        "--model_name_or_path", zoo[lm], "--vision_tower", tower, "--output_dir", str(output),
        "--mm_vision_select_layer", "-1" if not_clip else "-2", "--image_aspect_ratio", "square",
        "--mm_patch_merge_type", "flat", "--weight_decay", "0.0", "--adam_beta2", "0.999"]
    if stage == 1:
        overrides += ["--version", "plain", "--learning_rate", "1e-3", "--max_steps", "3"]
    else:
        overrides += ["--version", version or ("llama_3" if lm == "llama_lm" else "qwen_3"), "--learning_rate", "3e-3",
                      "--num_train_epochs", "12"]
    drop = ("--pretrain_mm_mlp_adapter", "--unfreeze_mm_vision_tower", "--mm_vision_tower_lr", "--mm_projector_lr",
            "--image_grid_pinpoints", "--lr_scheduler_kwargs", "--lr_scheduler_type", "--stage")
    command = stage_command(entry, stage, tiny_settings(zoo, Path(output).parent), overrides, drop)
    args = [PY, "-m", module] + command.argv
    if stage == 1:
        args += ["--tune_mm_mlp_adapter", "True"]
    else:
        args += ["--lr_scheduler_type", "cosine"]
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


def tower_folder_weights(path, select_layer=-2):
    """A ViT folder's weights under the keys of the tower's encoder, mapped as the tower's own loader maps them
    (a CLIP folder saved by transformers 5 has no `vision_model` level; the encoder keeps it)."""
    from types import SimpleNamespace

    from safetensors.torch import load_file

    from llava_dpa.towers import weights as W
    from llava_dpa.towers.registry import build_vision_tower

    tower = build_vision_tower(SimpleNamespace(mm_vision_tower=str(path), mm_vision_select_layer=select_layer),
                               delay_load=True)
    return W.select_submodule_state(load_file(f"{path}/model.safetensors"), tower.encoder, tower.checkpoint_prefixes,
                                    str(path))


def two_turn_generate(checkpoint, image_path):
    """What llava.serve.cli does for two turns (the whole conversation re-sent each turn, the same image tensor)."""
    from PIL import Image
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token

    from llava_dpa.data.tokenization import IMAGE_TOKEN_INDEX
    from llava_dpa.loading import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(str(checkpoint), None, None, device="cpu", dtype=torch.float32)
    image = Image.open(image_path).convert("RGB")
    pixels = process_images([image], processor, model.config)
    conv = conv_templates[model.config.conv_version].copy()
    for turn, question in enumerate(("What colour is it?", "And its shape?")):
        conv.append_message(conv.roles[0], ("<image>\n" if turn == 0 else "") + question)
        conv.append_message(conv.roles[1], None)
        ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
        with torch.inference_mode():
            out = model.generate(ids, images=pixels, image_sizes=[image.size], max_new_tokens=2, do_sample=False)
        conv.messages[-1][-1] = tokenizer.decode(out[0], skip_special_tokens=True)
    return model.get_vision_tower()

