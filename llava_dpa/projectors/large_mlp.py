"""The "w/ large MLP" ablation (Table 4): a plain-ViT baseline whose alignment projector is an MLP as
large as the perceiver's LM (Qwen3-0.6B), to separate the perceiver's language prior from its size.

`--mm_projector_type large_mlp --mm_projector_width W --mm_projector_depth D`: D linear layers with GELU
between them, hidden width W. `llava-dpa projector-budget` picks W (or D) to match a parameter budget
within 1%.
"""
from __future__ import annotations

import math

import torch.nn as nn

PROJECTOR_TYPE = "large_mlp"


def build_large_mlp(config) -> nn.Sequential:
    width = getattr(config, "mm_projector_width", None)
    depth = getattr(config, "mm_projector_depth", None)
    if not width or not depth or depth < 2:
        raise ValueError("--mm_projector_type large_mlp needs --mm_projector_width W and --mm_projector_depth D >= 2 "
                         "(see `llava-dpa projector-budget`)")
    dims = [config.mm_hidden_size] + [width] * (depth - 1) + [config.hidden_size]
    layers = []
    for i in range(depth):
        if i:
            layers.append(nn.GELU())
        layers.append(nn.Linear(dims[i], dims[i + 1]))
    return nn.Sequential(*layers)


def mlp_parameters(d_in: int, d_out: int, width: int, depth: int) -> int:
    dims = [d_in] + [width] * (depth - 1) + [d_out]
    return sum(dims[i] * dims[i + 1] + dims[i + 1] for i in range(depth))


def width_for_budget(d_in: int, d_out: int, depth: int, budget: int) -> int:
    """The width whose MLP has the parameter count closest to `budget`."""
    if depth < 2:
        raise ValueError("depth must be >= 2")
    a = depth - 2                       # width^2 terms
    b = d_in + d_out + depth - 1 + a    # width terms (weights + biases)
    c = d_out - budget
    w = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a) if a else -c / b
    candidates = {max(1, math.floor(w)), max(1, math.ceil(w))}
    return min(candidates, key=lambda x: abs(mlp_parameters(d_in, d_out, x, depth) - budget))


def depth_for_budget(d_in: int, d_out: int, width: int, budget: int) -> int:
    return min(range(2, 64), key=lambda d: abs(mlp_parameters(d_in, d_out, width, d) - budget))


def plan(d_in: int, d_out: int, budget: int, width: int | None = None, depth: int | None = None) -> dict:
    if width and depth:
        raise ValueError("give --width or --depth, not both: the other is chosen to meet the budget")
    if width:
        depth = depth_for_budget(d_in, d_out, width, budget)
    else:
        depth = depth or 2
        width = width_for_budget(d_in, d_out, depth, budget)
    params = mlp_parameters(d_in, d_out, width, depth)
    return {"width": width, "depth": depth, "parameters": params, "budget": budget,
            "relative_error": (params - budget) / budget}
