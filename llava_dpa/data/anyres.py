"""LLaVA-NeXT anyres tiling: a resized overview plus tiles of the best-fitting grid resolution.

The grid resolutions arrive parsed and checked (`training/run_config.py`).
"""
from __future__ import annotations

import ast
from typing import Optional

import torch


def tile_size(processor) -> int:
    return int(processor.crop_size["height"])


def process_anyres_image(image, processor, grid_pinpoints: list[tuple[int, int]]):
    """Same output as llava.mm_utils.process_anyres_image, for processors without size['shortest_edge']."""
    from llava.mm_utils import divide_to_patches, resize_and_pad_image, select_best_resolution

    side = tile_size(processor)
    best = select_best_resolution(image.size, [tuple(p) for p in grid_pinpoints])
    padded = resize_and_pad_image(image, best)
    tiles = [image.resize((side, side))] + divide_to_patches(padded, side)
    return torch.stack([processor.preprocess(t, return_tensors="pt")["pixel_values"][0] for t in tiles], dim=0)


class PinpointsError(ValueError):
    """`--image_grid_pinpoints` is not a list of positive (height, width) pairs."""


def parse_pinpoints(text) -> Optional[list[tuple[int, int]]]:
    """`"[(448, 896), (896, 448)]"` (LLaVA-NeXT's spelling) -> [(448, 896), (896, 448)]; literals only."""
    if text is None or isinstance(text, list):
        return None if text is None else [tuple(int(v) for v in p) for p in text]
    example = "\"[(448, 896), (896, 448), (896, 896)]\""
    try:
        points = ast.literal_eval(text)
        parsed = [tuple(int(v) for v in p) for p in points]
    except (ValueError, SyntaxError, TypeError):
        raise PinpointsError(f"--image_grid_pinpoints {text!r} is not a list of (height, width) pairs, e.g. {example}") from None
    if not parsed or any(len(p) != 2 or min(p) <= 0 for p in parsed):
        raise PinpointsError(f"--image_grid_pinpoints {text!r}: give positive (height, width) pairs, e.g. {example}")
    return parsed
