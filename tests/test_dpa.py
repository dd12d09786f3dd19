"""The DPA perceiver tower: features, question independence, stage-wise training, learning rates,
self-contained checkpoints, LoRA/QLoRA, chat, and its bad inputs."""
import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_PINPOINTS, tower_outputs_for_questions, train_cmd
from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.builder import load_pretrained_model
from test_entry_points import chat
from test_packing import assert_packed_equals_padded
from test_round_trips import logits, probe_batch

import llava_dpa  # noqa: F401
from llava_dpa.llava_integration.tower_registry import build_vision_tower
from llava_dpa.perceiver.base import PerceiverError
from llava_dpa.perceiver.tower import PerceiverTower
from llava_dpa.training.train import train


def tower_args(path, **kw):
    return SimpleNamespace(mm_vision_tower=str(path), mm_vision_select_layer=-1, **kw)


def test_perceiver_is_chosen_from_the_checkpoint_config_and_has_the_interface(perceiver):
    for name in (str(perceiver), f"dpa:{perceiver}"):
        tower = build_vision_tower(tower_args(name))
        assert type(tower) is PerceiverTower and tower.is_loaded
    assert tower.hidden_size == 64 and tower.num_patches_per_side == 4 and tower.num_patches == 16
    assert tower.image_size == 32 and tower.config.image_size == 32
    assert tower.image_processor is tower.vit.image_processor
    assert tower(torch.randn(3, 3, 32, 32)).shape == (3, 16, 64)
    assert [f.shape for f in tower([torch.randn(3, 32, 32)] * 2)] == [(1, 16, 64)] * 2
    assert tower.dummy_feature.shape == (1, 64)
    # the perceiver's own template up to the image: Qwen3's user header
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(perceiver).decode(tower.prefix_ids) == "<|im_start|>user\n"


def test_features_equal_a_hand_written_reference_forward(perceiver):
    """ViT -> projector -> LM, through LLaVA's own multimodal path on the perceiver as a standalone VLM."""
    tower = build_vision_tower(tower_args(perceiver))
    _, vlm, _, _ = load_pretrained_model(str(perceiver), None, "p", device="cpu")
    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([tower.prefix_ids + [IMAGE_TOKEN_INDEX]] * 2)
    with torch.no_grad():
        embeds = vlm.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, pixels)[4]
        reference = vlm.get_model()(inputs_embeds=embeds).last_hidden_state[:, len(tower.prefix_ids):]
        assert torch.allclose(tower(pixels), reference, atol=1e-5)
        k = 1  # --dpa_select_layer k gives hidden_states[k] at the image positions
        layered = build_vision_tower(tower_args(perceiver, dpa_select_layer=k))
        hidden = vlm.get_model()(inputs_embeds=embeds, output_hidden_states=True).hidden_states[k]
        assert torch.allclose(layered(pixels), hidden[:, len(tower.prefix_ids):], atol=1e-5)


def test_delay_load_builds_from_config_and_loads_once(perceiver, weight_reads):
    tower = build_vision_tower(tower_args(perceiver), delay_load=True)
    assert not tower.is_loaded and weight_reads == []
    tower.load_model()
    tower.load_model()
    assert weight_reads == [str(perceiver)]  # once, and the ViT comes with the perceiver's weights


def test_default_features_do_not_depend_on_the_question(zoo, dpa_stage2):
    tok, model, processor, _ = load_pretrained_model(str(dpa_stage2), None, "d", device="cpu")
    a, b = tower_outputs_for_questions(model, tok, processor, zoo,
                                       ["What color is the shape?", "Is there anything unusual about the background?"])
    assert torch.equal(a, b)


def grads_after_one_backward(trainer):
    model = trainer.model
    model.train()
    batch = probe_batch(trainer)
    model.zero_grad()
    model(**batch).loss.backward()
    tower = model.get_vision_tower()
    vit = next(p for p in tower.vit.parameters())
    lm = tower.perceiver.get_model().layers[0].mlp.up_proj.weight
    projector = next(tower.perceiver.get_model().mm_projector.parameters())
    has = lambda p: p.grad is not None and p.grad.abs().sum() > 0  # noqa: E731
    return has(vit), has(projector), has(lm), has(next(model.get_model().mm_projector.parameters()))


