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

from llava_dpa.data.tokenization import load_tokenizer
from llava_dpa.language_models import target_class_for
from llava_dpa.perceiver.base import PerceiverError, PerceiverTowerBase
from llava_dpa.perceiver.buckets import perceiver_buckets
from llava_dpa.perceiver.instruction import image_turn_texts, tiles_per_image, turn_end_ids
from llava_dpa.perceiver.prompt import prefix_ids
from llava_dpa.towers import weights as W
from llava_dpa.towers.options import TowerOptions


#: `--vision_tower dpa:<dir>` selects the perceiver explicitly.
class PerceiverTower(PerceiverTowerBase):
    model_types = ()  # chosen by the presence of mm_vision_tower in the config, not by model_type
    label = "DPA perceiver, LLaVA-format VLM (tiles; the paper's LLaVA-NeXT form)"

    def __init__(self, options: TowerOptions, delay_load: bool = False):
        super().__init__(options, delay_load=delay_load)
        layers = self.perceiver.config.num_hidden_layers
        if self.select_layer is not None and not -layers - 1 <= self.select_layer <= layers:
            raise PerceiverError(f"--dpa_select_layer {self.select_layer} is outside the perceiver's 0..{layers} hidden states")

    @property
    def perceiver_path(self) -> str:
        return self.source_path

    def read_options(self, options: TowerOptions) -> None:
        if "mm_vision_tower" not in self.tower_config_dict:
            raise PerceiverError(f"{self.perceiver_path} is not a LLaVA-format VLM (its config has no mm_vision_tower)")
        self.select_layer = options.dpa_select_layer
        self.instruction_context = options.perceiver_instruction_context
        self.read_perceiver_options(options)
        if self.prefix_ids is None:
            self.prefix_ids = self.read_prefix_ids()

    def read_processor_dict(self, perceiver_path: str) -> dict:
        """The perceiver ViT's processor settings, recorded in the perceiver's config by its training."""
        recorded = self.tower_config_dict.get("mm_vision_tower_processor")
        return dict(recorded) if recorded else super().read_processor_dict(self.tower_config_dict["mm_vision_tower"])

    # ---- construction --------------------------------------------------------------------------------
    def build_model(self, config_dict: dict):
        cls = target_class_for(config_dict["model_type"])
        config = cls.config_class.from_dict({k: v for k, v in config_dict.items() if k != "model_type"})
        config._attn_implementation = self.attn_implementation
        config.tower_attn_implementation = self.attn_implementation  # its own ViT's
        if not config.to_dict().get("mm_vision_tower_config") and not os.path.exists(config.mm_vision_tower):
            raise PerceiverError(f"the perceiver's own ViT {config.mm_vision_tower} is neither recorded in its config "
                                 f"nor present on disk")
        return cls(config)

    def build_image_processor(self, processor_dict):  # the perceiver ViT's processor is used as is
        return self.vit.image_processor

    def validate_select_feature(self) -> None:
        pass

    def read_prefix_ids(self) -> list[int]:
        folder = Path(self.perceiver_path)
        if not (folder / "tokenizer_config.json").is_file():
            raise PerceiverError(
                f"the perceiver {folder} has no tokenizer: its prompt prefix is built with its own tokenizer (which may "
                f"differ from the target's). Save the perceiver LM's tokenizer into {folder}.")
        tokenizer = load_tokenizer(folder)
        return prefix_ids(tokenizer, self.tower_config_dict.get("conv_version"))

    @property
    def vit(self):
        return self.perceiver.get_model().get_vision_tower()

    def config_entries(self) -> dict:
        """What the target's config keeps so the tower is rebuilt the same way from the checkpoint alone."""
        return {**super().config_entries(), "mm_perceiver_prefix_ids": self.prefix_ids,
                "dpa_select_layer": self.select_layer, "perceiver_instruction_context": self.instruction_context}

    # ---- weights -------------------------------------------------------------------------------------
    def load_model(self, device_map=None):
        if self.is_loaded:
            return
        state = W.load_state_dict(self.perceiver_path)
        own = self.perceiver.state_dict()
        self.check_weights(set(state), {k for k in own if not self.is_tied(k)},
                           "; is it a full VLM checkpoint (not a LoRA or stage-1 projector-only folder)?")
        W.load_into(self.perceiver, {k: v for k, v in state.items() if k in own}, strict=False)
        self.perceiver.tie_weights()
        self.vit.mark_loaded()
        self.is_loaded = True

    def is_tied(self, key: str) -> bool:
        return key == "lm_head.weight" and getattr(self.perceiver.config, "tie_word_embeddings", False)

    def mark_loaded(self):
        """The outer checkpoint filled the perceiver. Its LM head is tied to its embeddings when its config says
        so; transformers 5 loads the nested head as an untied copy, so tie it again."""
        self.perceiver.tie_weights()
        self.vit.mark_loaded()
        self.is_loaded = True

    # ---- features ------------------------------------------------------------------------------------
    def encode(self, pixel_values: torch.Tensor, contexts: list[list[int]] | None = None) -> torch.Tensor:
        return self.perceive(self.vit(pixel_values), contexts)

    def perceive(self, vit_features: torch.Tensor, contexts: list[list[int]] | None = None) -> torch.Tensor:
        """Per tile: [prefix] (+ [instruction context]) + [projected ViT tokens] through the perceiver LM;
        `contexts` (one token-id list per tile) replaces the prefix when the instruction context is on."""
        inner = self.perceiver.get_model()
        visual = inner.mm_projector(vit_features)
        n, tokens, _ = visual.shape
        if contexts is None:  # instruction-agnostic: the same prefix for every tile, so no padding at all
            ids = torch.tensor(self.prefix_ids, dtype=torch.long, device=visual.device)
            prefix = inner.embed_tokens(ids).unsqueeze(0).expand(n, -1, -1).to(visual.dtype)
            return self._visual_states(inner, torch.cat([prefix, visual], dim=1), None, None, prefix.shape[1], tokens)
        if len(contexts) != n:
            raise PerceiverError(f"{len(contexts)} instruction contexts for {n} image tiles")
        # Contexts differ in length: tiles run in length buckets (perceiver/buckets.py), each left-padded only
        # to its own longest context.
        groups = perceiver_buckets([len(c) + tokens for c in contexts], inner)
        if len(groups) == 1:
            return self._visual_states(inner, *self._left_padded(inner, contexts, visual), tokens)
        states = [self._visual_states(inner, *self._left_padded(inner, [contexts[i] for i in g], visual[g]), tokens)
                  for g in groups]
        order = torch.tensor([i for g in groups for i in g], device=visual.device)
        return torch.cat(states)[torch.argsort(order)]

    def _visual_states(self, inner, inputs, mask, positions, start: int, tokens: int) -> torch.Tensor:
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

    # ---- instruction context (early fusion) and the auxiliary loss -------------------------------------
    def attach_tokenizers(self, target_tokenizer, *, perceiver_tokenizer_needed: bool = False,
                          perceiver_tokenizer_dir: str | None = None):
        """The target's tokenizer decodes the instruction; the perceiver's re-encodes it (and tokenizes the
        auxiliary loss's conversation)."""
        self.target_tokenizer = target_tokenizer
        if (self.instruction_context or perceiver_tokenizer_needed) and self.perceiver_tokenizer is None:
            self.perceiver_tokenizer, where = self.find_perceiver_tokenizer(perceiver_tokenizer_dir)
            if self.perceiver_tokenizer is None:
                raise PerceiverError(f"the instruction context and the auxiliary loss need the perceiver's tokenizer; "
                                     f"none in {where}")

    def keeps_perceiver_tokenizer(self) -> bool:
        return self.instruction_context and self.perceiver_tokenizer is not None

    def tower_inputs(self, input_ids, attention_mask, images) -> dict | None:
        """With the instruction context on: the perceiver's token ids for every tile, its prefix followed by
        the question of the user turn that holds the image."""
        if not self.instruction_context:
            return None
        return {"contexts": self.instruction_contexts(input_ids, attention_mask, images)}

    def instruction_contexts(self, input_ids, attention_mask, images) -> list[list[int]]:
        if self.target_tokenizer is None or self.perceiver_tokenizer is None:
            raise PerceiverError("instruction context needs the target's and the perceiver's tokenizers; the LLaVA "
                                 "loader and trainer attach them (tower.attach_tokenizers)")
        texts = image_turn_texts(input_ids, attention_mask, self.target_tokenizer,
                                 turn_end_ids(self.target_tokenizer, self.conv_version))
        counts = tiles_per_image(images)
        if len(texts) != len(counts):
            raise PerceiverError(f"{len(texts)} <image> placeholders for {len(counts)} images")
        ids = []
        for text, count in zip(texts, counts):
            extra = self.perceiver_tokenizer(text + "\n", add_special_tokens=False).input_ids if text else []
            ids.extend([self.prefix_ids + extra] * count)
        return ids

    # ---- the interface -------------------------------------------------------------------------------
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
