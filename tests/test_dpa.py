"""The DPA perceiver tower: features, question independence, stage-wise training, learning rates,
self-contained checkpoints, LoRA/QLoRA, chat, and its bad inputs."""
import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import (
    TINY_PINPOINTS,
    instruction_context_copy,
    tower_outputs_for_questions,
    train_cmd,
)
from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.builder import load_pretrained_model
from test_entry_points import chat, check_chat
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


#: two questions an instruction-context perceiver reads differently (it sees the question before the image)
QUESTIONS = ["What color is the shape?", "Is there anything unusual about the background?"]


def test_default_features_do_not_depend_on_the_question(zoo, dpa_stage2, perceiver, tmp_path):
    """The default perceiver sees only its prefix and the image: the same features for two questions, each encoded
    afresh (tower_outputs_for_questions empties the memo). The control: the same weights with the instruction
    context on read the question, and give different features for the same two questions."""
    tok, model, processor, _ = load_pretrained_model(str(dpa_stage2), None, "d", device="cpu")
    a, b = tower_outputs_for_questions(model, tok, processor, zoo, QUESTIONS)
    assert torch.equal(a, b)
    ctx = instruction_context_copy(dpa_stage2, perceiver, tmp_path / "ctx")
    tok, model, processor, _ = load_pretrained_model(str(ctx), None, "d", device="cpu")
    ca, cb = tower_outputs_for_questions(model, tok, processor, zoo, QUESTIONS)
    assert ca.shape == a.shape and not torch.allclose(ca, cb, atol=1e-4)


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


def optimizer_groups(trainer) -> dict[str, tuple[float, list[str]]]:
    """name -> (learning rate the group was built with, its parameters' names without PEFT's wrapper prefix). The
    rate is the scheduler's base (`initial_lr`): `lr` itself has moved with warm-up and decay by the end of a run."""
    names = {id(p): n.removeprefix("base_model.model.") for n, p in trainer.model.named_parameters()}
    return {g["name"]: (g["initial_lr"], [names[id(p)] for p in g["params"]]) for g in trainer.optimizer.param_groups}


@pytest.mark.xdist_group("dpa_adapters")
def test_each_parameter_group_gets_its_learning_rate(dpa_adapters):
    """The session's LoRA run named a learning rate per part (conftest.ADAPTER_LEARNING_RATES), its QLoRA run none:
    each part then trains at --learning_rate (1e-2, conftest.ADAPTER_FLAGS)."""
    groups = optimizer_groups(dpa_adapters[16][1])
    lrs = {name.replace("_no_decay", ""): lr for name, (lr, _) in groups.items()}
    assert lrs == {"language_model": 1e-2, "perceiver_vit": 2e-3, "perceiver_projector": 3e-3, "perceiver_lm": 3e-3,
                   "projector": 5e-3}
    for name, (_, members) in groups.items():
        assert members, name
        if name.startswith("perceiver_vit"):
            assert all("perceiver.model.vision_tower." in n for n in members)
        elif name.startswith("perceiver_projector"):
            assert all(".perceiver.model.mm_projector." in n for n in members)
        elif name.startswith("perceiver_lm"):
            assert all(".perceiver." in n and "perceiver.model.vision_tower." not in n
                       and "perceiver.model.mm_projector." not in n for n in members)
        elif name.startswith("projector"):
            assert all(n.startswith("model.mm_projector") for n in members)
        else:  # the target LM trains through its adapters only
            assert all("lora_" in n and "vision_tower" not in n for n in members)
    # the default for every part (the perceiver's projector and LM blocks included) is the LLM learning rate
    default = optimizer_groups(dpa_adapters[4][1])
    assert {name.replace("_no_decay", "") for name in default} == set(lrs)
    assert {lr for lr, _ in default.values()} == {1e-2}


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
    # and it chats through the unmodified CLI with the perceiver folder gone, answering as model.generate does
    image = f"{zoo['images']}/img_002.png"
    _, turns = chat(out, image, ["What color is the shape?", "What shape is it?"])
    assert len(turns) == 2
    check_chat(out, image, turns)


def adapted_weights(trainer, base) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """key -> (the base LLM's weight, the weight the trained model computed with, the adapter's update
    scaling * B @ A) for every linear layer the run adapted or quantized. A QLoRA run computes with its 4-bit
    weight dequantized to fp32 (bitsandbytes' dequantize_4bit, as its CPU kernel does); a LoRA run with the base."""
    import copy

    out = {}
    for name, module in trainer.model.named_modules():
        layer = getattr(module, "base_layer", module)
        weight = getattr(layer, "weight", None)
        quantized = weight is not None and hasattr(weight, "quant_state")
        if not (hasattr(module, "lora_A") or quantized) or ".lora_" in name or ".base_layer" in name:
            continue
        key = name.removeprefix("base_model.model.") + ".weight"
        if quantized:
            import bitsandbytes.functional as bnb

            state = copy.copy(weight.quant_state)
            state.dtype = torch.float32
            used = bnb.dequantize_4bit(weight.data, state)
        else:
            used = weight.detach().float()
        delta = torch.zeros_like(used)
        if "default" in getattr(module, "lora_A", {}):
            delta = (module.lora_B["default"].weight @ module.lora_A["default"].weight).float() * module.scaling["default"]
        out[key] = base[key].float(), used, delta.detach()
    return out


