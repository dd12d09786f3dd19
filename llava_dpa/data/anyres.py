"""LLaVA-NeXT anyres tiling: a resized overview plus tiles of the best-fitting grid resolution.

The grid resolutions arrive parsed and checked (`training/run_config.py`).
"""
from __future__ import annotations

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
