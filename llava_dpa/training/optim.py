"""Optimizer parameter groups: each trainable part of the model at its own learning rate.

Parts come from `training/parts.py` and their learning rates from the run configuration, the same
source as the start-of-training table. Group names ("perceiver_lm", "projector_no_decay", ...) are kept
in the optimizer's param_groups, so logs and tests can see them.
"""
from __future__ import annotations

from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
from transformers.trainer_pt_utils import get_parameter_names

from llava_dpa.training.parts import part_of


def parameter_groups(model, run) -> list[dict]:
    decay = set(n for n in get_parameter_names(model, ALL_LAYERNORM_LAYERS) if "bias" not in n)
    weight_decay = run.training.weight_decay
    groups: dict[tuple, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = part_of(name)
        wd = name in decay
        group = groups.setdefault((part, wd), {"name": f"{part.value}{'' if wd else '_no_decay'}", "params": [],
                                               "lr": run.learning_rate_of(part),
                                               "weight_decay": weight_decay if wd else 0.0})
        group["params"].append(param)
    return list(groups.values())
