"""A LLaVA-format checkpoint assembled from a target LLM folder and a vision tower, by the code that trains one.

The target class comes from the target's model_type; the tower and projector are built by llava's own
`initialize_vision_modules` (as stage 1 builds them), the tower records what rebuilds it, and the result is
saved as a self-contained checkpoint. `import-official` and `llava-dpa bench --preset` use it.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from llava_dpa.language_models import target_class_for
from llava_dpa.towers.weights import read_config_dict


def assemble(target_dir: str | Path, vision_tower: str, output: str | Path, tokenizer, *, projector: str,
             conv_version: str, image_aspect_ratio: str = "square", pretrain_mm_mlp_adapter: str | None = None,
             dtype: torch.dtype = torch.float32, **tower_options):
    cls = target_class_for(read_config_dict(str(target_dir))["model_type"])
    model = cls.from_pretrained(target_dir, torch_dtype=dtype)
    args = SimpleNamespace(vision_tower=vision_tower, mm_vision_select_layer=-1, mm_vision_select_feature="patch",
                           pretrain_mm_mlp_adapter=pretrain_mm_mlp_adapter, mm_patch_merge_type="flat",
                           mm_projector_type=projector, image_aspect_ratio=image_aspect_ratio, **tower_options)
    model.get_model().initialize_vision_modules(args)
    model.get_model().mm_projector.to(dtype)
    tower = model.get_vision_tower()
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
