"""In-process training runs: save/reload equality, self-contained towers, anyres, LoRA and QLoRA."""
import shutil

import pytest
import torch
from conftest import TINY_PINPOINTS, tower_folder_weights, train_cmd
from llava.mm_utils import process_images
from llava.model.builder import load_pretrained_model
from PIL import Image

import llava_dpa  # noqa: F401
from llava_dpa.training.train import train


def in_process(cmd):
    """Run the same arguments as the entry point, in this process, and return the trainer."""
    return train(argv=cmd[3:])


def probe_batch(trainer):
    collate = trainer.data_collator
    return collate([trainer.train_dataset[i] for i in (0, 3)])


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], images=batch["images"],
                     image_sizes=batch["image_sizes"]).logits


def test_anyres_stage2_reload_is_self_contained_and_exact(zoo, baseline_stage1, tmp_path, weight_reads):
    vit = tmp_path / "my_clip"
    shutil.copytree(zoo["clip"], vit)
    out = tmp_path / "ckpt"
    trainer = in_process(train_cmd(zoo, out, stage=2, tower=str(vit), extra=[
        "--pretrain_mm_mlp_adapter", str(baseline_stage1 / "mm_projector.bin"), "--max_steps", "3",
        "--image_aspect_ratio", "anyres", "--image_grid_pinpoints", TINY_PINPOINTS, "--mm_patch_merge_type", "spatial_unpad",
        "--unfreeze_mm_vision_tower", "True", "--mm_vision_tower_lr", "1e-2"]))
    model = trainer.model
    batch = probe_batch(trainer)
    # the dataset's anyres tiles are exactly llava's inference-time tiles
    image = Image.open(f"{zoo['images']}/img_000.png").convert("RGB")
    assert torch.equal(trainer.train_dataset[0]["images"][0],
                       process_images([image], model.get_vision_tower().image_processor, model.config)[0])
    assert batch["images"][0].shape[0] > 1 and len(batch["image_sizes"]) == 2
    before = logits(model, batch)
    trained_tower = {k: v.clone() for k, v in model.get_vision_tower().vision_tower.state_dict().items()}

    shutil.rmtree(vit)  # the checkpoint must not need the original ViT folder
    weight_reads.clear()
    tok, reloaded, processor, _ = load_pretrained_model(str(out), None, "anything", device="cpu")
    after = logits(reloaded, batch)
    assert torch.allclose(before, after, atol=1e-5)
    tower = reloaded.get_vision_tower()
    assert not any(read.startswith(str(vit)) for read in weight_reads)  # from the checkpoint, not the (deleted) folder
    reloaded_tower = tower.vision_tower.state_dict()
    assert all(torch.equal(trained_tower[k], reloaded_tower[k]) for k in trained_tower)
    original = tower_folder_weights(zoo["clip"])
    assert any(not torch.equal(original[k], reloaded_tower[k]) for k in reloaded_tower), "the tower did not train"


def test_optimizer_groups_get_their_learning_rates(zoo, baseline_stage1, tmp_path):
    trainer = in_process(train_cmd(zoo, tmp_path / "ckpt", stage=2, extra=[
        "--pretrain_mm_mlp_adapter", str(baseline_stage1 / "mm_projector.bin"), "--max_steps", "1",
        "--learning_rate", "1e-5", "--mm_projector_lr", "3e-4", "--unfreeze_mm_vision_tower", "True",
        "--mm_vision_tower_lr", "2e-6", "--lr_scheduler_type", "constant"]))
    lrs = {g["name"].replace("_no_decay", ""): g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == {"language_model": 1e-5, "projector": 3e-4, "vision_tower": 2e-6}
    tower_params = {id(p) for p in trainer.model.get_vision_tower().parameters()}
    for group in trainer.optimizer.param_groups:
        inside = [id(p) in tower_params for p in group["params"]]
        assert all(inside) if group["name"].startswith("vision_tower") else not any(inside)


@pytest.mark.parametrize("bits", [16, 4])
def test_lora_and_qlora_round_trip(zoo, baseline_stage1, tmp_path, bits):
    out = tmp_path / "lora"
    trainer = in_process(train_cmd(zoo, out, stage=2, extra=[
        "--pretrain_mm_mlp_adapter", str(baseline_stage1 / "mm_projector.bin"), "--max_steps", "2",
        "--lora_enable", "True", "--lora_r", "8", "--lora_alpha", "16", "--bits", str(bits),
        "--learning_rate", "1e-2"]))
    peft_model = trainer.model
    lora_names = [n for n, _ in peft_model.named_parameters() if "lora_" in n]
    assert lora_names and not any("vision_tower" in n or "mm_projector" in n for n in lora_names)
    extra = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    assert any("mm_projector" in k for k in extra) and any(".vision_tower." in k for k in extra)
    batch = probe_batch(trainer)
    tok, merged, _, _ = load_pretrained_model(str(out), zoo["qwen3_lm"], "x", device="cpu")
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    if bits == 16:  # merging is exact up to float error
        assert torch.allclose(logits(peft_model, batch), logits(merged, batch), atol=1e-4)
    out_ids = merged.generate(batch["input_ids"][:1, :20], images=batch["images"][:1], image_sizes=batch["image_sizes"][:1],
                              max_new_tokens=3, do_sample=False)
    assert out_ids.shape[0] == 1 and 1 <= out_ids.shape[1] <= 3
