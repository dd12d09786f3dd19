"""Padding-free packing for training (`--packing_budget N`).

Samples are grouped into packs whose expanded length (text tokens plus each image's visual tokens: anyres
tiles, perceiver outputs, native-resolution counts) stays within N tokens; one pack is one training batch.
The model splices every sample's images as usual, then lays the samples end to end in one row
(`pack_rows`): each sample attends only to itself (a block-diagonal causal mask with sdpa or eager;
position ids that restart per sample, which flash-attention-2 reads as varlen boundaries), and no label
crosses a sample boundary. The target thus computes no padding at all.

The packs are cut once (next-fit over a shuffle seeded by --seed) and each epoch trains them in an order
seeded by --seed and the epoch: a resumed run, which skips the batches it already trained, sees the same
packs, and every epoch has as many packs as the Trainer counted.

A sample longer than the budget is a pack of its own (`PackedBatchSampler`), never truncated by packing. Training
never meets one: the budget must be at least --model_max_length (`training/validation.py` refuses less), a sample
measures at most --model_max_length (`dataset.expanded_length`), and one longer than that is a bad sample, skipped
like any other (its place taken by the next valid sample) or, with --strict_data True, the run stops naming it.
"""
from __future__ import annotations

import random

import torch

from llava_dpa.data.tokenization import IGNORE_INDEX


def expanded_lengths(dataset) -> list[int]:
    """Every sample's expanded length (`dataset.expanded_length`), measured once across the processes.

    Measuring tokenizes every sample (about 700 samples/s per process with the Qwen3 tokenizer on CPU, so some
    15 minutes for LLaVA-665K). Each rank measures every world-th sample and the ranks exchange their shares, so
    the time divides by the number of processes and every rank ends with the same list (the same packs). A rank
    that fails, or that loaded a dataset of another size, makes every rank raise after the exchange, rather
    than leave the others waiting in it until the process-group timeout."""
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world == 1:
        return [dataset.expanded_length(i) for i in range(len(dataset))]
    rank = dist.get_rank()
    share = {"total": len(dataset), "lengths": [], "problem": None}
    try:
        share["lengths"] = [dataset.expanded_length(i) for i in range(rank, len(dataset), world)]
    except Exception as exc:  # re-raised below, here with its traceback, on the other ranks by name
        share["problem"] = f"{type(exc).__name__}: {exc}"
        failure = exc
    shares = [None] * world
    dist.all_gather_object(shares, share)
    if share["problem"] is not None:
        raise failure
    failed = [(r, s["problem"]) for r, s in enumerate(shares) if s["problem"] is not None]
    if failed:
        raise RuntimeError(f"measuring the samples for --packing_budget failed on rank {failed[0][0]}: {failed[0][1]}")
    totals = sorted({s["total"] for s in shares})
    if len(totals) > 1:
        raise ValueError(f"the processes loaded datasets of {totals} samples: every node needs the same --data_path")
    return interleave([s["lengths"] for s in shares], len(dataset))


def interleave(shares: list[list[int]], total: int) -> list[int]:
    """Rank r's share holds samples r, r + world, r + 2 world, ...; the whole list in sample order."""
    world = len(shares)
    merged = [0] * total
    for rank, share in enumerate(shares):
        if len(share) != len(range(rank, total, world)):
            raise ValueError(f"rank {rank} measured {len(share)} samples, expected {len(range(rank, total, world))}: "
                             "the processes loaded different datasets (check --data_path on every node)")
        merged[rank::world] = share
    return merged


class PackOrder:
    """The order packs are trained in: a shuffle seeded by --seed and the epoch.

    It is the batch sampler's `sampler`, as torch's BatchSampler has one, so that accelerate's
    `set_epoch` reaches it also when it shards the packs over processes (it looks for
    `batch_sampler.sampler.set_epoch`, one level deeper once sharded)."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = int(size), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        order = list(range(self.size))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return iter(order)

    def __len__(self) -> int:
        return self.size


class PackedBatchSampler:
    """Batches of sample indices, each a pack of at most `budget` expanded tokens (a longer sample alone).

    The packs are cut once, next-fit over a shuffle seeded by --seed; each epoch trains them in `PackOrder`'s
    order. Their number is thus the same in every epoch, which transformers' Trainer assumes when it sizes
    the schedule and finds where a resumed run stands (packs cut anew per epoch would vary in number)."""

    def __init__(self, lengths: list[int], budget: int, seed: int = 0):
        self.lengths, self.budget = list(lengths), int(budget)
        order = list(range(len(self.lengths)))
        random.Random(int(seed)).shuffle(order)
        self._packs = self._next_fit(order)
        self.sampler = PackOrder(len(self._packs), seed)

    def _next_fit(self, order: list[int]) -> list[list[int]]:
        packs, current, used = [], [], 0
        for i in order:
            n = self.lengths[i]
            if current and used + n > self.budget:
                packs.append(current)
                current, used = [], 0
            current.append(i)
            used += n
        if current:
            packs.append(current)
        return packs

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def packs(self) -> list[list[int]]:
        """This epoch's packs, in the order they train."""
        return [self._packs[i] for i in self.sampler]

    def __iter__(self):
        return iter(self.packs())

    def __len__(self) -> int:
        return len(self._packs)


def pack_rows(inputs_embeds, attention_mask, labels):
    """Padded rows [B, L, d] (after the image splice) -> one row of the rows' real positions end to end, with its
    block-diagonal causal mask [1, 1, T, T] (additive), restarting positions and boundary-safe labels."""
    mask = attention_mask.bool() if attention_mask is not None else torch.ones(inputs_embeds.shape[:2], dtype=torch.bool,
                                                                                device=inputs_embeds.device)
    lengths = mask.sum(1).tolist()
    embeds = inputs_embeds[mask].unsqueeze(0)
    positions = torch.cat([torch.arange(n, device=embeds.device) for n in lengths]).unsqueeze(0)
    packed_labels = None
    if labels is not None:
        rows = [labels[i][mask[i]].clone() for i in range(labels.shape[0])]
        for row in rows:  # the first token of a sample is never a target: nothing before it belongs to it
            row[:1] = IGNORE_INDEX
        packed_labels = torch.cat(rows).unsqueeze(0)
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=embeds.device),
                                      torch.tensor(lengths, device=embeds.device))
    allowed = (segment[:, None] == segment[None, :]) & torch.ones(len(segment), len(segment), dtype=torch.bool,
                                                                    device=embeds.device).tril()
    block = torch.zeros(allowed.shape, dtype=embeds.dtype, device=embeds.device)
    block.masked_fill_(~allowed, torch.finfo(embeds.dtype).min)
    return embeds, block[None, None], positions, packed_labels
