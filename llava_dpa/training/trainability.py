"""What trains in a stage: one plan, one function that applies it, one table that shows it.

`trainability_plan(run)` is pure: from the stage and the flags it decides, for every part of the model
(`training/parts.py`), whether it trains in full, through LoRA adapters only, or not at all.
`apply_trainability(model, run)` sets `requires_grad` on every parameter from that plan and returns the
rows of the table printed at the start of training (part, state, parameters, learning rate).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

import torch

from llava_dpa.training.parts import PERCEIVER_PARTS, Part, part_of
from llava_dpa.training.run_config import RunConfig, Stage


class Mode(str, Enum):
    FULL = "trainable"
    LORA = "LoRA"
    FROZEN = "frozen"


def trainability_plan(run: RunConfig) -> dict[Part, Mode]:
    m = run.model
    plan = {part: Mode.FROZEN for part in Part}
    if run.stage is Stage.ALIGNMENT:
        plan[Part.PROJECTOR] = Mode.FULL                           # Table 6: stage 1 trains the projection only
        if run.aux_loss_weight:                                     # a stage-1 auxiliary loss must reach the perceiver
            plan.update({p: Mode.FULL for p in PERCEIVER_PARTS})
    else:
        plan[Part.LANGUAGE_MODEL] = Mode.FROZEN if m.freeze_backbone else Mode.FULL
        plan[Part.PROJECTOR] = Mode.FULL
        plan[Part.IMAGE_NEWLINE] = Mode.FULL
        if m.unfreeze_mm_vision_tower:
            plan[Part.VISION_TOWER] = Mode.FULL
        if run.is_perceiver and not m.freeze_perceiver:            # DPA fine-tunes the whole perceiver in stage 2
            plan.update({p: Mode.FULL for p in PERCEIVER_PARTS})
            if not run.aux_loss_weight:                             # the features never read the LM head
                plan[Part.PERCEIVER_LM_HEAD] = Mode.FROZEN
        if run.training.lora_enable:
            for part in run.lora_parts:
                if plan[part] is Mode.FULL or part is Part.LANGUAGE_MODEL:
                    plan[part] = Mode.LORA
    if run.training.freeze_mm_mlp_adapter:
        plan[Part.PROJECTOR] = Mode.FROZEN
    return plan


def lora_target_modules(model, run: RunConfig) -> list[str]:
    """Full names of the nn.Linear modules that get LoRA: those of the parts the plan trains through LoRA,
    never an LM head. (llava matched leaf names such as q_proj, which also hit the towers' layers.)"""
    parts = {part for part, mode in trainability_plan(run).items() if mode is Mode.LORA}
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


def apply_trainability(model, run: RunConfig) -> list[PartRow]:
    plan = trainability_plan(run)
    counts: dict[Part, list[int]] = {}
    for name, param in model.named_parameters():
        part = part_of(name)
        mode = plan[part]
        trains = mode is Mode.FULL or (mode is Mode.LORA and "lora_" in name)
        if trains and not param.is_floating_point():
            trains = False  # a quantized 4/8-bit weight
        param.requires_grad_(trains)
        total, trainable = counts.setdefault(part, [0, 0])
        counts[part] = [total + _numel(param), trainable + (_numel(param) if trains else 0)]
    return [PartRow(part, plan[part], total, trainable, run.learning_rate_of(part) if trainable else None)
            for part, (total, trainable) in ((p, counts[p]) for p in Part if p in counts)]


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
