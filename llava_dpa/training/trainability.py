"""What trains in a stage: one plan, one function that applies it, one table that shows it.

`trainability_plan(choices)` is pure and the only place that decides what trains: from the stage and the flags
(`TrainingChoices`) it decides, for every part of the model (`training/parts.py`), whether it trains in full,
through LoRA adapters only, or not at all. The trainer (`apply_trainability`), the run's validation and the
registry's renderer all ask it. `apply_trainability(model, run)` sets `requires_grad` on every parameter from that
plan and returns the rows of the table printed at the start of training (part, state, parameters, learning rate).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

import torch

from llava_dpa.training.parts import PERCEIVER_PARTS, Part, part_of
from llava_dpa.training.saving import is_bias, lora_layer_biases
from llava_dpa.training.stage import Stage


class Mode(str, Enum):
    FULL = "trainable"
    LORA = "LoRA"
    FROZEN = "frozen"


@dataclass(frozen=True)
class TrainingChoices:
    """The settings that decide what trains, from the run's flags (`RunConfig.choices`) or a registry entry."""
    stage: Stage
    perceiver: bool                       # the tower is a DPA perceiver
    aux_loss: bool = False                # the perceiver's auxiliary loss is on in this stage
    freeze_backbone: bool = False
    unfreeze_vision_tower: bool = False
    freeze_perceiver: bool = False
    freeze_projector: bool = False
    lora_parts: tuple[Part, ...] = field(default=())  # empty: no LoRA


def trainability_plan(c: TrainingChoices) -> dict[Part, Mode]:
    plan = {part: Mode.FROZEN for part in Part}
    if c.stage is Stage.ALIGNMENT:
        plan[Part.PROJECTOR] = Mode.FULL                           # Table 6: stage 1 trains the projection only
        if c.aux_loss:                                              # a stage-1 auxiliary loss must reach the perceiver
            plan.update({p: Mode.FULL for p in PERCEIVER_PARTS})
    else:
        plan[Part.LANGUAGE_MODEL] = Mode.FROZEN if c.freeze_backbone else Mode.FULL
        plan[Part.PROJECTOR] = Mode.FULL
        plan[Part.IMAGE_NEWLINE] = Mode.FULL
        if c.unfreeze_vision_tower:
            plan[Part.VISION_TOWER] = Mode.FULL
        if c.perceiver and not c.freeze_perceiver:                  # DPA fine-tunes the whole perceiver in stage 2
            plan.update({p: Mode.FULL for p in PERCEIVER_PARTS})
            if not c.aux_loss:                                      # the features never read the LM head
                plan[Part.PERCEIVER_LM_HEAD] = Mode.FROZEN
        for part in c.lora_parts:
            if plan[part] is Mode.FULL or part is Part.LANGUAGE_MODEL:
                plan[part] = Mode.LORA
    if c.freeze_projector:
        plan[Part.PROJECTOR] = Mode.FROZEN
    return plan


def tower_trains(plan: dict[Part, Mode]) -> bool:
    """Whether any part of the vision tower or perceiver trains (in full or through LoRA)."""
    return any(plan[p] is not Mode.FROZEN for p in (Part.VISION_TOWER, *PERCEIVER_PARTS))


def lora_target_modules(model, run) -> list[str]:
    """Full names of the nn.Linear modules that get LoRA: those of the parts the plan trains through LoRA,
    never an LM head. (llava matched leaf names such as q_proj, which also hit the towers' layers.)"""
    parts = {part for part, mode in trainability_plan(run.choices).items() if mode is Mode.LORA}
    names = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and part_of(name + ".") in parts and not name.endswith("lm_head"):
            names.append(name)  # bitsandbytes' 4/8-bit layers subclass nn.Linear
    return names


def lora_target_pattern(names: list[str]) -> str:
    # A string is matched with re.fullmatch; a list would match by suffix, and the perceiver's LM has the
    # same module names under a longer prefix.
    return "(?:" + "|".join(re.escape(n) for n in names) + ")"


@dataclass
class PartRow:
    part: Part
    mode: Mode
    parameters: int
    trainable: int
    learning_rate: float | None


def apply_trainability(model, run) -> list[PartRow]:
    """`run`: the RunConfig (its `choices` and per-part learning rates)."""
    plan = trainability_plan(run.choices)
    lora_biases = lora_trained_biases(model, run.training.lora_bias) if run.training.lora_enable else set()
    counts: dict[Part, list[int]] = {}
    for name, param in model.named_parameters():
        part = part_of(name)
        mode = plan[part]
        trains = mode is Mode.FULL or (mode is Mode.LORA and ("lora_" in name or name in lora_biases))
        if trains and not param.is_floating_point():
            trains = False  # a quantized 4/8-bit weight
        param.requires_grad_(trains)
        total, trainable = counts.setdefault(part, [0, 0])
        counts[part] = [total + _numel(param), trainable + (_numel(param) if trains else 0)]
    return [PartRow(part, plan[part], total, trainable, run.learning_rate_of(part) if trainable else None)
            for part, (total, trainable) in ((p, counts[p]) for p in Part if p in counts)]


def lora_trained_biases(model, bias: str) -> set[str]:
    """The biases `--lora_bias` trains beside the adapters, as PEFT's LoRA defines it: `all` every bias, `lora_only`
    those of the modules with adapters, `none` none. Only inside parts that train through LoRA (`apply_trainability`):
    a part the plan freezes stays frozen, biases included."""
    if bias == "none":
        return set()
    if bias == "all":
        return {name for name, _ in model.named_parameters() if is_bias(name)}
    if bias == "lora_only":
        return lora_layer_biases(model)
    raise ValueError(f"unknown --lora_bias {bias!r}: use none, all or lora_only")


def _numel(param) -> int:
    return int(getattr(param, "ds_numel", 0) or param.numel())  # ZeRO-3 partitions report their full size


def trainability_table(rows: list[PartRow], stage: Stage) -> str:
    lines = [f"stage {int(stage)} ({stage.label}): what trains",
             f"  {'part':<20} {'state':<10} {'parameters':>14} {'trainable':>14}  learning rate"]
    for r in rows:
        lr = f"{r.learning_rate:g}" if r.learning_rate is not None else "-"
        lines.append(f"  {r.part.value:<20} {r.mode.value if r.trainable else Mode.FROZEN.value:<10} "
                     f"{r.parameters:>14,} {r.trainable:>14,}  {lr}")
    total, trainable = sum(r.parameters for r in rows), sum(r.trainable for r in rows)
    lines.append(f"  {'total':<20} {'':<10} {total:>14,} {trainable:>14,}")
    return "\n".join(lines)
