"""SigLIP ViT (and SigLIP2's fixed-resolution checkpoints, which use the same architecture)."""
from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

from llava_dpa.towers.base import HiddenStateTower, attention_implementation, square_processor


class SigLIPTower(HiddenStateTower):
    model_types = ("siglip", "siglip_vision_model")
    checkpoint_prefixes = ("", "model.", "model.vision_tower.vision_tower.")
    has_cls_token = False  # every SigLIP token is a patch; 'patch' and 'cls_patch' both keep all of them

    def build_model(self, config_dict):
        vision = config_dict.get("vision_config", config_dict) if config_dict.get("model_type") == "siglip" else config_dict
        config = SiglipVisionConfig(**{k: v for k, v in vision.items() if k != "model_type"})
        config._attn_implementation = attention_implementation()
        return SiglipVisionModel(config)

    def build_image_processor(self, processor_dict):
        processor = SiglipImageProcessor(**{k: v for k, v in processor_dict.items() if k != "image_processor_type"})
        return square_processor(processor)
