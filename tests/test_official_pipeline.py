"""The two paper-exact runs of the registry (the official pipeline) on the tiny zoo: stage 1, stage 2, reload with
the perceiver folder gone, chat, LLaVA's eval script, the lmms-eval model, MIR of the perceiver in its own text
space, QLoRA and ZeRO-3."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import (
    PY,
    REPO,
    answer_questions,
    built_once,
    entry_point,
    free_port,
    in_process_logged,
    run,
    two_turn_generate,
)
from safetensors import safe_open

NATIVE = ["--min_pixels", "256", "--max_pixels", "4096"]
DPA, BASELINE = "dpa-qwen3-4b-official-pipeline", "llava-qwen3-4b-official-pipeline"


def stage_argv(zoo, checkpoints: Path, entry: str, stage: int, perceiver: str, extra=()):
    from llava_dpa.recipes.render import stage_command
    from llava_dpa.zoo.recipes import tiny_flags, tiny_settings

    settings = tiny_settings(zoo, checkpoints)
    settings = type(settings)(**{**settings.__dict__, "paths": {**settings.paths, "official_perceiver": perceiver}})
    overrides = tiny_flags(stage) + NATIVE + ["--max_steps", "2", "--per_device_train_batch_size", "2", *extra]
    command = stage_command(entry, stage, settings, overrides, drop=("--image_grid_pinpoints",))
    return [PY, "-m", "llava.train.train_mem"] + command.argv


@pytest.fixture(scope="session")
def official(zoo, tmp_path_factory):
    """Both entries trained through stage 1 and 2 (in this process; each run's output kept), from a copy of the
    zoo's official-layout perceiver that is then deleted: the checkpoints must rebuild their tower from their own
    config."""
    def build(root):
        perceiver = root / "dpa-4b-init-perceiver"
        shutil.copytree(zoo["native_perceiver"], perceiver)
        for entry in (BASELINE, DPA):
            for s in (1, 2):
                text = in_process_logged(stage_argv(zoo, root, entry, s, str(perceiver)))
                (root / f"{entry}-stage{s}.log").write_text(text)
        shutil.rmtree(perceiver)

    root = built_once(tmp_path_factory, "official", build)
    logs = {entry: [(root / f"{entry}-stage{s}.log").read_text() for s in (1, 2)] for entry in (BASELINE, DPA)}
    return root, logs, zoo


def table_row(output: str, part: str):
    for line in output.splitlines():
        if line.split()[:1] == [part]:
            return line.split()
    raise AssertionError(f"no {part} row in the trainability table")


@pytest.mark.parametrize("entry, tower, projector, vit_part", [
    (BASELINE, "Qwen2_5_VLTower", "qwen_merger", "vision_tower"),
    (DPA, "QwenVLPerceiverTower", "dpa_aligner", "perceiver_vit")])
def test_official_pipeline_trains_reloads_and_chats(official, entry, tower, projector, vit_part):
    root, logs, zoo = official
    first, second = logs[entry]
    assert table_row(first, "projector")[1] == "trainable" and table_row(first, vit_part)[1] == "frozen"
    # every training log line carries its throughput (#12: samples/s and tokens/s; peak memory on CUDA)
    assert "'samples_per_second'" in first and "'tokens_per_second'" in first
    # the official parameter groups (register_DPA.py 16-23): ViT + merger 2e-6, LLM and perceiver LM 1e-5, aligner 1e-5
    assert table_row(second, vit_part)[1:2] + table_row(second, vit_part)[-1:] == ["trainable", "2e-06"]
    assert table_row(second, "language_model")[-1] == "1e-05" and table_row(second, "projector")[-1] == "1e-05"
    if entry == DPA:
        assert table_row(second, "perceiver_lm")[-1] == "1e-05"
        assert "vision tower: DPA perceiver, Qwen-VL native" in second  # which perceiver the user got
    else:
        assert "vision tower: ViT tower" in second
    out = root / entry
    config = json.loads((out / "config.json").read_text())
    assert config["mm_projector_type"] == projector and config["image_aspect_ratio"] == "native"
    assert config["mm_vision_tower_processor"]["max_pixels"] == 4096
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert not any("image_newline" in k for k in f.keys())
    image = sorted(Path(zoo["images"]).iterdir())[0]
    printed = entry_point("llava.serve.cli", "--model-path", out, "--image-file", image, "--device", "cpu",
                          "--max-new-tokens", "4", stdin="What colour is it?\nAnd its shape?\n\n")
    assert printed.count("assistant:") == 2


def test_llava_eval_script_and_lmms_eval_model(official, tmp_path):
    from PIL import Image

    from llava_dpa.eval.lmms_model import LlavaDPA

    root, _, zoo = official
    out = root / DPA
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps({"question_id": f"q{i}", "image": f"img_00{i}.png",
                                                "text": "What shape is it?"}) for i in range(2)))
    rows = answer_questions(out, questions, zoo["images"], tmp_path / "a.jsonl", "--max_new_tokens", "128")
    assert [r["question_id"] for r in rows] == ["q0", "q1"]
    model = LlavaDPA(pretrained=str(out), device="cpu", dtype="float32")
    image = Image.open(Path(zoo["images"]) / "img_000.png").convert("RGB")

    class Request:
        args = ("What shape is it?", {"max_new_tokens": 3, "do_sample": False}, lambda doc: [image], 0, "t", "test")

    model.task_dict = {"t": {"test": [{}]}}
    reply = model.generate_until([Request()])
    assert len(reply) == 1 and isinstance(reply[0], str)


def test_mir_of_the_perceiver_in_its_own_text_space(official, tmp_path):
    from llava_dpa.cli import main

    root, _, zoo = official
    texts = tmp_path / "texts.txt"
    texts.write_text("a red square\na blue circle\nthe shape is green\n")
    result = tmp_path / "mir"
    assert main(["analyze", "mir", str(root / DPA), str(root / DPA), "--component", "target", "--component", "perceiver",
                 "--images", zoo["images"], "--texts", str(texts), "--num-probes", "6", "--output", str(result)]) == 0
    rows = json.loads((result / "mir.json").read_text())
    names = {r["model"] for r in rows}
    assert names == {DPA, f"{DPA}:perceiver"}
    layers = {r["model"]: len(r["fd"]) for r in rows}
    assert layers[f"{DPA}:perceiver"] == 2  # the tiny perceiver LM's two layers


def test_qlora_on_the_target_and_the_perceiver_lm(official, tmp_path):
    from llava_dpa.loading import load_pretrained_model

    root, _, zoo = official
    out = tmp_path / "qlora"
    # stage 2 again from the stage-1 aligner, LoRA on the (4-bit) target and on the perceiver's LM
    argv = stage_argv(zoo, tmp_path, DPA, 2, zoo["native_perceiver"], extra=[
        "--lora_enable", "True", "--bits", "4", "--lora_r", "8", "--lora_alpha", "16", "--lora_parts", "language_model",
        "perceiver_lm", "--pretrain_mm_mlp_adapter", str(root / f"{DPA}-stage1" / "mm_projector.bin"),
        "--output_dir", str(out)])
    printed = in_process_logged(argv)
    assert table_row(printed, "perceiver_lm")[1] == "LoRA" and table_row(printed, "language_model")[1] == "LoRA"
    saved = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    assert any(".perceiver.visual." in k for k in saved)  # the ViT and merger train in full
    _, model, _, _ = load_pretrained_model(str(out), zoo["qwen3_lm"], "x", device="cpu")
    assert type(model.get_vision_tower()).__name__ == "QwenVLPerceiverTower"
    assert not any("lora_" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_loads_and_trains_the_perceiver(official, tmp_path, zero):
    """ZeRO-3: the perceiver's weights are loaded into partitioned parameters; ZeRO-2: plain data parallel."""
    from safetensors.torch import load_file

    root, _, zoo = official
    out = tmp_path / zero
    argv = stage_argv(zoo, tmp_path, DPA, 2, zoo["native_perceiver"], extra=[
        "--pretrain_mm_mlp_adapter", str(root / f"{DPA}-stage1" / "mm_projector.bin"), "--output_dir", str(out),
        "--deepspeed", str(REPO / f"scripts/train/deepspeed/{zero}.json")])
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    run(argv, env=env, timeout=900)
    saved = load_file(out / "model.safetensors")
    original = load_file(f"{zoo['native_perceiver']}/model.safetensors")
    pairs = [(saved["model.vision_tower.perceiver." + k], v) for k, v in original.items()
             if "model.vision_tower.perceiver." + k in saved]
    assert len(pairs) == len(original)
    assert max((a - b).abs().max().item() for a, b in pairs) < 1e-2  # two small steps from the loaded weights


@pytest.mark.parametrize("entry", [DPA, BASELINE])
def test_chat_encodes_the_image_once_per_conversation(official, entry):
    root, _, zoo = official
    tower = two_turn_generate(root / entry, sorted(Path(zoo["images"]).iterdir())[0])
    assert tower.memo.computations == 1
