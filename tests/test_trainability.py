"""What trains in each stage, the optimizer's groups and LoRA targets: pure logic on a module tree that has
the real parameter names of a DPA and a baseline model (nothing is loaded or trained)."""
import json

import pytest
import torch
from torch import nn

from llava_dpa.training import resolution
from llava_dpa.training.optim import parameter_groups
from llava_dpa.training.parts import Part, part_of
from llava_dpa.training.trainability import (Mode, apply_trainability, lora_target_modules, trainability_plan,
                                             trainability_table)

pytestmark = pytest.mark.fast

DPA_LINEARS = ["model.layers.0.self_attn.q_proj", "model.mm_projector.0", "lm_head",
               "model.vision_tower.perceiver.model.vision_tower.vision_tower.blocks.0.attn.qkv",
               "model.vision_tower.perceiver.model.mm_projector.0",
               "model.vision_tower.perceiver.model.layers.0.self_attn.q_proj",
               "model.vision_tower.perceiver.lm_head"]
VIT_LINEARS = ["model.layers.0.self_attn.q_proj", "model.mm_projector.0", "lm_head",
               "model.vision_tower.vision_tower.blocks.0.attn.qkv"]


def toy_model(linears, newline=True):
    root = nn.Module()
    for name in linears:
        parent = root
        *path, leaf = name.split(".")
        for piece in path:
            if not hasattr(parent, piece):
                parent.add_module(piece, nn.Module())
            parent = getattr(parent, piece)
        parent.add_module(leaf, nn.Linear(4, 4, bias=False))
    if newline:
        root.model.image_newline = nn.Parameter(torch.zeros(4))
    return root


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    for name, config in (("vit", {"model_type": "clip_vision_model"}),
                         ("perceiver", {"model_type": "llava_qwen3", "mm_vision_tower": "x"})):
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
    return {k: str(root / k) for k in ("vit", "perceiver")}


def run_of(tmp_path, tower, *flags):
    return resolution.parse_run_config(["--model_name_or_path", "lm", "--output_dir", str(tmp_path), "--version", "qwen_3",
                                "--vision_tower", tower, "--report_to", "none", *flags])


def test_every_parameter_name_maps_to_its_part():
    expected = [Part.LANGUAGE_MODEL, Part.PROJECTOR, Part.LANGUAGE_MODEL, Part.PERCEIVER_VIT, Part.PERCEIVER_PROJECTOR,
                Part.PERCEIVER_LM, Part.PERCEIVER_LM_HEAD]
    assert [part_of(n + ".weight") for n in DPA_LINEARS] == expected
    assert part_of("model.vision_tower.vision_tower.blocks.0.attn.qkv.weight") is Part.VISION_TOWER
    assert part_of("model.image_newline") is Part.IMAGE_NEWLINE
    # the same rules under PEFT's prefix
    assert part_of("base_model.model.model.vision_tower.perceiver.model.layers.0.q_proj.lora_A.default.weight") \
        is Part.PERCEIVER_LM


def plan_of(run):
    return trainability_plan(run.choices)


def trains(plan):
    return {p.value for p, m in plan.items() if m is not Mode.FROZEN}


def test_stage1_trains_the_projector_only(tmp_path, towers):
    assert trains(plan_of(run_of(tmp_path, towers["vit"], "--stage", "1"))) == {"projector"}
    assert trains(plan_of(run_of(tmp_path, towers["perceiver"], "--stage", "1"))) == {"projector"}
    # a stage-1 auxiliary loss must reach the perceiver, so the perceiver trains with it
    plan = plan_of(run_of(tmp_path, towers["perceiver"], "--stage", "1", "--perceiver_aux_loss_weight", "1",
                                    "--perceiver_aux_loss_stages", "1"))
    assert trains(plan) == {"projector", "perceiver_vit", "perceiver_projector", "perceiver_lm", "perceiver_lm_head"}


def test_stage2_trains_everything_the_paper_says(tmp_path, towers):
    assert trains(plan_of(run_of(tmp_path, towers["vit"]))) == {"language_model", "projector", "image_newline"}
    assert "vision_tower" in trains(plan_of(run_of(tmp_path, towers["vit"], "--unfreeze_mm_vision_tower", "True")))
    dpa = plan_of(run_of(tmp_path, towers["perceiver"]))
    assert trains(dpa) == {"language_model", "projector", "image_newline", "perceiver_vit", "perceiver_projector",
                           "perceiver_lm"}  # the LM head is unused by the features
    aux = plan_of(run_of(tmp_path, towers["perceiver"], "--perceiver_aux_loss_weight", "1"))
    assert aux[Part.PERCEIVER_LM_HEAD] is Mode.FULL
    frozen = plan_of(run_of(tmp_path, towers["perceiver"], "--freeze_perceiver", "True"))
    assert trains(frozen) == {"language_model", "projector", "image_newline"}
    assert trains(plan_of(run_of(tmp_path, towers["vit"], "--freeze_backbone", "True"))) == \
        {"projector", "image_newline"}
    assert "projector" not in trains(plan_of(run_of(tmp_path, towers["vit"], "--freeze_mm_mlp_adapter", "True")))


