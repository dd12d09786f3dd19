"""The paper's ablations (Tables 2-4): each variant's defining property, with tiny models."""
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import llava_dpa  # noqa: F401
from conftest import tower_outputs_for_questions, train_cmd
from llava_dpa.cli import main
from llava_dpa.data.subset import subset_indices
from llava_dpa.training.train import train


def cli(*args):
    """`llava-dpa ARGS` in this process; must succeed."""
    assert main([str(a) for a in args]) == 0, args


def test_subset_data_is_deterministic_and_nested(zoo, tmp_path):
    from llava_dpa.data.subset import write_subset

    def ids(n, seed, name):
        out = tmp_path / name
        write_subset(zoo["stage2_data"], n, seed, str(out))
        text = out.read_text()
        records = [json.loads(line) for line in text.splitlines()] if name.endswith(".jsonl") else json.loads(text)
        return [r["id"] for r in records]

    cli_out = tmp_path / "cli.json"
    cli("subset-data", "--input", zoo["stage2_data"], "--n", "5", "--seed", "1", "--output", cli_out)
    small = [r["id"] for r in json.loads(cli_out.read_text())]
    large, again, other = ids(12, 1, "large.json"), ids(5, 1, "again.jsonl"), ids(5, 2, "other.json")
    assert len(small) == 5 and len(large) == 12
    assert small == again                      # same seed, same subset (json or jsonl)
    assert set(small) <= set(large)            # a larger N is a superset
    assert small != other                      # another seed, another subset
    original = [r["id"] for r in json.loads(open(zoo["stage2_data"]).read())]
    assert large == [i for i in original if i in set(large)]  # original order kept
    with pytest.raises(ValueError, match="larger than the"):
        subset_indices(3, 4, 0)
    with pytest.raises(ValueError, match="larger than the"):
        write_subset(zoo["stage2_data"], 100000, 0, str(tmp_path / "x.json"))


def test_random_lm_init_keeps_shapes_changes_weights_and_is_seeded(zoo, perceiver, tmp_path):
    outs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        outs[name] = tmp_path / name
        cli("make-perceiver", "--vision", zoo["qwen2_5_vl_vit"], "--language-model", zoo["qwen3_lm_b"],
            "--output", outs[name], "--random-lm-init", "--seed", seed)
    pretrained = load_file(f"{perceiver}/model.safetensors")
    a, b, c = (load_file(f"{outs[k]}/model.safetensors") for k in "abc")
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in pretrained.items()}
    lm_keys = [k for k in a if k.startswith("model.layers.")]
    vit_keys = [k for k in a if k.startswith("model.vision_tower.")]
    assert lm_keys and vit_keys
    assert all(not torch.equal(a[k], pretrained[k]) for k in lm_keys if a[k].dim() > 1)
    assert all(torch.equal(a[k], pretrained[k]) for k in vit_keys)  # only the LM is re-initialised
    assert all(torch.equal(a[k], b[k]) for k in a)                     # same seed, same weights
    assert any(not torch.equal(a[k], c[k]) for k in lm_keys)


def test_extract_vit_from_a_dpa_checkpoint_and_a_baseline_trained_with_one(zoo, dpa_stage2, registry, tmp_path):
    out = tmp_path / "vit"
    cli("extract-vit", dpa_stage2, "--output", out)
    extracted = load_file(f"{out}/model.safetensors")
    target = load_file(f"{dpa_stage2}/model.safetensors")
    prefix = "model.vision_tower.perceiver.model.vision_tower.vision_tower."
    assert extracted and all(torch.equal(v, target[prefix + k]) for k, v in extracted.items())
    original = load_file(f"{zoo['qwen2_5_vl_vit']}/model.safetensors")
    assert any(not torch.equal(extracted[k], original[k]) for k in extracted)  # the fine-tuned weights
    # the registry's w/o-LM-blocks row trained a baseline on the ViT extracted from its perceiver
    row = json.loads((registry.checkpoints / "llava-next-qwen3-4b-perceiver-vit" / "config.json").read_text())
    assert row["mm_hidden_size"] == 64 and (Path(row["mm_vision_tower"]) / "model.safetensors").is_file()
    assert Path(row["mm_vision_tower"]).parent == registry.checkpoints


def test_frozen_perceiver_is_unchanged_by_training(zoo, perceiver, dpa_stage1, tmp_path):
    trainer = train(argv=train_cmd(zoo, tmp_path / "frozen", stage=2, tower=str(perceiver), extra=[
        "--pretrain_mm_mlp_adapter", str(dpa_stage1 / "mm_projector.bin"), "--max_steps", "3", "--freeze_perceiver", "True",
        "--learning_rate", "1e-2"])[3:])
    original = load_file(f"{perceiver}/model.safetensors")
    after = trainer.model.get_vision_tower().perceiver.state_dict()
    assert all(torch.equal(original[k], after[k]) for k in original if k in after)
    saved = load_file(f"{tmp_path / 'frozen'}/model.safetensors")
    assert all(torch.equal(original[k], saved["model.vision_tower.perceiver." + k]) for k in original
               if "model.vision_tower.perceiver." + k in saved)
    assert json.loads((tmp_path / "frozen" / "config.json").read_text())["freeze_perceiver"] is True


