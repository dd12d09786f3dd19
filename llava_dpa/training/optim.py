"""Optimizer parameter groups: each trainable part of the model at its own learning rate.

Group names are kept in the optimizer's param_groups ("name"), so logs and tests can see them.
"""
from __future__ import annotations

from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
from transformers.trainer_pt_utils import get_parameter_names

# (group, substring of the parameter name, argument holding its learning rate). First match wins.
PARTS = (
    ("perceiver_vit", "vision_tower.perceiver.model.vision_tower.", "mm_vision_tower_lr"),
    ("perceiver_lm", "vision_tower.perceiver.", "perceiver_lr"),
    ("vision_tower", "vision_tower.", "mm_vision_tower_lr"),
    ("projector", "mm_projector", "mm_projector_lr"),
)


def part_of(name: str) -> tuple[str, str | None]:
    for group, key, lr_arg in PARTS:
        if key in name:
            return group, lr_arg
    return "language_model", None


def parameter_groups(model, args) -> list[dict]:
    decay = set(n for n in get_parameter_names(model, ALL_LAYERNORM_LAYERS) if "bias" not in n)
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part, lr_arg = part_of(name)
        lr = getattr(args, lr_arg, None) if lr_arg else None
        lr = args.learning_rate if lr is None else lr
        wd = name in decay
        g = groups.setdefault((part, wd), {"name": f"{part}{'' if wd else '_no_decay'}", "params": [], "lr": lr,
                                           "weight_decay": args.weight_decay if wd else 0.0})
        g["params"].append(param)
    return list(groups.values())
