"""A LLaVA-format checkpoint assembled from a target LLM folder and a vision tower, by the code that trains one.

The target class comes from the target's model_type; the tower and projector are built by llava's own
`initialize_vision_modules` (as stage 1 builds them), the tower records what rebuilds it, and the result is
saved as a self-contained checkpoint. `import-official` and `llava-dpa bench --preset` use it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from llava_dpa.language_models import target_class_for
from llava_dpa.llava_integration.tower_registry import build_tower
from llava_dpa.towers.options import TowerOptions
from llava_dpa.towers.weights import read_config_dict


@dataclass(frozen=True)
class VisionModuleArgs:
    """What LLaVA's `initialize_vision_modules(model_args)` reads of its ModelArguments once the tower is built:
    it records the tower's name and layer choice in the config and builds (and optionally loads) the projector."""
    vision_tower: str
    mm_vision_select_layer: int
    mm_vision_select_feature: str
    mm_projector_type: str
    pretrain_mm_mlp_adapter: str | None = None
    mm_patch_merge_type: str = "flat"


def initialize_vision_modules(model, options: TowerOptions, *, projector: str,
                              pretrain_mm_mlp_adapter: str | None = None, patch_merge_type: str = "flat"):
    """The tower `options` describe, and the projector, built into `model` as stage 1 builds them: the tower by
    `build_tower`, the rest by LLaVA's own `initialize_vision_modules` (which keeps a tower it finds in place)."""
    model.get_model().vision_tower = build_tower(options)
    model.get_model().initialize_vision_modules(VisionModuleArgs(
        vision_tower=options.vision_tower, mm_vision_select_layer=options.mm_vision_select_layer,
        mm_vision_select_feature=options.mm_vision_select_feature, mm_projector_type=projector,
        pretrain_mm_mlp_adapter=pretrain_mm_mlp_adapter, mm_patch_merge_type=patch_merge_type))
    return model.get_vision_tower()


def assemble(target_dir: str | Path, vision_tower: str, output: str | Path, tokenizer, *, projector: str,
             conv_version: str, image_aspect_ratio: str = "square", pretrain_mm_mlp_adapter: str | None = None,
             dtype: torch.dtype = torch.float32, **tower_options):
    """`tower_options`: further TowerOptions fields (e.g. perceiver_system_prompt)."""
    cls = target_class_for(read_config_dict(str(target_dir))["model_type"])
    model = cls.from_pretrained(target_dir, torch_dtype=dtype)
    options = TowerOptions(vision_tower=vision_tower, mm_vision_select_layer=-1, mm_vision_select_feature="patch",
                           mm_projector_type=projector, image_aspect_ratio=image_aspect_ratio, **tower_options)
    tower = initialize_vision_modules(model, options, projector=projector,
                                      pretrain_mm_mlp_adapter=pretrain_mm_mlp_adapter)
    model.get_model().mm_projector.to(dtype)
    tower.attach_tokenizers(tokenizer)
    for key, value in tower.config_entries().items():
        setattr(model.config, key, value)
    model.config.update({"conv_version": conv_version, "image_aspect_ratio": image_aspect_ratio,
                         "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "tune_mm_mlp_adapter": False,
                         "use_cache": True, "tokenizer_padding_side": "right"})
    if tower.per_image_features:
        model.config.image_aspect_ratio = "native"
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    tower.save_extras(str(output))
    return model
