"""Padding-free packing: the same samples packed in one row or padded in a batch give the same loss and gradients;
the packs are a deterministic function of the seed and the epoch; nonsense combinations are refused."""
from __future__ import annotations

import pytest
import torch

from conftest import PY, run, train_cmd


def batch_of(checkpoint, zoo, n=4):
    from llava.conversation import conv_templates

    from llava_dpa.data.dataset import DataCollatorForSupervisedDataset, DataSpec, LazySupervisedDataset
    from llava_dpa.loading import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(str(checkpoint), None, None, device="cpu", dtype=torch.float32)
    tower = model.get_vision_tower()
    spec = DataSpec(conversation=conv_templates[model.config.conv_version], image_folder=zoo["images"],
                    image_aspect_ratio=model.config.image_aspect_ratio,
                    image_grid_pinpoints=getattr(model.config, "image_grid_pinpoints", None), image_processor=processor,
                    tokens_per_image=tower.num_patches)
    dataset = LazySupervisedDataset(zoo["stage2_data"], tokenizer, spec)
    batch = DataCollatorForSupervisedDataset(tokenizer)([dataset[i] for i in range(n)])
    return model, batch, dataset


def loss_and_grads(model, batch, packed):
    model.zero_grad(set_to_none=True)
    model.requires_grad_(True)
    loss = model(**batch, packed=packed).loss
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return loss.item(), grads


@pytest.mark.parametrize("kind", ["baseline", "dpa"])
def test_packed_and_padded_agree(zoo, baseline_stage2, dpa_stage2, kind):
    model, batch, _ = batch_of(baseline_stage2 if kind == "baseline" else dpa_stage2, zoo)
    assert (~batch["attention_mask"]).any()  # the padded batch really pads
    padded_loss, padded_grads = loss_and_grads(model, batch, packed=False)
    packed_loss, packed_grads = loss_and_grads(model, batch, packed=True)
    assert abs(packed_loss - padded_loss) <= 1e-4 * abs(padded_loss)
    cosine = torch.nn.functional.cosine_similarity(packed_grads, padded_grads, dim=0).item()
    assert cosine >= 0.9999


@pytest.mark.fast
def test_packs_are_deterministic_and_within_budget():
    from llava_dpa.data.packing import PackedBatchSampler

    lengths = [30, 200, 120, 80, 400, 10, 60, 300, 90, 50]
    sampler = PackedBatchSampler(lengths, budget=400, seed=3)
    first = sampler.packs()
    assert first == PackedBatchSampler(lengths, budget=400, seed=3).packs()   # a resumed run sees the same packs
    assert sorted(i for pack in first for i in pack) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in pack) <= 400 for pack in first)
    sampler.set_epoch(1)
    assert sampler.packs() != first and len(sampler) == len(sampler.packs())


def test_a_packed_run_trains_and_refuses_nonsense(zoo, baseline_stage1, tmp_path):
    out = tmp_path / "packed"
    proc = run(train_cmd(zoo, out, stage=2, extra=[
        "--pretrain_mm_mlp_adapter", str(baseline_stage1 / "mm_projector.bin"), "--max_steps", "3",
        "--packing_budget", "1024", "--per_device_train_batch_size", "1"]))
    assert "'loss'" in proc.stdout + proc.stderr and (out / "model.safetensors").is_file()
    bad = run(train_cmd(zoo, tmp_path / "b", stage=2, extra=[
        "--pretrain_mm_mlp_adapter", str(baseline_stage1 / "mm_projector.bin"), "--packing_budget", "1024"]),
        check=False)
    assert bad.returncode != 0 and "--per_device_train_batch_size 1" in bad.stderr
