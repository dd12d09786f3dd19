"""Padding-free packing: the same samples packed in one row or padded in a batch give the same loss and gradients;
the packs are a deterministic function of the seed and the epoch; nonsense combinations are refused."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import PY, REPO, in_process, in_process_logged, losses, run, train_cmd


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


def loss_and_grads(model, batch, packed, everything=True):
    """The loss and the gradient of every parameter (or, everything=False, of those that already train)."""
    model.zero_grad(set_to_none=True)
    if everything:
        model.requires_grad_(True)
    loss = model(**batch, packed=packed).loss
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return loss.item(), grads


def assert_packed_equals_padded(model, batch, everything=True):
    assert (~batch["attention_mask"]).any()  # the padded batch really pads
    padded_loss, padded_grads = loss_and_grads(model, batch, packed=False, everything=everything)
    packed_loss, packed_grads = loss_and_grads(model, batch, packed=True, everything=everything)
    assert abs(packed_loss - padded_loss) <= 1e-4 * abs(padded_loss)
    cosine = torch.nn.functional.cosine_similarity(packed_grads, padded_grads, dim=0).item()
    assert cosine >= 0.9999


@pytest.mark.parametrize("kind", ["baseline", "dpa"])
def test_packed_and_padded_agree(zoo, baseline_stage2, dpa_stage2, kind):
    model, batch, _ = batch_of(baseline_stage2 if kind == "baseline" else dpa_stage2, zoo)
    assert_packed_equals_padded(model, batch)


@pytest.mark.fast
def test_packs_are_deterministic_and_within_budget():
    from llava_dpa.data.packing import PackedBatchSampler

    lengths = [30, 200, 120, 80, 400, 10, 60, 300, 90, 50, 170, 20, 350, 5, 140]
    sampler = PackedBatchSampler(lengths, budget=400, seed=3)
    first = sampler.packs()
    assert first == PackedBatchSampler(lengths, budget=400, seed=3).packs()   # a resumed run sees the same packs
    assert sorted(i for pack in first for i in pack) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in pack) <= 400 for pack in first)
    assert PackedBatchSampler(lengths, budget=400, seed=4).packs() != first
    for epoch in range(1, 6):   # every epoch the same packs, as many as the Trainer counted, in its own order
        sampler.set_epoch(epoch)
        assert len(sampler) == len(first) and sorted(sampler.packs()) == sorted(first)
        assert sampler.packs() != first


@pytest.mark.fast
def test_the_ranks_shares_of_the_lengths_merge_into_sample_order():
    from llava_dpa.data.packing import interleave

    lengths = [37, 5, 120, 64, 9, 300, 18, 77, 2, 45]
    for world in (1, 2, 3, 4, 12):   # 12 ranks for 10 samples: two ranks measure none
        shares = [lengths[rank::world] for rank in range(world)]
        assert interleave(shares, len(lengths)) == lengths
    with pytest.raises(ValueError, match="rank 1 measured 4 samples, expected 5.*--data_path"):
        interleave([lengths[0::2], lengths[1::2][:4]], len(lengths))


@pytest.mark.fast
def test_the_epoch_reaches_the_pack_order_through_accelerate_also_when_sharded():
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    from llava_dpa.data.packing import PackedBatchSampler

    lengths = [30, 200, 120, 80, 400, 10, 60, 300, 90, 50] * 3
    for processes in (1, 2):
        sampler = PackedBatchSampler(lengths, budget=400, seed=3)
        epoch0 = sampler.packs()
        loader = prepare_data_loader(DataLoader(list(range(len(lengths))), batch_sampler=sampler),
                                     num_processes=processes, process_index=0, put_on_device=False)
        loader.set_epoch(1)   # what transformers' Trainer calls at the start of every epoch
        assert sampler.sampler.epoch == 1 and sampler.packs() != epoch0
        seen = [sorted(b.tolist()) for b in loader]
        assert seen == [sorted(p) for p in sampler.packs()[0::processes]][:len(seen)]


def test_a_packed_run_resumes_mid_epoch_on_the_same_packs_and_refuses_nonsense(zoo, baseline_stage1, tmp_path):
    def command(out):
        return train_cmd(zoo, out, stage=2, extra=[
            "--pretrain_mm_mlp_adapter", str(baseline_stage1 / "mm_projector.bin"), "--max_steps", "6",
            "--save_strategy", "steps", "--save_steps", "3", "--learning_rate", "1e-3",
            "--packing_budget", "1024", "--per_device_train_batch_size", "1"])

    reference = tmp_path / "reference"
    in_process(command(reference))
    assert (reference / "model.safetensors").is_file()
    state = json.loads((reference / "trainer_state.json").read_text())
    epoch_at = {h["step"]: h["epoch"] for h in state["log_history"] if "loss" in h}
    assert epoch_at[6] > 1 and epoch_at[3] % 1 > 0, epoch_at   # across epoch boundaries; the resume lands mid-epoch
    killed = tmp_path / "killed"
    assert run([PY, str(REPO / "tests" / "hooked_train.py")] + command(killed)[3:], env={"KILL_AT_STEP": "4"},
               check=False).returncode == 137
    resumed = in_process_logged(command(killed))
    assert "resuming from" in resumed and "checkpoint-3" in resumed
    ref, got = losses(reference), losses(killed)
    assert sorted(got) == list(range(1, 7))
    for step in got:  # the same packs in the same order, before and after the resume
        assert abs(ref[step] - got[step]) < 1e-4, (step, ref[step], got[step])

    with pytest.raises(ValueError, match="--per_device_train_batch_size 1"):
        in_process(train_cmd(zoo, tmp_path / "b", stage=2, extra=[
            "--pretrain_mm_mlp_adapter", str(baseline_stage1 / "mm_projector.bin"), "--packing_budget", "1024"]))


@pytest.mark.fast
def test_a_sample_longer_than_the_budget_is_a_pack_of_its_own():
    from llava_dpa.data.packing import PackedBatchSampler

    lengths = [30, 200, 120, 950, 80, 400, 10, 3000, 60, 401, 90]
    longer = {i for i, n in enumerate(lengths) if n > 400}
    for seed in range(5):
        packs = PackedBatchSampler(lengths, budget=400, seed=seed).packs()
        assert sorted(i for pack in packs for i in pack) == list(range(len(lengths)))  # none dropped, none cut
        assert sorted(pack for pack in packs if set(pack) & longer) == sorted([i] for i in longer)
        assert all(sum(lengths[i] for i in pack) <= 400 for pack in packs if not set(pack) & longer)


@pytest.mark.fast
def test_in_training_a_sample_longer_than_model_max_length_is_measured_at_it_and_skipped_as_bad(zoo, tmp_path):
    """What training promises (data/packing.py): the budget is at least --model_max_length (refused otherwise:
    test_run_config.py), a sample measures at most --model_max_length, and a longer one is a bad sample: alone in
    its pack, then skipped (the next valid sample takes its place) or, with --strict_data True, named."""
    from types import SimpleNamespace

    from llava.conversation import conv_templates
    from transformers import AutoTokenizer

    from llava_dpa.data.dataset import DataSpec, LazySupervisedDataset, SampleError
    from llava_dpa.data.packing import PackedBatchSampler, expanded_lengths
    from llava_dpa.llava_integration.tower_registry import build_vision_tower

    def sample(sid, words):
        return {"id": sid, "image": "img_000.png", "conversations": [
            {"from": "human", "value": "<image>\n" + "red " * words}, {"from": "gpt", "value": "blue"}]}

    (tmp_path / "data.json").write_text(json.dumps([sample("a", 3), sample("long", 600), sample("b", 5)]))
    tower = build_vision_tower(SimpleNamespace(mm_vision_tower=zoo["clip"], mm_vision_select_layer=-2))

    def dataset(strict):
        spec = DataSpec(conversation=conv_templates["qwen_3"], image_folder=zoo["images"], strict=strict,
                        image_processor=tower.image_processor, image_aspect_ratio="square",
                        tokens_per_image=tower.num_patches)
        tokenizer = AutoTokenizer.from_pretrained(zoo["qwen3_lm"], model_max_length=256)
        return LazySupervisedDataset(str(tmp_path / "data.json"), tokenizer, spec)

    lenient = dataset(strict=False)
    lengths = expanded_lengths(lenient)
    assert lengths[1] == 256 and max(lengths[0], lengths[2]) < 64
    assert [1] in PackedBatchSampler(lengths, budget=256, seed=0).packs()
    assert torch.equal(lenient[1]["input_ids"], lenient[2]["input_ids"]) and lenient.skipped == 1
    with pytest.raises(SampleError, match=r"sample #1 \(id 'long'\): \d+ tokens .* exceeds --model_max_length 256"):
        dataset(strict=True)[1]
