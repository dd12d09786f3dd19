"""Which tower class reads a `--vision_tower`: decided by the tower checkpoint's config, never its name.

One line per tower in TOWERS. A LLaVA-format VLM checkpoint (a config with `mm_vision_tower`) is a
DPA perceiver; `dpa:<dir>` says so explicitly.
"""
from __future__ import annotations

import os

from llava_dpa.perceiver.tower import DPA_PREFIX, PerceiverTower
from llava_dpa.towers import weights as W
from llava_dpa.towers.clip import CLIPTower
from llava_dpa.towers.qwen2_5_vl import Qwen2_5_VLTower
from llava_dpa.towers.siglip import SigLIPTower
from llava_dpa.towers.siglip2 import SigLIP2Tower

TOWERS = [CLIPTower, SigLIPTower, SigLIP2Tower, Qwen2_5_VLTower]

__all__ = ["DPA_PREFIX", "TOWERS", "UnknownVisionTowerError", "build_vision_tower", "tower_class_for"]


class UnknownVisionTowerError(ValueError):
    pass


def tower_name(cfg) -> str | None:
    return getattr(cfg, "mm_vision_tower", getattr(cfg, "vision_tower", None))


def is_perceiver_config(config_dict: dict) -> bool:
    return "mm_vision_tower" in config_dict


def tower_class_for(name: str, config_dict: dict | None = None):
    if name.startswith(DPA_PREFIX):
        return PerceiverTower
    if config_dict is None:
        try:
            config_dict = W.read_config_dict(name)
        except (OSError, ValueError) as exc:
            where = "folder does not exist" if not os.path.exists(name) else f"its config.json cannot be read ({exc})"
            raise UnknownVisionTowerError(
                f"--vision_tower {name!r}: {where}. Pass a ViT checkpoint folder (CLIP, SigLIP, SigLIP2, "
                f"Qwen2.5-VL) or a LLaVA-format VLM checkpoint (for DPA).") from None
    if is_perceiver_config(config_dict):
        return PerceiverTower
    model_type = config_dict.get("model_type")
    for cls in TOWERS:
        if model_type in cls.model_types:
            return cls
    known = sorted(t for cls in TOWERS for t in cls.model_types)
    raise UnknownVisionTowerError(
        f"--vision_tower {name!r} has model_type {model_type!r}, which is neither a known ViT ({known}) nor a "
        f"LLaVA-format VLM checkpoint (a config with mm_vision_tower, used as a DPA perceiver).")


def build_vision_tower(vision_tower_cfg, **kwargs):
    """Drop-in for llava.model.multimodal_encoder.builder.build_vision_tower."""
    name = tower_name(vision_tower_cfg)
    if not name:
        raise UnknownVisionTowerError("no vision tower given: pass --vision_tower <folder>")
    embedded = getattr(vision_tower_cfg, "mm_vision_tower_config", None)
    cls = tower_class_for(name, embedded)
    return cls(name, args=vision_tower_cfg, **kwargs)
