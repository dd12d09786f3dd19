"""CLIP ViT (LLaVA's default tower)."""
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from llava_dpa.towers.base import HiddenStateTower


class CLIPTower(HiddenStateTower):
    model_types = ("clip", "clip_vision_model")
    checkpoint_prefixes = ("", "model.", "model.vision_tower.vision_tower.")
    composite_type = "clip"
    config_cls = CLIPVisionConfig
    model_cls = CLIPVisionModel

    def build_image_processor(self, processor_dict):
        return CLIPImageProcessor(**{k: v for k, v in processor_dict.items() if k != "image_processor_type"})