def test_instruction_context_makes_features_depend_on_the_question(zoo, perceiver, dpa_stage1, tmp_path):
    import shutil

    from llava.model.builder import load_pretrained_model
    from test_entry_points import chat

    moved = tmp_path / "perceiver"
    shutil.copytree(perceiver, moved)
    out = tmp_path / "ctx"
    trainer = train(argv=train_cmd(zoo, out, stage=2, tower=str(moved), extra=[
        "--pretrain_mm_mlp_adapter", str(dpa_stage1 / "mm_projector.bin"), "--max_steps", "2",
        "--perceiver_instruction_context", "True", "--image_aspect_ratio", "anyres",
        "--image_grid_pinpoints", "[(32, 64), (64, 32), (64, 64)]", "--mm_patch_merge_type", "spatial_unpad"])[3:])
    tower = trainer.model.get_vision_tower()
    # the perceiver re-encodes the question text with its own tokenizer, before the image
    inputs = tower.tower_inputs(trainer.train_dataset[0]["input_ids"][None], None,
                                [trainer.train_dataset[0]["images"][0]])
    first_tile = tower.perceiver_tokenizer.decode(inputs["contexts"][0])
    assert first_tile == "<|im_start|>user\nWhat color is the shape?\n"

    shutil.rmtree(moved)  # the checkpoint carries the perceiver's tokenizer as well
    config = json.loads((out / "config.json").read_text())
    assert config["perceiver_instruction_context"] is True and (out / "perceiver_tokenizer").is_dir()
    tok, model, processor, _ = load_pretrained_model(str(out), None, "x", device="cpu")
    a, b, a2 = tower_outputs_for_questions(model, tok, processor, zoo, ["What color is the shape?", "What shape is it?",
                                                                        "What color is the shape?"])
    assert not torch.allclose(a, b) and torch.equal(a, a2)
    _, turns = chat(out, f"{zoo['images']}/img_000.png", ["What color is the shape?", "What shape is it?"])
    assert len(turns) == 2