def training_logits(model, batch):
    """The logits as the run computed them: dropout off, autograd on (the trainable perceiver makes every layer's
    input require grad). bitsandbytes then computes a 4-bit layer with its fp32-dequantized weight, as in training;
    under no_grad on a CPU with AVX512-BF16 it switches to a bfloat16 kernel (differences near 2e-3 here)."""
    model.eval()
    with torch.enable_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], images=batch["images"],
                     image_sizes=batch["image_sizes"]).logits.detach()


@pytest.mark.xdist_group("dpa_adapters")
@pytest.mark.parametrize("bits", [16, 4])
def test_lora_and_qlora_exclude_the_perceiver_round_trip_and_pack(zoo, dpa_adapters, bits):
    """The adapters' checkpoint reloads (merged onto the base LLM, as serving loads it) to the numbers the run
    trained: every adapted weight is the base weight + scaling * B @ A within 1e-6, the perceiver and projector are
    the trained ones exactly, and the logits are the trained model's within 1e-4 (fp32). For QLoRA the comparison
    gives the reload what the run computed with in place of the full-precision base LLM: its 4-bit weights
    (dequantized) and the rest of the base as the quantized load holds it (checked exactly), so what remains is the
    reload's own doing."""
    from safetensors.torch import load_file

    out, trainer = dpa_adapters[bits]
    names = [n for n, _ in trainer.model.named_parameters() if "lora_" in n]
    assert names and not any("perceiver" in n for n in names)
    saved = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    assert any(".perceiver.model.layers." in k for k in saved) and any(".perceiver.model.vision_tower." in k for k in saved)
    batch = probe_batch(trainer)
    _, merged, _, _ = load_pretrained_model(str(out), zoo["qwen3_lm"], "x", device="cpu")
    # (state_dict also returns bitsandbytes' 4-bit weights to their stored layout, should an inference call have
    # repacked them for its CPU kernel: adapted_weights dequantizes that layout)
    trained = {k.removeprefix("base_model.model."): v for k, v in trainer.model.state_dict().items()}
    state = merged.state_dict()
    tower_and_projector = [k for k in state if "vision_tower" in k or "mm_projector" in k]
    assert tower_and_projector and all(torch.equal(trained[k].float(), state[k]) for k in tower_and_projector)
    base = load_file(f"{zoo['qwen3_lm']}/model.safetensors")
    weights = adapted_weights(trainer, base)
    assert weights and all(k.startswith("model.layers.") for k in weights)  # the target LM's layers only
    assert any(delta.abs().max() > 0 for _, _, delta in weights.values())  # two steps moved the adapters
    for key, (weight, _, delta) in weights.items():
        assert (state[key] - (weight + delta)).abs().max().item() <= 1e-6, key
    with torch.no_grad():
        for key, weight in base.items():
            if key not in weights:
                assert torch.equal(state[key], weight), key  # the reload's frozen base is the folder's
                # a quantized load holds the rest of the base LLM at fp16 on transformers 4.57 (its default dtype
                # with bitsandbytes), at the folder's dtype on 5.x; never anything else
                held = trained[key].float()
                assert torch.equal(held, weight) or (bits == 4 and torch.equal(held, weight.half().float())), key
                state[key].copy_(held)
        if bits == 4:
            assert any(not torch.equal(weight, used) for weight, used, _ in weights.values())  # 4-bit weights differ
            for key, (weight, used, _) in weights.items():
                state[key].add_(used - weight)
    assert (training_logits(trainer.model, batch) - logits(merged, batch)).abs().max().item() <= 1e-4
    # packing under LoRA / QLoRA: packed and padded give the same loss and LoRA gradients (dropout off)
    trainer.model.eval()
    assert_packed_equals_padded(trainer.model, batch, everything=False)


def test_cli_two_turn_chat_with_a_dpa_checkpoint(zoo, dpa_stage2):
    image = f"{zoo['images']}/img_000.png"
    _, turns = chat(dpa_stage2, image, ["What color is the shape?", "What shape is it?"])
    assert len(turns) == 2
    check_chat(dpa_stage2, image, turns)


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
