"""PerceiverTower: a LLaVA-format VLM checkpoint as LLaVA's vision tower (the DPA encoder).

`--vision_tower <dir>` (or `dpa:<dir>`), where <dir>'s config has `mm_vision_tower`, selects it. The
perceiver is built from its config (embedded in the target's config once trained, so the perceiver folder
may then be deleted) and its weights come either from the target checkpoint or, once, from <dir>.

Per image tile, the perceiver LM reads [its prompt prefix] + [projected ViT tokens]; the features are the
hidden states at the ViT-token positions. Each anyres tile is its own sequence, so `num_patches_per_side`
is the perceiver ViT's and LLaVA's spatial_unpad works unchanged.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from llava_dpa.towers import weights as W
from llava_dpa.towers.base import VisionTower, attention_implementation
from llava_dpa.towers.registry import DPA_PREFIX


class PerceiverError(ValueError):
    pass


def strip_prefix(name: str) -> str:
    return name[len(DPA_PREFIX):] if name.startswith(DPA_PREFIX) else name


class PerceiverTower(VisionTower):
    model_types = ()  # chosen by the presence of mm_vision_tower in the config, not by model_type

    def __init__(self, vision_tower: str, args, delay_load: bool = False):
        # Not VisionTower.__init__: the perceiver's config is a whole VLM (with its own tower inside), its
        # select layer is --dpa_select_layer, and its image processor is its ViT's.
        torch.nn.Module.__init__(self)
        self.vision_tower_name = vision_tower
        self.perceiver_path = strip_prefix(vision_tower)
        self.is_loaded = False
        self.weight_loads = 0
        self.select_layer = getattr(args, "dpa_select_layer", None)
        self.instruction_context = bool(getattr(args, "perceiver_instruction_context", False))
        self.aux_loss_weight = 0.0  # set by the trainer for the stages that use the auxiliary loss

        embedded = getattr(args, "mm_vision_tower_config", None)
        self.tower_config_dict = dict(embedded) if embedded else W.read_config_dict(self.perceiver_path)
        if "mm_vision_tower" not in self.tower_config_dict:
            raise PerceiverError(f"{self.perceiver_path} is not a LLaVA-format VLM (its config has no mm_vision_tower)")
        recorded = getattr(args, "mm_perceiver_prefix_ids", None)
        self.prefix_ids = list(recorded) if recorded is not None else self.read_prefix_ids()

        self.perceiver = self.build_model(self.tower_config_dict)
        self.perceiver.requires_grad_(False)
        self.processor_dict = self.vit.processor_dict
        self.image_processor = self.vit.image_processor
        self.register_buffer("prefix", torch.tensor(self.prefix_ids, dtype=torch.long), persistent=False)
        layers = self.perceiver.config.num_hidden_layers
        if self.select_layer is not None and not -layers - 1 <= self.select_layer <= layers:
            raise PerceiverError(f"--dpa_select_layer {self.select_layer} is outside the perceiver's 0..{layers} hidden states")
        if not delay_load:
            self.load_model()

    # ---- construction --------------------------------------------------------------------------------
    def build_model(self, config_dict: dict):
        from llava_dpa.language_models import target_class_for

        cls = target_class_for(config_dict["model_type"])
        config = cls.config_class.from_dict({k: v for k, v in config_dict.items() if k != "model_type"})
        config._attn_implementation = attention_implementation()
        if not config.to_dict().get("mm_vision_tower_config") and not os.path.exists(config.mm_vision_tower):
            raise PerceiverError(f"the perceiver's own ViT {config.mm_vision_tower} is neither recorded in its config "
                                 f"nor present on disk")
        return cls(config)

    def build_image_processor(self, processor_dict):  # the perceiver ViT's processor is used as is
        return self.vit.image_processor

    def read_prefix_ids(self) -> list[int]:
        from transformers import AutoTokenizer

        from llava_dpa.perceiver.prompt import prefix_ids

        folder = Path(self.perceiver_path)
        if not (folder / "tokenizer_config.json").is_file():
            raise PerceiverError(
                f"the perceiver {folder} has no tokenizer: its prompt prefix is built with its own tokenizer (which may "
                f"differ from the target's). Save the perceiver LM's tokenizer into {folder}.")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        return prefix_ids(tokenizer, self.tower_config_dict.get("conv_version"))

    @property
    def vit(self):
        return self.perceiver.get_model().get_vision_tower()

    def record_in_config(self, config, model_args=None) -> None:
        """What the target's config keeps so the tower is rebuilt the same way from the checkpoint alone."""
        config.mm_perceiver_prefix_ids = self.prefix_ids
        config.dpa_select_layer = self.select_layer
        config.perceiver_instruction_context = self.instruction_context
        if model_args is not None:
            config.freeze_perceiver = bool(getattr(model_args, "freeze_perceiver", False))

    def embedded_config(self) -> dict:
        return {"mm_vision_tower_config": self.tower_config_dict, "mm_vision_tower_processor": self.processor_dict}

    # ---- weights -------------------------------------------------------------------------------------
    def load_model(self, device_map=None):
        if self.is_loaded:
            return
        state = W.load_state_dict(self.perceiver_path)
        own = self.perceiver.state_dict()
        missing = [k for k in own if k not in state and not self.is_tied(k)]
        if missing:
            raise PerceiverError(f"{self.perceiver_path} lacks perceiver weights {missing[:3]}; is it a full VLM "
                                 f"checkpoint (not a LoRA or stage-1 projector-only folder)?")
        W.load_into(self.perceiver, {k: v for k, v in state.items() if k in own}, strict=False)
        self.perceiver.tie_weights()
        self.vit.mark_loaded()
        self.weight_loads += 1
        self.is_loaded = True

    def is_tied(self, key: str) -> bool:
        return key == "lm_head.weight" and getattr(self.perceiver.config, "tie_word_embeddings", False)

    def mark_loaded(self):
        self.vit.mark_loaded()
        self.is_loaded = True

    def set_trainable(self, model_args) -> None:
        """Stage 2 trains the whole perceiver (ViT, projector, LM blocks) unless --freeze_perceiver True.
        The LM head is unused by the features, so it stays frozen unless an auxiliary loss needs it."""
        frozen = bool(getattr(model_args, "freeze_perceiver", False))
        self.perceiver.requires_grad_(not frozen)
        if not frozen and not getattr(model_args, "perceiver_aux_loss_weight", 0.0):
            if not getattr(self.perceiver.config, "tie_word_embeddings", False):
                self.perceiver.lm_head.requires_grad_(False)

    # ---- features ------------------------------------------------------------------------------------
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        inner = self.perceiver.get_model()
        visual = inner.mm_projector(self.vit(pixel_values))
        n, tokens, _ = visual.shape
        contexts = self._context_ids
        if contexts is None:  # instruction-agnostic: the same prefix for every tile
            prefix = inner.embed_tokens(self.prefix.to(visual.device)).unsqueeze(0).expand(n, -1, -1).to(visual.dtype)
            inputs, mask, positions, start = torch.cat([prefix, visual], dim=1), None, None, prefix.shape[1]
        else:
            if len(contexts) != n:
                raise PerceiverError(f"{len(contexts)} instruction contexts for {n} image tiles")
            inputs, mask, positions, start = self._left_padded(inner, contexts, visual)
        out = inner(inputs_embeds=inputs, attention_mask=mask, position_ids=positions, use_cache=False,
                    output_hidden_states=self.select_layer is not None)
        hidden = out.last_hidden_state if self.select_layer is None else out.hidden_states[self.select_layer]
        return hidden[:, start:start + tokens]

    def _left_padded(self, inner, contexts, visual):
        """Text of different lengths before the image: left-pad so every image starts at the same column."""
        n, tokens, _ = visual.shape
        width = max(len(c) for c in contexts)
        ids = torch.zeros((n, width), dtype=torch.long, device=visual.device)
        mask = torch.ones((n, width + tokens), dtype=torch.long, device=visual.device)
        for i, c in enumerate(contexts):
            ids[i, width - len(c):] = torch.tensor(c, dtype=torch.long)
            mask[i, :width - len(c)] = 0
        inputs = torch.cat([inner.embed_tokens(ids).to(visual.dtype), visual], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return inputs, mask, positions, width

    # ---- instruction context (early fusion) ------------------------------------------------------------
    _context_ids = None
    target_tokenizer = None
    perceiver_tokenizer = None

    def attach_tokenizers(self, target_tokenizer, perceiver_tokenizer_source: str | None = None) -> None:
        """The target's tokenizer decodes the instruction; the perceiver's re-encodes it."""
        self.target_tokenizer = target_tokenizer
        if (self.instruction_context or self.aux_loss_weight) and self.perceiver_tokenizer is None:
            from transformers import AutoTokenizer

            candidates = [c for c in (perceiver_tokenizer_source, self.perceiver_path) if c]
            source = next((c for c in candidates if (Path(c) / "tokenizer_config.json").is_file()), None)
            if source is None:
                raise PerceiverError(f"the instruction context and the auxiliary loss need the perceiver's tokenizer; "
                                     f"none in {candidates}")
            self.perceiver_tokenizer = AutoTokenizer.from_pretrained(source)

    def save_perceiver_tokenizer(self, output_dir: str) -> None:
        if self.instruction_context and self.perceiver_tokenizer is not None:
            self.perceiver_tokenizer.save_pretrained(os.path.join(output_dir, "perceiver_tokenizer"))

    def set_contexts(self, input_ids, attention_mask, images, config) -> None:
        from llava_dpa.perceiver.instruction import image_turn_texts, tiles_per_image, turn_end_ids

        if getattr(config, "conv_version", None) == "plain":
            return  # stage 1: the text next to the image is the caption, i.e. the target; never show it
        if self.target_tokenizer is None or self.perceiver_tokenizer is None:
            raise PerceiverError("instruction context needs the target's and the perceiver's tokenizers; the LLaVA "
                                 "loader and trainer attach them (tower.attach_tokenizers)")
        texts = image_turn_texts(input_ids, attention_mask, self.target_tokenizer,
                                 turn_end_ids(self.target_tokenizer, config))
        counts = tiles_per_image(images)
        if len(texts) != len(counts):
            raise PerceiverError(f"{len(texts)} <image> placeholders for {len(counts)} images")
        ids = []
        for text, count in zip(texts, counts):
            extra = self.perceiver_tokenizer(text + "\n", add_special_tokens=False).input_ids if text else []
            ids.extend([self.prefix_ids + extra] * count)
        self._context_ids = ids

    def clear_contexts(self) -> None:
        self._context_ids = None

    # ---- the interface -------------------------------------------------------------------------------
    @property
    def dtype(self):
        return next(self.perceiver.parameters()).dtype

    @property
    def device(self):
        return next(self.perceiver.parameters()).device

    @property
    def config(self):
        return self.vit.config

    @property
    def image_size(self) -> int:
        return self.vit.image_size

    @property
    def hidden_size(self) -> int:
        return self.perceiver.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.vit.num_patches_per_side