@pytest.mark.parametrize("stage,extra,expected", [
    (2, [], (True, True, True, True)),
    (2, ["--freeze_perceiver", "True"], (False, False, False, True)),
    (1, [], (False, False, False, True)),
])
def test_gradients_reach_the_perceiver_only_in_stage2(zoo, perceiver, dpa_stage1, tmp_path, stage, extra, expected):
    more = ["--max_steps", "1", "--gradient_checkpointing", "True"] + extra
    if stage == 2:
        more += ["--pretrain_mm_mlp_adapter", str(dpa_stage1 / "mm_projector.bin")]
    trainer = train(argv=train_cmd(zoo, tmp_path / "o", stage=stage, tower=str(perceiver), extra=more)[3:])
    assert grads_after_one_backward(trainer) == expected


def test_each_parameter_group_gets_its_learning_rate(zoo, perceiver, dpa_stage1, tmp_path):
    trainer = train(argv=train_cmd(zoo, tmp_path / "o", stage=2, tower=str(perceiver), extra=[
        "--pretrain_mm_mlp_adapter", str(dpa_stage1 / "mm_projector.bin"), "--max_steps", "1",
        "--lr_scheduler_type", "constant", "--learning_rate", "1e-5", "--mm_vision_tower_lr", "2e-6",
        "--mm_projector_lr", "5e-5", "--perceiver_lr", "3e-5"])[3:])
    lrs = {g["name"].replace("_no_decay", ""): g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == {"language_model": 1e-5, "perceiver_vit": 2e-6, "perceiver_projector": 3e-5, "perceiver_lm": 3e-5,
                   "projector": 5e-5}
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    for group in trainer.optimizer.param_groups:
        members = [names[id(p)] for p in group["params"]]
        if group["name"].startswith("perceiver_vit"):
            assert all("perceiver.model.vision_tower." in n for n in members)
        elif group["name"].startswith("perceiver_projector"):
            assert all(".perceiver.model.mm_projector." in n for n in members)
        elif group["name"].startswith("perceiver_lm"):
            assert all(".perceiver." in n and "perceiver.model.vision_tower." not in n
                       and "perceiver.model.mm_projector." not in n for n in members)
        elif group["name"].startswith("projector"):
            assert all(n.startswith("model.mm_projector") for n in members)
        else:
            assert not any("vision_tower" in n or "mm_projector" in n for n in members)
    # the default for the perceiver's projector and LM blocks is the LLM learning rate
    default = train(argv=train_cmd(zoo, tmp_path / "p", stage=2, tower=str(perceiver), extra=[
        "--pretrain_mm_mlp_adapter", str(dpa_stage1 / "mm_projector.bin"), "--max_steps", "1",
        "--lr_scheduler_type", "constant", "--learning_rate", "1e-5"])[3:])
    assert {g["lr"] for g in default.optimizer.param_groups if g["name"].startswith("perceiver_")
            and not g["name"].startswith("perceiver_vit")} == {1e-5}


def test_self_contained_reload_with_the_perceiver_folder_deleted(zoo, perceiver, dpa_stage1, tmp_path):
    moved = tmp_path / "perceiver_copy"
    shutil.copytree(perceiver, moved)
    out = tmp_path / "dpa"
    trainer = train(argv=train_cmd(zoo, out, stage=2, tower=str(moved), extra=[
        "--pretrain_mm_mlp_adapter", str(dpa_stage1 / "mm_projector.bin"), "--max_steps", "2",
        "--mm_vision_tower_lr", "1e-2", "--image_aspect_ratio", "anyres", "--image_grid_pinpoints", TINY_PINPOINTS,
        "--mm_patch_merge_type", "spatial_unpad"])[3:])
    batch = probe_batch(trainer)
    before = logits(trainer.model, batch)
    trained = {k: v.clone() for k, v in trainer.model.get_vision_tower().perceiver.state_dict().items()}
    shutil.rmtree(moved)
    config = json.loads((out / "config.json").read_text())
    assert config["mm_vision_tower_config"]["model_type"] == "llava_qwen3" and config["mm_perceiver_prefix_ids"]
    _, reloaded, _, _ = load_pretrained_model(str(out), None, "x", device="cpu")
    assert torch.allclose(before, logits(reloaded, batch), atol=1e-5)
    state = reloaded.get_vision_tower().perceiver.state_dict()
    assert all(torch.equal(trained[k], state[k]) for k in trained)
    from safetensors.torch import load_file

    original = load_file(f"{perceiver}/model.safetensors")
    changed = [k for k in original if k in state and not torch.equal(original[k], state[k])]
    assert any("vision_tower" in k for k in changed) and any("layers" in k for k in changed)
    # and it chats through the unmodified CLI with the perceiver folder gone
    _, turns = chat(out, f"{zoo['images']}/img_002.png", ["What color is the shape?", "What shape is it?"])
    assert len(turns) == 2 and turns[0]["outputs"] in turns[1]["prompt"]


@pytest.mark.xdist_group("dpa_adapters")
@pytest.mark.parametrize("bits", [16, 4])
def test_lora_and_qlora_exclude_the_perceiver_round_trip_and_pack(zoo, dpa_adapters, bits):
    out, trainer = dpa_adapters[bits]
    names = [n for n, _ in trainer.model.named_parameters() if "lora_" in n]
    assert names and not any("perceiver" in n for n in names)
    saved = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    assert any(".perceiver.model.layers." in k for k in saved) and any(".perceiver.model.vision_tower." in k for k in saved)
    batch = probe_batch(trainer)
    _, merged, _, _ = load_pretrained_model(str(out), zoo["qwen3_lm"], "x", device="cpu")
    trained = trainer.model.get_vision_tower().perceiver.state_dict()
    reloaded = merged.get_vision_tower().perceiver.state_dict()
    assert all(torch.equal(trained[k].float(), reloaded[k].float()) for k in trained)
    if bits == 16:
        assert torch.allclose(logits(trainer.model, batch), logits(merged, batch), atol=1e-4)
    # packing under LoRA / QLoRA: packed and padded give the same loss and LoRA gradients (dropout off)
    trainer.model.eval()
    assert_packed_equals_padded(trainer.model, batch, everything=False)


def test_cli_two_turn_chat_with_a_dpa_checkpoint(zoo, dpa_stage2):
    _, turns = chat(dpa_stage2, f"{zoo['images']}/img_000.png", ["What color is the shape?", "What shape is it?"])
    assert len(turns) == 2 and turns[0]["outputs"]
    assert f"<|im_start|>assistant\n{turns[0]['outputs']}<|im_end|>" in turns[1]["prompt"]


def test_bad_perceiver_inputs(zoo, perceiver, dpa_stage1, tmp_path):
    # a perceiver whose image size does not match the anyres grid
    with pytest.raises(ValueError, match="not multiples of") as refused:
        train(argv=train_cmd(zoo, tmp_path / "g", stage=1, tower=str(perceiver), extra=[
            "--image_aspect_ratio", "anyres", "--image_grid_pinpoints", "[(40, 80)]"])[3:])
    assert str(perceiver) in str(refused.value)
    # a perceiver folder without its tokenizer
    bare = tmp_path / "bare"
    shutil.copytree(perceiver, bare)
    for f in bare.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(PerceiverError, match="has no tokenizer"):
        build_vision_tower(tower_args(bare))
    # a target checkpoint that lacks perceiver weights (stage-1 output) once the perceiver folder is gone
    moved = tmp_path / "gone"
    shutil.copytree(perceiver, moved)
    stage1 = tmp_path / "s1"
    train(argv=train_cmd(zoo, stage1, stage=1, tower=str(moved), extra=["--max_steps", "1"])[3:])
    shutil.rmtree(moved)
    from llava_dpa.loading import CheckpointError

    with pytest.raises(CheckpointError, match="holds no vision-tower weights"):
        load_pretrained_model(str(stage1), zoo["qwen3_lm"], "x", device="cpu")


def test_chat_encodes_the_image_once_per_conversation(zoo, dpa_stage2):
    """The perceiver (ViT and LM, per anyres tile) runs once for a two-turn chat, not once per turn."""
    from conftest import two_turn_generate

    tower = two_turn_generate(dpa_stage2, f"{zoo['images']}/img_000.png")
    assert tower.memo.computations == 1