def test_auxiliary_perceiver_loss_total_and_lm_head_gradient(zoo, dpa_stage1, tmp_path):
    from transformers import AutoTokenizer

    from llava_dpa.zoo.models import tiny_qwen3
    from test_round_trips import probe_batch

    # a perceiver LM with an untied head, so a gradient on the head can only come from the auxiliary loss
    lm = tmp_path / "untied_lm"
    tiny_qwen3(AutoTokenizer.from_pretrained(zoo["qwen3_lm"]), lm, seed=3)
    config = json.loads((lm / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (lm / "config.json").write_text(json.dumps(config))
    perceiver = tmp_path / "perceiver"
    cli("make-perceiver", "--vision", zoo["qwen2_5_vl_vit"], "--language-model", lm, "--output", perceiver)

    runs = {}
    for weight in ("0.5", "0"):
        runs[weight] = train(argv=train_cmd(zoo, tmp_path / f"aux{weight}", stage=2, tower=str(perceiver), extra=[
            "--pretrain_mm_mlp_adapter", str(dpa_stage1 / "mm_projector.bin"), "--max_steps", "2",
            "--perceiver_aux_loss_weight", weight])[3:])
    history = [h for h in runs["0.5"].state.log_history if "loss" in h and "target_loss" in h]
    assert len(history) == 2
    for h in history:
        assert abs(h["loss"] - (h["target_loss"] + 0.5 * h["perceiver_aux_loss"])) < 2e-3
    assert not any("perceiver_aux_loss" in h for h in runs["0"].state.log_history)

    for weight, expect_grad in (("0.5", True), ("0", False)):
        trainer = runs[weight]
        batch = probe_batch(trainer)
        assert ("perceiver_input_ids" in batch) is expect_grad
        trainer.model.zero_grad()
        trainer.compute_loss(trainer.model, batch).backward()  # the auxiliary loss is the trainer's
        head = trainer.model.get_vision_tower().perceiver.lm_head.weight
        assert bool(head.grad is not None and head.grad.abs().sum() > 0) is expect_grad

    # the default stages are "2": a stage-1 run carries no auxiliary loss
    stage1 = train(argv=train_cmd(zoo, tmp_path / "s1", stage=1, tower=str(perceiver), extra=[
        "--max_steps", "1", "--perceiver_aux_loss_weight", "0.5"])[3:])
    assert "perceiver_input_ids" not in probe_batch(stage1)


def test_large_mlp_matches_a_budget_and_trains_with_a_plain_vit(registry, capsys):
    from llava_dpa.projectors.large_mlp import mlp_parameters, plan

    qwen3_0_6b = 596_049_920
    for depth in (2, 3, 4, 6):  # Qwen2.5-VL-3B ViT width (2048) into Qwen3-4B (2560)
        result = plan(2048, 2560, qwen3_0_6b, depth=depth)
        assert abs(result["relative_error"]) < 0.01 and result["depth"] == depth
        assert result["parameters"] == mlp_parameters(2048, 2560, result["width"], depth)
    # with the width fixed, depth moves in steps of width^2; when no depth fits, the tool says so
    assert main(["projector-budget", "--in", "2048", "--out", "2560", "--budget", str(qwen3_0_6b),
                 "--width", "12800"]) == 2
    assert "within 1%" in capsys.readouterr().err
    cli("projector-budget", "--in", "64", "--out", "64", "--budget", "100000", "--depth", "3")
    flags = capsys.readouterr().out.split("flags: ")[1].split()
    # the registry's large-MLP row at that budget (test fixture `registry`) was trained with exactly these flags
    from llava.model.builder import load_pretrained_model

    out = registry.checkpoints / "llava-next-qwen3-4b-large-mlp"
    recorded = json.loads((out / "run_config.json").read_text())["argv"]
    pairs = dict(zip(flags[::2], flags[1::2]))
    assert len(pairs) == 3 and all(recorded[recorded.index(k) + 1] == v for k, v in pairs.items()), (pairs, recorded)
    _, model, _, _ = load_pretrained_model(str(out), None, "x", device="cpu")
    params = sum(p.numel() for p in model.get_model().mm_projector.parameters())
    assert abs(params - 100000) / 100000 < 0.01 and model.config.mm_projector_type == "large_mlp"


def test_nonsensical_combinations_are_refused(zoo, perceiver, tmp_path):
    cases = [
        (train_cmd(zoo, tmp_path / "a", stage=1, extra=["--freeze_perceiver", "True"]), "only apply to a DPA perceiver"),
        (train_cmd(zoo, tmp_path / "b", stage=2, extra=["--perceiver_instruction_context", "True"]), "only apply to a DPA perceiver"),
        (train_cmd(zoo, tmp_path / "c", stage=2, tower=str(perceiver), version="llava_v1",
                   extra=["--perceiver_instruction_context", "True"]), "reads the user turn of a chat template"),
        (train_cmd(zoo, tmp_path / "d", stage=1, tower=str(perceiver), extra=["--mm_projector_type", "large_mlp",
                                                                              "--mm_projector_width", "64",
                                                                              "--mm_projector_depth", "3"]),
         "plain-ViT ablation"),
        (train_cmd(zoo, tmp_path / "e", stage=1, extra=["--mm_projector_type", "large_mlp"]), "needs --mm_projector_width"),
    ]
    for cmd, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            train(argv=cmd[3:])


def test_stage1_instruction_context_is_refused_so_the_caption_is_never_shown(zoo, perceiver, tmp_path):
    """In stage 1 the text beside the image is the caption the model must predict: the run is refused."""
    cmd = train_cmd(zoo, tmp_path / "s1", stage=1, tower=str(perceiver), extra=[
        "--perceiver_instruction_context", "True", "--version", "qwen_3"])  # the registry's stage-1 chat template
    with pytest.raises(ValueError, match=r"--perceiver_instruction_context True in stage 1"):
        train(argv=cmd[3:])
    assert not (tmp_path / "s1").exists()  # refused before anything is written


def test_variants_combine_with_qlora_anyres_reload_and_chat(zoo, perceiver, dpa_stage1, tmp_path):
    """QLoRA target + anyres tiles + instruction context + auxiliary perceiver loss in one run; the LoRA
    checkpoint reloads with model_base and chats through the CLI."""
    from llava.model.builder import load_pretrained_model
    from test_entry_points import chat

    out = tmp_path / "combo"
    trainer = train(argv=train_cmd(zoo, out, stage=2, tower=str(perceiver), extra=[
        "--pretrain_mm_mlp_adapter", str(dpa_stage1 / "mm_projector.bin"), "--max_steps", "2",
        "--lora_enable", "True", "--bits", "4", "--lora_r", "8", "--lora_alpha", "16",
        "--image_aspect_ratio", "anyres", "--image_grid_pinpoints", "[(32, 64), (64, 32), (64, 64)]",
        "--mm_patch_merge_type", "spatial_unpad", "--perceiver_instruction_context", "True",
        "--perceiver_aux_loss_weight", "0.5"])[3:])
    assert any("perceiver_aux_loss" in h for h in trainer.state.log_history)
    assert (out / "perceiver_tokenizer" / "tokenizer_config.json").is_file()
    _, merged, _, _ = load_pretrained_model(str(out), zoo["qwen3_lm"], "x", device="cpu")
    assert merged.config.perceiver_instruction_context is True
    _, turns = chat(out, f"{zoo['images']}/img_003.png", ["What color is the shape?", "What shape is it?"],
                    extra=["--model-base", zoo["qwen3_lm"]])
    assert len(turns) == 2
