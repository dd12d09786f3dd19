"""Qwen2.5-VL's vision encoder (ViT + its 2x2 patch merger) at a fixed square tile.

This is the ViT the paper and the official DPA release use. Qwen2.5-VL natively takes any resolution;
LLaVA-NeXT tiling needs a fixed tile, so each tile is `image_size` pixels square (default 448: 32x32
patches of 14, merged to 16x16 = 256 tokens). Features are the merger's output (width
`out_hidden_size`), so only mm_vision_select_layer = -1 is meaningful here.
"""
import torch
from transformers import CLIPImageProcessor
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from llava_dpa.towers.base import VisionTower

QWEN_MEAN = [0.48145466, 0.4578275, 0.40821073]
QWEN_STD = [0.26862954, 0.26130258, 0.27577711]


def merged_tokens(output) -> torch.Tensor:
    """The patch merger's output of Qwen2.5-VL's vision model: transformers 4.57 returns it as a tensor; 5.x
    returns an output whose pooler_output holds it (its last_hidden_state is the ViT's, before the merger)."""
    return output if torch.is_tensor(output) else output.pooler_output


class Qwen2_5_VLTower(VisionTower):
    model_types = ("qwen2_5_vl", "qwen2_5_vl_vision")  # a full Qwen2.5-VL, or its vision config as transformers 5 saves it
    checkpoint_prefixes = ("", "visual.", "model.visual.", "model.vision_tower.vision_tower.")

    def validate_select_feature(self):
        if self.select_layer not in (-1,):
            raise ValueError(f"the Qwen2.5-VL tower returns its patch merger's output; pass "
                             f"--mm_vision_select_layer -1 (got {self.select_layer})")

    def build_model(self, config_dict):
        vision = config_dict["vision_config"] if "vision_config" in config_dict else config_dict
        config = Qwen2_5_VLVisionConfig(**{k: v for k, v in vision.items() if k != "model_type"})
        config._attn_implementation = self.attn_implementation
        return Qwen2_5_VisionTransformerPretrainedModel._from_config(config)

    def read_processor_dict(self, vision_tower):
        try:
            found = super().read_processor_dict(vision_tower)
        except FileNotFoundError:
            found = {}
        return {"tile_size": int(found.get("tile_size", 448)),
                "image_mean": found.get("image_mean", QWEN_MEAN), "image_std": found.get("image_std", QWEN_STD)}

    def build_image_processor(self, processor_dict):
        side = int(processor_dict["tile_size"])
        unit = self.vision_tower.config.patch_size * self.vision_tower.config.spatial_merge_size
        if side % unit:
            raise ValueError(f"Qwen2.5-VL tile size {side} must be a multiple of patch_size*spatial_merge_size={unit}")
        return CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                  image_mean=processor_dict["image_mean"], image_std=processor_dict["image_std"],
                                  resample=3, do_center_crop=True)

    @property
    def image_size(self):
        return self.image_processor.crop_size["height"]

    @property
    def hidden_size(self):
        return self.vision_tower.config.out_hidden_size

    @property
    def num_patches_per_side(self):
        cfg = self.vision_tower.config
        return self.image_size // (cfg.patch_size * cfg.spatial_merge_size)

    def encode(self, pixel_values):
        cfg = self.vision_tower.config
        n, c, h, w = pixel_values.shape
        p, m, t = cfg.patch_size, cfg.spatial_merge_size, cfg.temporal_patch_size
        gh, gw = h // p, w // p
        # Same patch order as Qwen2VLImageProcessor: a still image repeated over the temporal patch,
        # patches grouped by 2x2 merge windows.
        x = pixel_values.unsqueeze(1).expand(n, t, c, h, w)
        x = x.reshape(n, t, c, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(n * gh * gw, c * t * p * p)
        grid = torch.tensor([[1, gh, gw]] * n, device=pixel_values.device)
        out = merged_tokens(self.vision_tower(x, grid_thw=grid))
        return out.reshape(n, (gh // m) * (gw // m), -1)
