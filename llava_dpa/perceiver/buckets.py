"""Length buckets for the perceiver's own sequences (one per image or tile).

A batch of perceiver sequences of different lengths (instruction contexts of different lengths; whole images
at native resolution with their own token counts) padded to the longest would spend the padding's compute
in every layer of the perceiver LM. `length_buckets` groups the sequences so that each group, padded to its
own longest, computes at most `slack` more positions than it holds; the perceiver runs once per group.
Results do not depend on the grouping: causal attention with a padding mask gives a sequence the same states
whatever it is batched with, which tests/test_perceiver_buckets.py checks.

Under DeepSpeed ZeRO-3 the perceiver runs as one padded batch: every rank must call each module the same number
of times per step (each call gathers the module's partitioned weights with every other rank), and the number
of buckets depends on the rank's own samples.
"""
from __future__ import annotations

#: padded positions a group may add, relative to the real positions it holds
SLACK = 0.125


def length_buckets(lengths: list[int], slack: float = SLACK) -> list[list[int]]:
    """Indices of `lengths` in groups, longest first, each within (1 + slack) x its real positions once padded.

    Greedy over the lengths sorted longest first: a group's padded width is its first member's, so a
    sequence joins while width x (members + 1) stays within (1 + slack) x (real positions + its own)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    width = real = 0
    for i in order:
        if groups and width * (len(groups[-1]) + 1) <= (1 + slack) * (real + lengths[i]):
            groups[-1].append(i)
            real += lengths[i]
            continue
        groups.append([i])
        width = real = lengths[i]
    return groups


def padded_positions(lengths: list[int], groups: list[list[int]]) -> int:
    """Positions the groups compute once each is padded to its longest."""
    return sum(max(lengths[i] for i in g) * len(g) for g in groups)


def perceiver_buckets(lengths: list[int], module) -> list[list[int]]:
    """`length_buckets`, or one group in order when `module`'s weights are ZeRO-3 partitioned."""
    if any(hasattr(p, "ds_id") for p in module.parameters()):
        return [list(range(len(lengths)))] if lengths else []
    return length_buckets(lengths)
