"""SigLIP2 NaFlex ViT at a fixed square tile.

NaFlex checkpoints take flattened patches with a spatial shape; LLaVA's tiling needs a fixed tile, so
the tower resizes every tile to `image_size` (from the processor, default 256) and patchifies it here.
"""
import torch
from transformers import Siglip2VisionConfig, Siglip2VisionModel, SiglipImageProcessor

from llava_dpa.towers.base import HiddenStateTower, square_processor


class SigLIP2Tower(HiddenStateTower):
    model_types = ("siglip2", "siglip2_vision_model")
    checkpoint_prefixes = ("", "model.", "model.vision_tower.vision_tower.")
    has_cls_token = False

    composite_type = "siglip2"
    config_cls = Siglip2VisionConfig
    model_cls = Siglip2VisionModel

    def build_image_processor(self, processor_dict):
        side = int(processor_dict.get("tile_size", 256))
        processor = SiglipImageProcessor(size={"height": side, "width": side},
                                         image_mean=processor_dict.get("image_mean", [0.5, 0.5, 0.5]),
                                         image_std=processor_dict.get("image_std", [0.5, 0.5, 0.5]))
        return square_processor(processor)

    def read_processor_dict(self, vision_tower):
        try:
            return super().read_processor_dict(vision_tower)
        except FileNotFoundError:
            return {"tile_size": 256}

    @property
    def image_size(self):
        return self.image_processor.size["height"]

    @property
    def num_patches_per_side(self):
        return self.image_size // self.vision_tower.config.patch_size

    def encode(self, pixel_values):
        n, c, h, w = pixel_values.shape
        p = self.vision_tower.config.patch_size
        gh, gw = h // p, w // p
        patches = pixel_values.reshape(n, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(n, gh * gw, p * p * c)
        mask = torch.ones(n, gh * gw, dtype=torch.long, device=pixel_values.device)
        shapes = torch.tensor([[gh, gw]] * n, device=pixel_values.device)
        out = self.vision_tower(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes,
                                output_hidden_states=True)
        return out.hidden_states[self.select_layer]
