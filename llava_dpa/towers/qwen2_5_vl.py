"""Qwen2.5-VL's vision encoder (ViT + its 2x2 patch merger), at a fixed square tile or at native resolution.

This is the ViT the paper and the official DPA release use.
- Tiles (LLaVA-NeXT): each tile is `image_size` pixels square (default 448: 32x32 patches of 14, merged to
  16x16 = 256 tokens).
- `--image_aspect_ratio native`: each image whole, resized to multiples of 28 within --min_pixels and
  --max_pixels (`data/native_resolution.py`); each image then has its own number of tokens, returned one
  tensor per image (llava_integration/multimodal_inputs.image_features).
Features are the merger's output (width `out_hidden_size`), so only mm_vision_select_layer = -1 is
meaningful here. With `--mm_projector_type qwen_merger` (the official baseline's construction) the tower
stops before the merger's MLP: it returns the normalised 2x2-grouped patch features (4 x the ViT width),
and the projector is a merger-shaped MLP into the target (`projectors/qwen_merger.py`).
"""
import torch
from transformers import CLIPImageProcessor
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from llava_dpa.data.native_resolution import (
    QWEN_PROCESSOR_DEFAULT_MAX_PIXELS,
    NativeResolutionProcessor,
    patches_and_grids,
    whole_images,
)
from llava_dpa.towers import weights as W
from llava_dpa.towers.base import VisionTower
from llava_dpa.towers.options import TowerOptions

QWEN_MEAN = [0.48145466, 0.4578275, 0.40821073]
QWEN_STD = [0.26862954, 0.26130258, 0.27577711]


def merged_tokens(output) -> torch.Tensor:
    """The patch merger's output of Qwen2.5-VL's vision model: transformers 4.57 returns it as a tensor; 5.x
    returns an output whose pooler_output holds it (its last_hidden_state is the ViT's, before the merger)."""
    return output if torch.is_tensor(output) else output.pooler_output


class Qwen2_5_VLTower(VisionTower):
    model_types = ("qwen2_5_vl", "qwen2_5_vl_vision")  # a full Qwen2.5-VL, or its vision config as transformers 5 saves it
    checkpoint_prefixes = ("", "visual.", "model.visual.", "model.vision_tower.vision_tower.")

    def read_options(self, options: TowerOptions) -> None:
        super().read_options(options)
        self.native = options.image_aspect_ratio == "native"
        self.per_image_features = self.native
        self.merger_as_projector = options.mm_projector_type == "qwen_merger"
        self.pixel_limits = (options.min_pixels, options.max_pixels)
        self.pretrained_merger_mlp = None  # the merger MLP's weights read from the ViT folder (qwen_merger init)

    def validate_select_feature(self):
        if self.select_layer not in (-1,):
            raise ValueError(f"the Qwen2.5-VL tower returns its patch merger's output; pass "
                             f"--mm_vision_select_layer -1 (got {self.select_layer})")

    def build_model(self, config_dict):
        vision = config_dict["vision_config"] if "vision_config" in config_dict else config_dict
        config = Qwen2_5_VLVisionConfig(**{k: v for k, v in vision.items() if k != "model_type"})
        config._attn_implementation = self.attn_implementation
        model = Qwen2_5_VisionTransformerPretrainedModel._from_config(config)
        if self.merger_as_projector:
            model.merger.mlp = torch.nn.Identity()  # the projector is the merger's MLP (mm_projector_type qwen_merger)
        return model

    def read_processor_dict(self, vision_tower):
        try:
            found = super().read_processor_dict(vision_tower)
        except FileNotFoundError:
            found = {}
        mean, std = found.get("image_mean", QWEN_MEAN), found.get("image_std", QWEN_STD)
        if self.native:
            vision = self.tower_config_dict.get("vision_config", self.tower_config_dict)
            return {"resolution": "native", "patch_size": vision.get("patch_size", 14),
                    "merge_size": vision.get("spatial_merge_size", 2), "min_pixels": found.get("min_pixels"),
                    "max_pixels": found.get("max_pixels") if found.get("max_pixels") != QWEN_PROCESSOR_DEFAULT_MAX_PIXELS else None,
                    "image_mean": mean, "image_std": std}
        return {"tile_size": int(found.get("tile_size", 448)), "image_mean": mean, "image_std": std}

    def build_image_processor(self, processor_dict):
        if processor_dict.get("resolution") == "native" or self.native:
            if processor_dict.get("resolution") != "native":
                raise ValueError("this Qwen2.5-VL tower was recorded with fixed tiles; it cannot read native resolution")
            d, (low, high) = processor_dict, self.pixel_limits
            return NativeResolutionProcessor(d["patch_size"], d["merge_size"], low or d.get("min_pixels"),
                                             high or d.get("max_pixels"), d.get("image_mean"), d.get("image_std"))
        side = int(processor_dict["tile_size"])
        unit = self.vision_tower.config.patch_size * self.vision_tower.config.spatial_merge_size
        if side % unit:
            raise ValueError(f"Qwen2.5-VL tile size {side} must be a multiple of patch_size*spatial_merge_size={unit}")
        return CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                  image_mean=processor_dict["image_mean"], image_std=processor_dict["image_std"],
                                  resample=3, do_center_crop=True)

    def config_entries(self) -> dict:
        entries = {**super().config_entries(), "mm_vision_tower_processor": self.processor_entry()}
        if self.native:
            entries["image_aspect_ratio"] = "native"
        return entries

    def processor_entry(self) -> dict:
        return self.image_processor.to_dict() if self.native else self.processor_dict

    def load_model(self, device_map=None):
        if self.is_loaded:
            return
        state = W.load_state_dict(self.vision_tower_name)
        sub = W.select_submodule_state(state, self.vision_tower, self.checkpoint_prefixes,
                                       self.vision_tower_name) if not self.merger_as_projector else \
            self._without_merger_mlp(state)
        W.load_into(self.vision_tower, sub, strict=True)
        self.is_loaded = True

    def _without_merger_mlp(self, state: dict) -> dict:
        """The ViT's weights but the merger MLP's, which are kept for the projector (projectors/qwen_merger.py)."""
        for prefix in self.checkpoint_prefixes:
            keys = [k for k in state if k.startswith(prefix + "merger.ln_q.")]
            if keys:
                break
        else:
            raise ValueError(f"{self.vision_tower_name}: no Qwen2.5-VL patch merger (merger.ln_q) among its weights")
        body = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        self.pretrained_merger_mlp = {k[len("merger.mlp."):]: v for k, v in body.items() if k.startswith("merger.mlp.")}
        return {k: v for k, v in body.items() if not k.startswith("merger.mlp.")}

    @property
    def image_size(self):
        return self.image_processor.crop_size["height"]

    @property
    def hidden_size(self):
        cfg = self.vision_tower.config
        return cfg.hidden_size * cfg.spatial_merge_size ** 2 if self.merger_as_projector else cfg.out_hidden_size

    @property
    def num_patches_per_side(self):
        cfg = self.vision_tower.config
        return self.image_size // (cfg.patch_size * cfg.spatial_merge_size)

    def tokens_for(self, width: int, height: int) -> int:
        return self.image_processor.tokens_for(width, height)

    def features(self, images, **tower_inputs):
        if not self.native:
            return super().features(images, **tower_inputs)
        patches, grid, counts = patches_and_grids(whole_images(images, self.device, self.dtype), self.vision_tower.config)
        return list(torch.split(merged_tokens(self.vision_tower(patches, grid_thw=grid)), counts))

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
