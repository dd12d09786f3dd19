"""The study's arms as data: each is a registry entry (llava_dpa/recipes/paper.py) and says what it changes
against the controlled baseline. Nothing else differs: the runner trains every arm with the same flags
(study/runner.py `study_overrides`), data, schedule and seeds, so an arm's difference from the baseline is
the entry's difference from `llava-next-qwen3-4b`, which the registry states field by field.

The perceivers an arm reads are entries too (`PREREQUISITES`), made per seed: the trained perceiver VLM
(`perceiver-qwen3-0.6b`: the same ViT and the perceiver LM through the baseline's two stages with the
baseline's hyper-parameters, §3.1) and the untrained one (`perceiver-untrained`: `make-perceiver`, the
pretrained ViT and LM joined by a random projector, Table 3's first row).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arm:
    name: str             # as the report names it
    entry: str            # the registry entry it trains
    paper_row: str        # the row of the paper it is the miniature of
    differs_by: str       # what it changes against the baseline
    perceiver: bool       # its vision tower is a perceiver VLM (measured through the perceiver too)


BASELINE = Arm("baseline", "llava-next-qwen3-4b", "Table 1: LLaVA-NeXT-Qwen3-4B (controlled baseline)",
               "nothing: the ViT -> projector -> target", perceiver=False)
ARMS: tuple[Arm, ...] = (
    BASELINE,
    Arm("dpa", "dpa-qwen3-4b", "Table 1: DPA-Qwen3-4B",
        "the vision tower is the trained perceiver VLM (the same ViT + the perceiver LM)", perceiver=True),
    Arm("dpa-untrained", "dpa-qwen3-4b-untrained-perceiver", "Table 3: untrained perceiver",
        "the vision tower is the untrained perceiver (the ViT and the pretrained perceiver LM joined by a random "
        "projector)", perceiver=True),
    Arm("baseline-perceiver-vit", "llava-next-qwen3-4b-perceiver-vit", "Table 4: w/o perceiver LM blocks",
        "the ViT is the one trained inside the trained perceiver (its LM blocks left out)", perceiver=False),
)
#: the perceiver VLMs the arms read, in the order they are made
PREREQUISITES = ("perceiver-qwen3-0.6b", "perceiver-untrained")
#: the standalone perceiver VLMs the report also measures (Table 2, Figure 3)
PERCEIVERS = {"perceiver": "perceiver-qwen3-0.6b", "perceiver-untrained": "perceiver-untrained"}


def arm(name: str) -> Arm:
    for a in ARMS:
        if a.name == name:
            return a
    raise KeyError(f"unknown arm {name!r}; the arms are {', '.join(a.name for a in ARMS)}")
