"""`llava-dpa extract-vit`: the perceiver's own ViT (fine-tuned weights included) as a plain tower
checkpoint, for the "w/o perceiver LM blocks" ablation: the baseline pipeline then uses it as
`--vision_tower`.

The input is a perceiver VLM folder or a DPA checkpoint (whose tower is a perceiver). The output folder
has the ViT's config (model_type of the ViT family), its weights and its image-processor settings, so
the tower registry reads it like any downloaded ViT.
"""
from __future__ import annotations

import json
from pathlib import Path

from llava_dpa.llava_integration.tower_registry import build_tower
from llava_dpa.perceiver.tower import PerceiverTower
from llava_dpa.towers.options import TowerOptions
from llava_dpa.towers.weights import read_config_dict


def _vit_of(checkpoint: str):
    config = read_config_dict(checkpoint)
    if "mm_vision_tower" not in config:
        raise ValueError(f"{checkpoint} is neither a perceiver VLM nor a DPA checkpoint (no mm_vision_tower in its config)")
    embedded = config.get("mm_vision_tower_config") or {}
    if "mm_vision_tower" in embedded:  # a DPA checkpoint: load it, its tower is the (fine-tuned) perceiver
        from llava.model.builder import load_pretrained_model

        _, model, _, _ = load_pretrained_model(checkpoint, None, "dpa", device="cpu")
        tower = model.get_vision_tower()
        if not isinstance(tower, PerceiverTower):
            raise ValueError(f"{checkpoint}'s tower is not a perceiver")
        return tower.vit
    perceiver = build_tower(TowerOptions(vision_tower=checkpoint, mm_vision_select_layer=-1))
    return perceiver.vit


def extract_vit(checkpoint: str, output: str) -> Path:
    vit = _vit_of(checkpoint)
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new --output")
    vit.vision_tower.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(vit.processor_dict, indent=1))
    return out
