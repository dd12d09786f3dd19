"""SigLIP ViT (and SigLIP2's fixed-resolution checkpoints, which use the same architecture)."""
from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

from llava_dpa.towers.base import HiddenStateTower, square_processor


class SigLIPTower(HiddenStateTower):
    model_types = ("siglip", "siglip_vision_model")
    checkpoint_prefixes = ("", "model.", "model.vision_tower.vision_tower.")
    has_cls_token = False  # every SigLIP token is a patch; 'patch' and 'cls_patch' both keep all of them

    composite_type = "siglip"
    config_cls = SiglipVisionConfig
    model_cls = SiglipVisionModel

    def build_image_processor(self, processor_dict):
        processor = SiglipImageProcessor(**{k: v for k, v in processor_dict.items() if k != "image_processor_type"})
        return square_processor(processor)