def test_lora_parts_train_through_their_adapters(tmp_path, towers):
    plan = plan_of(run_of(tmp_path, towers["perceiver"], "--lora_enable", "True", "--lora_parts",
                                    "language_model", "perceiver_vit", "perceiver_lm"))
    assert plan[Part.LANGUAGE_MODEL] is Mode.LORA and plan[Part.PERCEIVER_VIT] is Mode.LORA
    assert plan[Part.PERCEIVER_LM] is Mode.LORA and plan[Part.PERCEIVER_PROJECTOR] is Mode.FULL
    assert plan[Part.PROJECTOR] is Mode.FULL


def test_apply_sets_requires_grad_on_every_parameter_and_reports_rows(tmp_path, towers):
    model = toy_model(DPA_LINEARS)
    run = run_of(tmp_path, towers["perceiver"], "--learning_rate", "1e-5", "--mm_vision_tower_lr", "2e-6")
    rows = {r.part: r for r in apply_trainability(model, run)}
    state = {n: p.requires_grad for n, p in model.named_parameters()}
    assert state["model.vision_tower.perceiver.lm_head.weight"] is False
    assert all(v for n, v in state.items() if "perceiver.lm_head" not in n)
    assert rows[Part.PERCEIVER_VIT].learning_rate == 2e-6 and rows[Part.PERCEIVER_LM].learning_rate == 1e-5
    assert rows[Part.PERCEIVER_LM_HEAD].trainable == 0 and rows[Part.PERCEIVER_LM_HEAD].learning_rate is None
    assert rows[Part.PROJECTOR].parameters == rows[Part.PROJECTOR].trainable == 16
    table = trainability_table(list(rows.values()), run.stage)
    assert "stage 2 (instruction tuning)" in table
    assert any(line.split()[:2] == ["perceiver_lm_head", "frozen"] for line in table.splitlines())
    assert any(line.split()[0] == "perceiver_vit" and line.split()[-1] == "2e-06" for line in table.splitlines())

    stage1 = run_of(tmp_path, towers["perceiver"], "--stage", "1")
    apply_trainability(model, stage1)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"model.mm_projector.0.weight"}


def test_under_lora_only_adapter_weights_of_lora_parts_train(tmp_path, towers):
    model = toy_model(DPA_LINEARS)
    getattr(model.model.layers, "0").self_attn.q_proj.lora_A = nn.Linear(4, 1, bias=False)
    run = run_of(tmp_path, towers["perceiver"], "--lora_enable", "True")
    apply_trainability(model, run)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.layers.0.self_attn.q_proj.lora_A.weight" in trainable
    assert "model.layers.0.self_attn.q_proj.weight" not in trainable and "lm_head.weight" not in trainable
    assert "model.vision_tower.perceiver.model.layers.0.self_attn.q_proj.weight" in trainable  # full: not a LoRA part


def test_lora_targets_are_full_names_of_the_lora_parts_never_a_head(tmp_path, towers):
    model = toy_model(DPA_LINEARS)
    default = lora_target_modules(model, run_of(tmp_path, towers["perceiver"], "--lora_enable", "True"))
    assert default == ["model.layers.0.self_attn.q_proj"]
    wide = lora_target_modules(model, run_of(tmp_path, towers["perceiver"], "--lora_enable", "True", "--lora_parts",
                                             "language_model", "perceiver_vit", "perceiver_projector", "perceiver_lm"))
    assert set(wide) == {"model.layers.0.self_attn.q_proj",
                         "model.vision_tower.perceiver.model.vision_tower.vision_tower.blocks.0.attn.qkv",
                         "model.vision_tower.perceiver.model.mm_projector.0",
                         "model.vision_tower.perceiver.model.layers.0.self_attn.q_proj"}
    vit = toy_model(VIT_LINEARS)
    assert lora_target_modules(vit, run_of(tmp_path, towers["vit"], "--lora_enable", "True", "--unfreeze_mm_vision_tower",
                                           "True", "--lora_parts", "language_model", "vision_tower")) == \
        ["model.layers.0.self_attn.q_proj", "model.vision_tower.vision_tower.blocks.0.attn.qkv"]


def test_parameter_groups_take_each_parts_learning_rate(tmp_path, towers):
    model = toy_model(DPA_LINEARS)
    run = run_of(tmp_path, towers["perceiver"], "--learning_rate", "1e-5", "--mm_vision_tower_lr", "2e-6",
                 "--mm_projector_lr", "5e-5", "--perceiver_lr", "3e-5", "--weight_decay", "0.01")
    apply_trainability(model, run)
    groups = {g["name"]: g for g in parameter_groups(model, run)}
    assert {n: g["lr"] for n, g in groups.items()} == {
        "language_model": 1e-5, "projector": 5e-5, "perceiver_vit": 2e-6, "perceiver_projector": 3e-5,
        "perceiver_lm": 3e-5, "image_newline": 1e-5}  # LLaVA decays image_newline too (not a bias, not a norm)
    assert groups["projector"]["weight_decay"] == 0.01
    assert sum(len(g["params"]) for g in groups.values()) == sum(p.requires_grad for p in model.parameters())
