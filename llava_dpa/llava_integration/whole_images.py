"""Image features from a tower that reads whole images at native resolution (patches/12-whole-image-towers).

Such a tower (the Qwen2.5-VL ViT with `--image_aspect_ratio native`, the Qwen-VL perceiver) returns one
[tokens_i, d] tensor per image, where tokens_i depends on the image's size. The projector runs once over
all of them; LLaVA's splice then places image i's tokens at its `<image>` placeholder as it does for any
tower, and a text-only sample consumes its placeholder image's features as nothing.
"""
from __future__ import annotations

import torch


def encode_whole_images(model, images, tower_inputs=None) -> list[torch.Tensor]:
    features = model.get_model().get_vision_tower()(images, **(tower_inputs or {}))
    sizes = [f.shape[0] for f in features]
    projected = model.get_model().mm_projector(torch.cat(features))
    return list(torch.split(projected, sizes))
