"""Which tower class reads a `--vision_tower`: decided by the tower checkpoint's config, never its name.

One line per tower in TOWERS. A LLaVA-format VLM checkpoint (a config with `mm_vision_tower`) is a
DPA perceiver; `dpa:<dir>` says so explicitly. `dpa:<dir>` where <dir> is a Qwen2.5-VL checkpoint (or a
perceiver written by `import-official`) selects the Qwen-VL-native perceiver; the same folder without
the prefix is the baseline's Qwen2.5-VL ViT tower.

Two entries: `build_vision_tower(cfg)` is LLaVA's drop-in (patch 05 calls it with LLaVA's arguments or a
checkpoint's config, read once into a `TowerOptions` by `towers/options.tower_options`); `build_tower(options)`
is this project's own (a `TowerOptions` built directly).
"""
from __future__ import annotations

import os

from llava_dpa.perceiver.base import DPA_PREFIX, strip_prefix
from llava_dpa.perceiver.qwen_vl import SPEC_TYPE as QWEN_VL_SPEC_TYPE
from llava_dpa.perceiver.qwen_vl_tower import QwenVLPerceiverTower
from llava_dpa.perceiver.tower import PerceiverTower
from llava_dpa.towers import weights as W
from llava_dpa.towers.clip import CLIPTower
from llava_dpa.towers.options import TowerOptions, tower_options
from llava_dpa.towers.qwen2_5_vl import Qwen2_5_VLTower
from llava_dpa.towers.siglip import SigLIPTower
from llava_dpa.towers.siglip2 import SigLIP2Tower

TOWERS = [CLIPTower, SigLIPTower, SigLIP2Tower, Qwen2_5_VLTower]

__all__ = ["DPA_PREFIX", "TOWERS", "TowerOptions", "UnknownVisionTowerError", "build_tower", "build_vision_tower",
           "tower_class_for"]


class UnknownVisionTowerError(ValueError):
    pass


def is_perceiver_config(config_dict: dict) -> bool:
    return "mm_vision_tower" in config_dict


def tower_class_for(name: str, config_dict: dict | None = None):
    if name.startswith(DPA_PREFIX) and config_dict is not None:
        return PerceiverTower if is_perceiver_config(config_dict) else QwenVLPerceiverTower
    if config_dict is None:
        try:
            config_dict = W.read_config_dict(strip_prefix(name))
        except (OSError, ValueError) as exc:
            where = "folder does not exist" if not os.path.exists(strip_prefix(name)) else f"its config.json cannot be read ({exc})"
            raise UnknownVisionTowerError(
                f"--vision_tower {name!r}: {where}. Pass a ViT checkpoint folder (CLIP, SigLIP, SigLIP2, "
                f"Qwen2.5-VL), a LLaVA-format VLM checkpoint (for DPA), or dpa:<a Qwen2.5-VL or imported official "
                f"perceiver> (the Qwen-VL-native DPA perceiver).") from None
    if is_perceiver_config(config_dict):
        return PerceiverTower
    if name.startswith(DPA_PREFIX) or config_dict.get("model_type") == QWEN_VL_SPEC_TYPE:
        return QwenVLPerceiverTower
    model_type = config_dict.get("model_type")
    for cls in TOWERS:
        if model_type in cls.model_types:
            return cls
    known = sorted(t for cls in TOWERS for t in cls.model_types)
    raise UnknownVisionTowerError(
        f"--vision_tower {name!r} has model_type {model_type!r}, which is neither a known ViT ({known}) nor a "
        f"LLaVA-format VLM checkpoint (a config with mm_vision_tower, used as a DPA perceiver).")


def build_tower(options: TowerOptions, **kwargs):
    """The tower (or perceiver) `options` describe; `kwargs` go to its constructor (`delay_load`)."""
    if not options.vision_tower:
        raise UnknownVisionTowerError("no vision tower given: pass --vision_tower <folder>")
    cls = tower_class_for(options.vision_tower, options.mm_vision_tower_config)
    return cls(options, **kwargs)


def build_vision_tower(vision_tower_cfg, **kwargs):
    """Drop-in for llava.model.multimodal_encoder.builder.build_vision_tower: LLaVA's arguments or a checkpoint's
    config, read once into a TowerOptions."""
    return build_tower(tower_options(vision_tower_cfg), **kwargs)
