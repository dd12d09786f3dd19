"""LLaVA-NeXT anyres tiling: a resized overview plus tiles of the best-fitting grid resolution."""
from __future__ import annotations

import ast

import torch


def parse_pinpoints(grid_pinpoints) -> list[tuple[int, int]]:
    if grid_pinpoints is None:
        raise ValueError("--image_aspect_ratio anyres needs --image_grid_pinpoints, e.g. \"[(448, 896), (896, 448), (896, 896)]\"")
    points = ast.literal_eval(grid_pinpoints) if isinstance(grid_pinpoints, str) else grid_pinpoints
    return [tuple(int(v) for v in p) for p in points]


def tile_size(processor) -> int:
    return int(processor.crop_size["height"])


def check_pinpoints(grid_pinpoints, tile: int, tower_name: str = "the vision tower") -> list[tuple[int, int]]:
    points = parse_pinpoints(grid_pinpoints)
    bad = [p for p in points if p[0] % tile or p[1] % tile]
    if bad:
        raise ValueError(f"--image_grid_pinpoints {bad} are not multiples of {tower_name}'s image size {tile}; "
                         f"use resolutions made of {tile}-pixel tiles, e.g. [({tile}, {2 * tile}), ({2 * tile}, {tile})]")
    return points


def process_anyres_image(image, processor, grid_pinpoints):
    """Same output as llava.mm_utils.process_anyres_image, for processors without size['shortest_edge']."""
    from llava.mm_utils import divide_to_patches, resize_and_pad_image, select_best_resolution

    side = tile_size(processor)
    best = select_best_resolution(image.size, parse_pinpoints(grid_pinpoints))
    padded = resize_and_pad_image(image, best)
    tiles = [image.resize((side, side))] + divide_to_patches(padded, side)
    return torch.stack([processor.preprocess(t, return_tensors="pt")["pixel_values"][0] for t in tiles], dim=0)
