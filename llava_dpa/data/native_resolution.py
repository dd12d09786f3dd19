"""Native dynamic resolution (`--image_aspect_ratio native`): each image whole, as Qwen2.5-VL reads it.

The image is resized to the nearest height and width that are multiples of patch_size x merge_size (28
for Qwen2.5-VL) with its pixel count inside [min_pixels, max_pixels] (Qwen2-VL's `smart_resize`), with
bicubic resampling, scaled to [0, 1] and normalised with the CLIP mean and std: what Qwen2-VL's image
processor computes, written here so the two transformers lines cannot differ. The tensor stays
[3, H, W]; the tower cuts it into patches. Its visual tokens: (H / 28) x (W / 28).

The official release trains with max_pixels 262,144 (PT/SFT scripts line 14) and Qwen2-VL's default
min_pixels 3,136.
"""
from __future__ import annotations

import math

import numpy as np
import torch

DEFAULT_MIN_PIXELS = 56 * 56
OFFICIAL_MAX_PIXELS = 262_144
# What the official release's perceiver checkpoints record (preprocessor_config.json)
OFFICIAL_PIXEL_LIMITS = {"min_pixels": DEFAULT_MIN_PIXELS, "max_pixels": OFFICIAL_MAX_PIXELS}
# Qwen2-VL's image processor writes this max_pixels when none was chosen; a recorded value equal to it means unset.
QWEN_PROCESSOR_DEFAULT_MAX_PIXELS = 12_845_056
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


class NativeResolutionError(ValueError):
    pass


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    if max(height, width) / min(height, width) > 200:
        raise NativeResolutionError(f"image of {width}x{height}: an aspect ratio above 200 cannot be read at native "
                                    f"resolution; crop or pad it")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


class NativeResolutionProcessor:
    """The image processor LLaVA's data code and `process_images` call (preprocess, __call__, crop_size,
    image_mean), at native resolution."""

    def __init__(self, patch_size: int, merge_size: int, min_pixels: int | None = None, max_pixels: int | None = None,
                 image_mean=None, image_std=None):
        self.patch_size, self.merge_size = int(patch_size), int(merge_size)
        self.factor = self.patch_size * self.merge_size
        self.min_pixels = int(min_pixels or DEFAULT_MIN_PIXELS)
        self.max_pixels = int(max_pixels or OFFICIAL_MAX_PIXELS)
        if self.min_pixels < self.factor ** 2:
            raise NativeResolutionError(f"--min_pixels {self.min_pixels} is below one merged {self.factor}x{self.factor} "
                                        f"patch ({self.factor ** 2} pixels)")
        if self.max_pixels < max(self.min_pixels, self.factor ** 2):
            raise NativeResolutionError(
                f"--max_pixels {self.max_pixels} is below the ViT's minimum ({max(self.min_pixels, self.factor ** 2)} "
                f"pixels: --min_pixels, and one {self.factor}x{self.factor} merged patch); raise it")
        self.image_mean = list(image_mean or CLIP_MEAN)
        self.image_std = list(image_std or CLIP_STD)
        side = int(math.sqrt(self.min_pixels) // self.factor * self.factor) or self.factor
        # LLaVA's data code makes a text-only sample's placeholder image from crop_size.
        self.crop_size = {"height": side, "width": side}
        self.size = {"shortest_edge": side}

    def to_dict(self) -> dict:
        return {"resolution": "native", "patch_size": self.patch_size, "merge_size": self.merge_size,
                "min_pixels": self.min_pixels, "max_pixels": self.max_pixels,
                "image_mean": self.image_mean, "image_std": self.image_std}

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def tokens_for(self, width: int, height: int) -> int:
        h, w = self.target_size(width, height)
        return (h // self.factor) * (w // self.factor)

    def preprocess(self, image, return_tensors="pt") -> dict:
        from PIL import Image

        images = image if isinstance(image, (list, tuple)) else [image]
        out = []
        for img in images:
            img = img.convert("RGB")
            h, w = self.target_size(*img.size)
            pixels = np.asarray(img.resize((w, h), resample=Image.BICUBIC))
            x = (torch.from_numpy(pixels.astype(np.float64) * (1 / 255)).to(torch.float32)
                 - torch.tensor(self.image_mean, dtype=torch.float32)) / torch.tensor(self.image_std, dtype=torch.float32)
            out.append(x.permute(2, 0, 1).contiguous())
        return {"pixel_values": out}

    def __call__(self, images, return_tensors="pt") -> dict:
        values = self.preprocess(images)["pixel_values"]
        same = all(v.shape == values[0].shape for v in values)
        return {"pixel_values": torch.stack(values) if same else values}


def patchify(image: torch.Tensor, patch_size: int, merge_size: int, temporal_patch_size: int) -> torch.Tensor:
    """[3, H, W] -> [(H/p)(W/p), 3 * t * p * p] in Qwen2-VL's patch order: the still image repeated over the
    temporal patch, patches grouped by merge windows."""
    c, h, w = image.shape
    p, m, t = patch_size, merge_size, temporal_patch_size
    gh, gw = h // p, w // p
    if gh % m or gw % m:
        raise NativeResolutionError(f"an image of {w}x{h} pixels is not made of {p * m}-pixel merged patches")
    x = image.unsqueeze(0).expand(t, c, h, w).reshape(t, c, gh // m, m, p, gw // m, m, p)
    return x.permute(2, 5, 3, 6, 1, 0, 4, 7).reshape(gh * gw, c * t * p * p)


def whole_images(images, device, dtype) -> list[torch.Tensor]:
    """A batch as LLaVA passes it ([B, 3, H, W], or a list of [3, H, W] / [1, 3, H, W] of different sizes) ->
    one [3, H, W] tensor per image, on the tower's device and dtype."""
    if torch.is_tensor(images):
        images = list(images) if images.ndim == 4 else [images]
    out = []
    for x in images:
        if x.ndim == 4:
            if x.shape[0] != 1:
                raise NativeResolutionError(f"an image arrived as {x.shape[0]} tiles; a tower at native resolution "
                                            f"reads whole images (--image_aspect_ratio native)")
            x = x[0]
        out.append(x.to(device=device, dtype=dtype))
    return out


def patches_and_grids(images: list[torch.Tensor], vision_config) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Whole images -> (all their patches, concatenated; their [1, h, w] patch grids; each one's merged-token
    count), the inputs of a Qwen-VL vision model."""
    p, m, t = vision_config.patch_size, vision_config.spatial_merge_size, vision_config.temporal_patch_size
    grids = [(1, x.shape[1] // p, x.shape[2] // p) for x in images]
    patches = torch.cat([patchify(x, p, m, t) for x in images])
    grid = torch.tensor(grids, device=patches.device)
    return patches, grid, merged_counts(images, vision_config)


def merged_counts(images: list[torch.Tensor], vision_config) -> list[int]:
    """Each whole image's number of merged visual tokens, without patchifying it."""
    p, m = vision_config.patch_size, vision_config.spatial_merge_size
    return [(x.shape[1] // p) * (x.shape[2] // p) // (m * m) for x in images]
