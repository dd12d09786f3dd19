"""The LLaVA-NeXT vision-tower interface, shared by every tower.

A tower is built from config in __init__ (never from_pretrained there). Its weights come either from
the outer checkpoint that contains it (the LLaVA loader then calls `mark_loaded`) or from its own
folder through `load_model`, which reads them exactly once. The tower's config and image-processor
settings are recorded in the LLaVA config (`mm_vision_tower_config`, `mm_vision_tower_processor`), so
a trained checkpoint rebuilds its tower with the original tower folder gone.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn as nn

from llava_dpa.towers import weights as W
from llava_dpa.towers.feature_memo import FeatureMemo
from llava_dpa.towers.options import TowerOptions


def attention_implementation(requested: str | None = None) -> str:
    """Towers (and the perceiver's LM) use flash-attention-2 when it is installed and a GPU is present,
    else sdpa; `--tower_attn_implementation` chooses (e.g. 'eager')."""
    import importlib.util

    if requested:
        return requested
    if importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available():
        return "flash_attention_2"
    return "sdpa"


class VisionTower(nn.Module, ABC):
    #: config.json model_type values this tower reads (the registry's key).
    model_types: tuple[str, ...] = ()
    #: prefixes under which the tower's weights may sit in its checkpoint folder.
    checkpoint_prefixes: tuple[str, ...] = ("",)
    #: the attribute holding the encoder; it names the weights in a LLaVA checkpoint (model.vision_tower.<it>.*)
    encoder_name: str = "vision_tower"
    #: a DPA perceiver (a whole VLM) rather than a ViT
    is_perceiver: bool = False
    #: reads whole images at native resolution: one [tokens_i, d] tensor per image (llava_integration/multimodal_inputs.image_features)
    per_image_features: bool = False
    #: what the user got, in the words the start-of-training banner and the docs use
    label: str = "ViT tower"

    def __init__(self, options: TowerOptions, delay_load: bool = False):
        super().__init__()
        self.options = options
        self.memo = FeatureMemo(options.memo_size)  # the inference memo (feature_memo.py)
        self.vision_tower_name = options.vision_tower
        self.is_loaded = False
        self.attn_implementation = attention_implementation(options.tower_attn_implementation)

        embedded = options.mm_vision_tower_config
        self.tower_config_dict = dict(embedded) if embedded else W.read_config_dict(self.source_path)
        self.read_options(options)
        processor = options.mm_vision_tower_processor
        self.processor_dict = dict(processor) if processor else self.read_processor_dict(self.source_path)

        encoder = self.build_model(self.tower_config_dict)
        encoder.requires_grad_(False)
        self.add_module(self.encoder_name, encoder)
        self.image_processor = self.build_image_processor(self.processor_dict)
        if not delay_load:
            self.load_model()

    @property
    def source_path(self) -> str:
        """The folder the tower's config and weights come from."""
        return self.vision_tower_name

    @property
    def encoder(self) -> nn.Module:
        return getattr(self, self.encoder_name)

    def read_options(self, options: TowerOptions) -> None:
        """The tower's own settings (towers/options.py: from LLaVA's arguments or a checkpoint's config)."""
        self.select_layer = options.mm_vision_select_layer
        self.select_feature = options.mm_vision_select_feature
        self.validate_select_feature()

    # ---- what each tower defines -------------------------------------------------------------------
    @abstractmethod
    def build_model(self, config_dict: dict) -> nn.Module:
        """The encoder, randomly initialised from its config."""

    @abstractmethod
    def build_image_processor(self, processor_dict: dict):
        """An image processor LLaVA's data code accepts (preprocess, crop_size, size, image_mean)."""

    @abstractmethod
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, num_patches, hidden_size]."""

    @property
    @abstractmethod
    def image_size(self) -> int: ...

    @property
    @abstractmethod
    def hidden_size(self) -> int: ...

    @property
    @abstractmethod
    def num_patches_per_side(self) -> int: ...

    def read_processor_dict(self, vision_tower: str) -> dict:
        found = W.read_json_if_exists(vision_tower, "preprocessor_config.json")
        if found is None:
            raise FileNotFoundError(f"{vision_tower}: no preprocessor_config.json; a vision tower folder needs one")
        return found

    def validate_select_feature(self) -> None:
        if self.select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"unexpected mm_vision_select_feature {self.select_feature!r}; use 'patch' or 'cls_patch'")

    # ---- weights -------------------------------------------------------------------------------------
    def load_model(self, device_map=None):
        if self.is_loaded:
            return
        state = W.load_state_dict(self.vision_tower_name)
        sub = W.select_submodule_state(state, self.vision_tower, self.checkpoint_prefixes, self.vision_tower_name)
        W.load_into(self.vision_tower, sub, strict=True)
        self.is_loaded = True

    def mark_loaded(self):
        """The weights were filled by the outer checkpoint (a trained LLaVA model)."""
        self.is_loaded = True

    def config_entries(self) -> dict:
        """What the LLaVA config records so the checkpoint rebuilds this tower on its own."""
        return {"mm_vision_tower_config": self.tower_config_dict, "mm_vision_tower_processor": self.processor_dict}

    # ---- hooks a perceiver fills in; a ViT needs none of them ----------------------------------------
    def attach_tokenizers(self, target_tokenizer, *, perceiver_tokenizer_needed: bool = False,
                          perceiver_tokenizer_dir: str | None = None):
        """Tokenizers the tower needs at run time (the perceiver's instruction context and auxiliary loss)."""

    def tower_inputs(self, input_ids, attention_mask, images) -> dict | None:
        """Per-call inputs the tower reads besides the images (llava_integration/multimodal_inputs.py passes them down)."""
        return None

    def save_extras(self, output_dir: str) -> None:
        """Files a trained checkpoint needs besides weights and config."""

    # ---- the LLaVA-NeXT interface --------------------------------------------------------------------
    def forward(self, images, **tower_inputs):
        """The features of `images`. A tower that trains (stage 2, LoRA, the auxiliary loss) runs with autograd;
        a frozen one (stage 1, --freeze_perceiver) and any tower at inference run under no_grad, so they build no
        graph whatever their inputs. At inference the features come through the tower's memo (feature_memo.py),
        so a chat encodes its image once per conversation, not once per turn."""
        grad = torch.is_grad_enabled()
        if grad and any(p.requires_grad for p in self.parameters()):
            return self.features(images, **tower_inputs)
        with torch.no_grad():
            # Memoised only where the caller itself runs without autograd (inference): a stored tensor must
            # never meet a graph that would save it for backward.
            if self.training or grad:
                return self.features(images, **tower_inputs)
            return self.memo.features(self.features, images, tower_inputs, self.parameters(), self.device, self.dtype)

    def features(self, images, **tower_inputs):
        """The encoder's output, as the caller's autograd has it (no memo, no no_grad)."""
        if isinstance(images, list):
            return [self.encode(image.to(device=self.device, dtype=self.dtype).unsqueeze(0), **tower_inputs)
                    for image in images]
        return self.encode(images.to(device=self.device, dtype=self.dtype), **tower_inputs)

    @property
    def dummy_feature(self):
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def dtype(self):
        return next(self.encoder.parameters()).dtype

    @property
    def device(self):
        return next(self.encoder.parameters()).device

    @property
    def config(self):
        cfg = self.vision_tower.config
        # llava_arch reads config.image_size for the anyres grid; not every encoder config names it.
        if getattr(cfg, "image_size", None) != self.image_size:
            cfg.image_size = self.image_size
        return cfg

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side ** 2


def clear_feature_memos(model: nn.Module) -> None:
    """Empty every tower's inference memo in `model` (a perceiver's ViT included): the next call encodes its images.
    The benches call it before each timed call, which must encode."""
    for module in model.modules():
        if isinstance(module, VisionTower):
            module.memo.clear()


class VisionModelLayout(nn.Module):
    """An HF vision model held under `vision_model`: the parameter layout of transformers 4.57's CLIP and SigLIP
    vision models and of their Hub checkpoints. transformers 5 dropped that level; holding the model under it
    keeps a trained checkpoint's keys (model.vision_tower.vision_tower.vision_model.*) the same on both lines."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.vision_model = model

    @property
    def config(self):
        return self.vision_model.config

    def forward(self, *args, **kwargs):
        return self.vision_model(*args, **kwargs)


def with_vision_model_level(model: nn.Module) -> nn.Module:
    if any(key.startswith("vision_model.") for key in model.state_dict()):
        return model
    return VisionModelLayout(model)


class HiddenStateTower(VisionTower):
    """Towers whose features are a hidden-state layer chosen by select_layer (CLIP, SigLIP)."""

    has_cls_token = True
    #: the full (image-text) checkpoint's model_type whose vision part sits under "vision_config"
    composite_type: str = ""
    config_cls = None
    model_cls = None

    def build_model(self, config_dict):
        vision = config_dict.get("vision_config", config_dict) if config_dict.get("model_type") == self.composite_type \
            else config_dict
        config = self.config_cls(**{k: v for k, v in vision.items() if k != "model_type"})
        config._attn_implementation = self.attn_implementation
        return with_vision_model_level(self.model_cls(config))

    def encode(self, pixel_values):
        out = self.vision_tower(pixel_values, output_hidden_states=True)
        features = out.hidden_states[self.select_layer]
        if self.select_feature == "patch" and self.has_cls_token:
            features = features[:, 1:]
        return features

    @property
    def image_size(self):
        return self.vision_tower.config.image_size

    @property
    def hidden_size(self):
        return self.vision_tower.config.hidden_size

    @property
    def num_patches_per_side(self):
        return self.vision_tower.config.image_size // self.vision_tower.config.patch_size


def square_processor(processor):
    """LLaVA's data code reads `crop_size` and `size['shortest_edge']`; give processors that resize to a
    fixed square (SigLIP) both, without changing what they compute."""
    side = processor.size.get("height") or processor.size.get("shortest_edge")
    if not hasattr(processor, "crop_size") or processor.crop_size is None:
        processor.crop_size = {"height": side, "width": side}
    return processor
