"""A batch's images given as their tower's output: what a feature cache (data/feature_cache.py) hands over.

One tensor per image, shaped as the tower's output for that image's pixels: [tokens, d] for one tile ([3, H, W]),
[tiles, tokens, d] for anyres tiles ([tiles, 3, H, W]), [tokens_i, d] for a whole image at native resolution.
`llava_integration/multimodal_inputs.image_features` takes them where it would have run the tower, so a
cached batch and a pixel batch go through the same projector, tile merge and splice.

A list subclass, so that transformers' Trainer and accelerate move it to the device as they move any list and
keep its type.
"""
from __future__ import annotations

import torch


class TowerFeatures(list):
    def to(self, *args, **kwargs) -> "TowerFeatures":
        return TowerFeatures(x.to(*args, **kwargs) for x in self)

    @staticmethod
    def of(features: torch.Tensor | list) -> "TowerFeatures":
        """A tower's output for a pixel batch ([N, tokens, d] for N one-tile images, or a list), as one per image."""
        return TowerFeatures(features if isinstance(features, list) else features.unbind(0))
