"""The perceiver's own sequences run in length buckets: the features are those of each sequence run alone, and the
perceiver LM computes at most SLACK more positions than the sequences hold (one batch padded to the longest
would compute several times more)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from test_qwen_vl_perceiver import images, tower_for


@pytest.mark.fast
def test_length_buckets_partition_and_bound_the_padding():
    from llava_dpa.perceiver.buckets import SLACK, length_buckets, padded_positions

    lengths = [1000, 90, 100, 95, 990, 7, 300, 310, 100, 8]
    groups = length_buckets(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert max(lengths[i] for i in g) * len(g) <= (1 + SLACK) * sum(lengths[i] for i in g)
    assert padded_positions(lengths, groups) <= (1 + SLACK) * sum(lengths)
    assert padded_positions(lengths, [list(range(len(lengths)))]) > 3 * sum(lengths)  # what one batch would cost
    assert length_buckets([64] * 5) == [[0, 1, 2, 3, 4]]   # equal lengths: one batch, as before
    assert length_buckets(lengths) == groups and length_buckets([]) == []


@pytest.mark.fast
def test_under_zero3_the_perceiver_runs_one_batch_in_order():
    """Every ZeRO-3 rank must call each module equally often; the bucket count depends on the rank's samples."""
    from llava_dpa.perceiver.buckets import perceiver_buckets

    module = torch.nn.Linear(2, 2)
    lengths = [5, 900, 7, 300]
    assert len(perceiver_buckets(lengths, module)) > 1
    module.weight.ds_id = 0   # what DeepSpeed's zero.Init marks a partitioned parameter with
    assert perceiver_buckets(lengths, module) == [[0, 1, 2, 3]]


def positions_computed(module, calls):
    """A hook recording the [batch, width] of every call to `module`."""
    def hook(_, args, kwargs):
        x = kwargs.get("inputs_embeds", args[0] if args else None)
        calls.append(tuple(x.shape[:2]))
    return module.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.fast
def test_qwen_vl_perceiver_buckets_whole_images_of_different_sizes(zoo):
    tower = tower_for("dpa:" + zoo["qwen2_5_vl"], zoo)
    pixels = tower.image_processor(images((16, 24), (16, 16), (96, 96)))["pixel_values"]
    contexts = [[[]], [[], []]]   # sample 0: a small image; sample 1: a small and a large one (its bucket runs first)
    calls = []
    handle = positions_computed(tower.perceiver.language_model, calls)
    with torch.no_grad():
        together = tower(pixels, contexts=contexts)
    handle.remove()
    with torch.no_grad():
        alone = tower(pixels[:1], contexts=[[[]]]) + tower(pixels[1:], contexts=[[[], []]])
    assert [f.shape for f in together] == [f.shape for f in alone]
    assert max((a - b).abs().max().item() for a, b in zip(together, alone)) < 1e-5
    prefix = len(tower.prefix_ids)
    real = prefix + together[0].shape[0] + prefix + together[1].shape[0] + together[2].shape[0]
    assert len(calls) == 2 and sum(b * w for b, w in calls) == real   # no padded position at all
    assert 2 * max(w for _, w in calls) > 3 * real / 2                # one padded batch would have cost more


def test_instruction_contexts_of_different_lengths_run_in_buckets(zoo, perceiver):
    from llava_dpa.perceiver.buckets import SLACK
    from llava_dpa.llava_integration.tower_registry import build_vision_tower

    tower = build_vision_tower(SimpleNamespace(mm_vision_tower=str(perceiver), mm_vision_select_layer=-1,
                                               perceiver_instruction_context=True))
    tower.load_model()
    pixels = torch.randn(3, 3, tower.image_size, tower.image_size)
    contexts = [[5, 6], list(range(10, 10 + 4 * tower.num_patches)), [7, 8, 9]]
    calls = []
    handle = positions_computed(tower.perceiver.get_model(), calls)
    with torch.no_grad():
        together = tower.encode(pixels, contexts)
    handle.remove()
    with torch.no_grad():
        alone = torch.cat([tower.encode(pixels[i:i + 1], [c]) for i, c in enumerate(contexts)])
    assert together.shape == alone.shape and (together - alone).abs().max() < 1e-5
    real = sum(len(c) + tower.num_patches for c in contexts)
    assert len(calls) == 2 and sum(b * w for b, w in calls) <= (1 + SLACK) * real
