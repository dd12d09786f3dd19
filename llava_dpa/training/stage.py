"""The stage as a value: LLaVA's two stages, read from a flag, and the rule for which stages the perceiver's
auxiliary loss trains in (run configuration and registry renderer both ask here)."""
from __future__ import annotations

import enum
from collections.abc import Iterable

from llava_dpa.training.errors import RunConfigError


class Stage(enum.IntEnum):
    """LLaVA's two stages. Stage 1 trains the alignment projector on captions; stage 2 tunes on
    instructions."""
    ALIGNMENT = 1
    INSTRUCTION_TUNING = 2

    @property
    def label(self) -> str:
        return "alignment" if self is Stage.ALIGNMENT else "instruction tuning"


def stage_from(value, flag: str) -> Stage:
    try:
        return Stage(int(value))
    except (TypeError, ValueError):
        raise RunConfigError(f"{flag} {value}: use 1 (alignment) or 2 (instruction tuning)") from None


def aux_loss_weight_in(stage: Stage, weight: float, stages: Iterable[int]) -> float:
    """The auxiliary perceiver loss's weight in `stage`: `weight` when the loss is on in that stage, else 0."""
    return float(weight or 0.0) if stage in {stage_from(s, "--perceiver_aux_loss_stages") for s in stages} else 0.0
