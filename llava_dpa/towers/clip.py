"""CLIP ViT (LLaVA's default tower)."""
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from llava_dpa.towers.base import HiddenStateTower, attention_implementation


class CLIPTower(HiddenStateTower):
    model_types = ("clip", "clip_vision_model")
    checkpoint_prefixes = ("", "model.", "model.vision_tower.vision_tower.")

    def build_model(self, config_dict):
        vision = config_dict.get("vision_config", config_dict) if config_dict.get("model_type") == "clip" else config_dict
        config = CLIPVisionConfig(**{k: v for k, v in vision.items() if k != "model_type"})
        config._attn_implementation = attention_implementation()
        return CLIPVisionModel(config)

    def build_image_processor(self, processor_dict):
        return CLIPImageProcessor(**{k: v for k, v in processor_dict.items() if k != "image_processor_type"})
