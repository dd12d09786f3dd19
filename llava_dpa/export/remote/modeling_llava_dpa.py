"""A llava-dpa model (baseline or DPA) as a transformers model (`llava-dpa export-hf`).

Remote code: this file is copied into the exported folder and imports only torch and transformers. It
composes transformers' own classes (CLIP/SigLIP/SigLIP2/Qwen2.5-VL vision models, the target's and the
perceiver's decoder models) and computes what llava-dpa's LLaVA path computes:

- the vision side turns each image into its features: a ViT (`vision.kind` clip/siglip/siglip2/qwen2_5_vl),
  the LLaVA-format DPA perceiver (its ViT, its projector and its LM reading [prefix or instruction context] +
  visual tokens; the features are its hidden states at the visual positions), or the Qwen-VL-native perceiver
  (the official release's: a Qwen2.5-VL ViT and a Qwen3 LM with sectioned M-RoPE reading the sample's text
  before each image; the features are the N + 2 final-norm states from <|vision_start|> to <|vision_end|>);
- the projector maps them into the target's width;
- the target reads its own token embeddings with each image's placeholder run overwritten by its features.

The processor (processing_llava_dpa.py) builds the placeholders and the perceiver's sequences. The vision
side runs only on a call whose ids hold image placeholders (the prefill of `generate`); cache arguments are
passed to the target untouched, whatever the transformers line calls them.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_llava_dpa import LlavaDpaConfig, text_config_for_this_line


class LlavaDpaModelError(ValueError):
    pass


# ---- building blocks -----------------------------------------------------------------------------------------

def build_projector(layers: list[dict]) -> nn.Sequential:
    """The exporter writes every LLaVA / llava-dpa projector (linear, mlpNx_gelu, large_mlp, dpa_aligner,
    qwen_merger, identity) as a list of layers."""
    made = []
    for layer in layers:
        kind = layer["type"]
        if kind == "linear":
            made.append(nn.Linear(layer["in"], layer["out"], bias=layer.get("bias", True)))
        elif kind == "gelu":
            made.append(nn.GELU())
        elif kind == "relu":
            made.append(nn.ReLU())
        elif kind == "identity":
            made.append(nn.Identity())
        else:
            raise LlavaDpaModelError(f"unknown projector layer {kind!r}")
    return nn.Sequential(*made)


def sub_config(values: dict, attn_implementation: str):
    values = text_config_for_this_line(values)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    config._attn_implementation = attn_implementation
    return config


def merged_tokens(output) -> torch.Tensor:
    """Qwen2.5-VL's vision model returns the merger's output as a tensor (4.57) or as `pooler_output` (5.x)."""
    return output if torch.is_tensor(output) else output.pooler_output


class VisionModelLevel(nn.Module):
    """An HF CLIP/SigLIP/SigLIP2 vision model held under `vision_model`, as 4.57's own classes hold their
    transformer: transformers 5 dropped that level, and keeping it gives the exported weights the same names on
    both lines (llava-dpa's towers hold it the same way)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.vision_model = model

    def forward(self, *args, **kwargs):
        return self.vision_model(*args, **kwargs)


class VisionEncoder(nn.Module):
    """A ViT as the LLaVA path's tower uses it. `encoder` is the HF vision model itself (CLIP/SigLIP/SigLIP2 under a
    `vision_model` level on both lines), called whole, as llava-dpa's towers call it: on 4.57 SigLIP's hidden
    states are recorded by the vision model's forward (`check_model_inputs`), so its inner transformer called alone
    returns none, and SigLIP2's inner transformer takes `attention_mask`, not the model's `pixel_attention_mask`."""

    def __init__(self, spec: dict, attn_implementation: str = "sdpa"):
        super().__init__()
        self.kind = spec["kind"]
        self.select_layer = spec.get("select_layer", -1)
        self.select_feature = spec.get("select_feature", "patch")
        self.native = bool(spec.get("native", False))
        values = {k: v for k, v in spec["config"].items() if k != "model_type"}
        if self.kind in ("clip", "siglip", "siglip2"):
            from transformers import (
                CLIPVisionConfig,
                CLIPVisionModel,
                Siglip2VisionConfig,
                Siglip2VisionModel,
                SiglipVisionConfig,
                SiglipVisionModel,
            )

            config_cls, model_cls = {"clip": (CLIPVisionConfig, CLIPVisionModel),
                                     "siglip": (SiglipVisionConfig, SiglipVisionModel),
                                     "siglip2": (Siglip2VisionConfig, Siglip2VisionModel)}[self.kind]
            config = config_cls(**values)
            config._attn_implementation = attn_implementation
            model = model_cls(config)
            self.encoder = model if hasattr(model, "vision_model") else VisionModelLevel(model)
            self.config_ = config
        elif self.kind == "qwen2_5_vl":
            from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import (
                Qwen2_5_VLVisionConfig,
            )
            from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
                Qwen2_5_VisionTransformerPretrainedModel,
            )

            config = Qwen2_5_VLVisionConfig(**values)
            config._attn_implementation = attn_implementation
            self.encoder = Qwen2_5_VisionTransformerPretrainedModel(config)
            if spec.get("merger_as_projector"):
                self.encoder.merger.mlp = nn.Identity()
            self.config_ = config
        else:
            raise LlavaDpaModelError(f"unknown vision tower kind {self.kind!r}")

    def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None):
        """Tiles [N, 3, H, W] -> [N, tokens, d]; native resolution (flattened patches and their grids) -> one
        [tokens_i, d] tensor per image."""
        if self.kind == "qwen2_5_vl":
            if self.native:
                counts = (image_grid_thw.prod(-1) // self.config_.spatial_merge_size ** 2).tolist()
                return list(torch.split(merged_tokens(self.encoder(pixel_values, grid_thw=image_grid_thw)), counts))
            return self._qwen_tiles(pixel_values)
        if self.kind == "siglip2":
            n, c, h, w = pixel_values.shape
            p = self.config_.patch_size
            gh, gw = h // p, w // p
            patches = pixel_values.reshape(n, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(n, gh * gw, p * p * c)
            mask = torch.ones(n, gh * gw, dtype=torch.long, device=pixel_values.device)
            shapes = torch.tensor([[gh, gw]] * n, device=pixel_values.device)
            out = self.encoder(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes,
                               output_hidden_states=True)
            return self._selected(out)
        features = self._selected(self.encoder(pixel_values, output_hidden_states=True))
        if self.kind == "clip" and self.select_feature == "patch":
            features = features[:, 1:]
        return features

    def _selected(self, out) -> torch.Tensor:
        """The `select_layer` entry of the hidden states, which must be the embeddings and one per layer: a
        missing or longer tuple would make the index pick another layer's features without a word."""
        states, layers = out.hidden_states, self.config_.num_hidden_layers
        if states is None or len(states) != layers + 1:
            raise LlavaDpaModelError(
                f"the {self.kind} vision model returned {'no' if states is None else len(states)} hidden states for "
                f"{layers} layers (expected {layers + 1}); this transformers version records them another way, so "
                f"its features cannot be selected (the export is tested on transformers 4.57.6 and 5.24.0)")
        return states[self.select_layer]

    def _qwen_tiles(self, pixel_values):
        cfg = self.config_
        n, c, h, w = pixel_values.shape
        p, m, t = cfg.patch_size, cfg.spatial_merge_size, cfg.temporal_patch_size
        gh, gw = h // p, w // p
        x = pixel_values.unsqueeze(1).expand(n, t, c, h, w)
        x = x.reshape(n, t, c, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(n * gh * gw, c * t * p * p)
        grid = torch.tensor([[1, gh, gw]] * n, device=pixel_values.device)
        return merged_tokens(self.encoder(x, grid_thw=grid)).reshape(n, (gh // m) * (gw // m), -1)


class LlavaPerceiver(nn.Module):
    """The LLaVA-format DPA perceiver: per image tile, its LM reads [prefix or instruction context] + its
    projected ViT tokens; the features are the hidden states at the visual positions."""

    def __init__(self, spec: dict, attn_implementation: str = "sdpa"):
        super().__init__()
        self.vit = VisionEncoder(spec["vit"], attn_implementation)
        self.projector = build_projector(spec["projector"])
        self.language_model = AutoModel.from_config(sub_config(spec["text_config"], attn_implementation))
        self.prefix_ids = list(spec["prefix_ids"])
        self.select_layer = spec.get("select_layer")

    def forward(self, pixel_values, perceiver_input_ids=None, perceiver_attention_mask=None):
        visual = self.projector(self.vit(pixel_values))
        n, tokens, _ = visual.shape
        embed = self.language_model.get_input_embeddings()
        if perceiver_input_ids is None:
            ids = torch.tensor(self.prefix_ids, dtype=torch.long, device=visual.device)
            prefix = embed(ids).unsqueeze(0).expand(n, -1, -1).to(visual.dtype)
            inputs, mask, positions = torch.cat([prefix, visual], dim=1), None, None
        else:  # one left-padded row per tile: the prefix and its instruction context
            if perceiver_input_ids.shape[0] != n:
                raise LlavaDpaModelError(f"{perceiver_input_ids.shape[0]} perceiver sequences for {n} image tiles")
            text_mask = perceiver_attention_mask if perceiver_attention_mask is not None else \
                torch.ones_like(perceiver_input_ids)
            mask = torch.cat([text_mask.long(), torch.ones((n, tokens), dtype=torch.long, device=visual.device)], 1)
            inputs = torch.cat([embed(perceiver_input_ids).to(visual.dtype), visual], dim=1)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            if bool(mask.all()):
                mask, positions = None, None
        start = inputs.shape[1] - tokens
        out = self.language_model(inputs_embeds=inputs, attention_mask=mask, position_ids=positions, use_cache=False,
                                  output_hidden_states=self.select_layer is not None)
        hidden = out.last_hidden_state if self.select_layer is None else out.hidden_states[self.select_layer]
        return hidden[:, start:start + tokens]


class SectionedRotary(nn.Module):
    """Rotary embedding over 3-D (M-RoPE) positions with Qwen2.5-VL's sectioned layout, for stock Qwen3 layers:
    the frequencies split into `mrope_section` chunks, chunk i rotating by axis i % 3 (the official DPA
    perceiver's attention). No buffer: the frequencies are recomputed per call."""

    def __init__(self, head_dim: int, theta: float, mrope_section: list[int]):
        super().__init__()
        self.head_dim, self.theta, self.mrope_section = head_dim, float(theta), list(mrope_section)

    def forward(self, x, position_ids):
        if position_ids.ndim == 2:
            position_ids = position_ids[None].expand(3, -1, -1)
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.int64).to(device=x.device, dtype=torch.float)
        inv_freq = 1.0 / (self.theta ** (exponent / self.head_dim))
        with torch.autocast(device_type=x.device.type, enabled=False):
            freqs = position_ids[..., None].float() * inv_freq
            chunks = freqs.split(self.mrope_section, dim=-1)
            merged = torch.cat([chunk[i % 3] for i, chunk in enumerate(chunks)], dim=-1)
            emb = torch.cat([merged, merged], dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def mrope_positions(input_ids, attention_mask, grids, image_token_id: int, merge_size: int) -> torch.Tensor:
    """Qwen2.5-VL's 3-D positions for images (no video): text advances all three axes; an image's merged tokens
    take (0, row, column) offsets from the position after the text before it; text after it resumes at
    max + 1. Padded positions get 1."""
    batch, length = input_ids.shape
    positions = torch.ones((3, batch, length), dtype=torch.long, device=input_ids.device)
    image = 0
    for row in range(batch):
        valid = attention_mask[row].bool()
        ids = input_ids[row][valid].tolist()
        chunks, start, i = [], 0, 0
        while i < len(ids):
            if ids[i] != image_token_id:
                i += 1
                continue
            t, h, w = (int(v) for v in grids[image])
            gh, gw = h // merge_size, w // merge_size
            text = i - start
            offset = (chunks[-1].max().item() + 1) if chunks else 0
            chunks.append(torch.arange(text).view(1, -1).expand(3, -1) + offset)
            base = offset + text
            tt = torch.arange(t).view(-1, 1).expand(-1, gh * gw).flatten()
            hh = torch.arange(gh).view(1, -1, 1).expand(t, -1, gw).flatten()
            ww = torch.arange(gw).view(1, 1, -1).expand(t, gh, -1).flatten()
            chunks.append(torch.stack([tt, hh, ww]) + base)
            image += 1
            i += t * gh * gw
            start = i
        offset = (chunks[-1].max().item() + 1) if chunks else 0
        chunks.append(torch.arange(len(ids) - start).view(1, -1).expand(3, -1) + offset)
        positions[:, row, valid] = torch.cat(chunks, dim=1).to(positions.device)
    return positions


class QwenVLPerceiver(nn.Module):
    """The Qwen-VL-native DPA perceiver (the official release's): one sequence per sample, built by the
    processor (prefix, then per image the text before it, <|vision_start|>, N image pads, <|vision_end|>)."""

    def __init__(self, spec: dict, attn_implementation: str = "sdpa"):
        super().__init__()
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import (
            Qwen2_5_VLVisionConfig,
        )
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
            Qwen2_5_VisionTransformerPretrainedModel,
        )

        inner = spec["spec"]
        if inner["text_model"] != "qwen3_mrope":
            raise LlavaDpaModelError(f"Qwen-VL perceiver LM {inner['text_model']!r} is not supported by this export")
        vision = Qwen2_5_VLVisionConfig(**{k: v for k, v in inner["vision_config"].items() if k != "model_type"})
        vision._attn_implementation = attn_implementation
        self.visual = Qwen2_5_VisionTransformerPretrainedModel(vision)
        self.language_model = AutoModel.from_config(sub_config({**inner["text_config"], "model_type": "qwen3"},
                                                               attn_implementation))
        rotary = inner["rotary"]
        self.language_model.rotary_emb = SectionedRotary(rotary["head_dim"], rotary["theta"], inner["mrope_section"])
        self.merge_size = vision.spatial_merge_size
        self.image_token_id = inner["image_token_id"]
        self.start_id, self.end_id = inner["vision_start_token_id"], inner["vision_end_token_id"]
        self.visual_positions_only = bool(spec.get("visual_positions_only", False))

    def forward(self, pixel_values, image_grid_thw, perceiver_input_ids, perceiver_attention_mask):
        visual = merged_tokens(self.visual(pixel_values, grid_thw=image_grid_thw))
        ids, mask = perceiver_input_ids, perceiver_attention_mask
        embeds = self.language_model.get_input_embeddings()(ids)
        slots = (ids == self.image_token_id) & mask.bool()
        if int(slots.sum()) != visual.shape[0]:
            raise LlavaDpaModelError(f"the perceiver's sequences hold {int(slots.sum())} image pads for "
                                     f"{visual.shape[0]} visual tokens")
        embeds = embeds.masked_scatter(slots.unsqueeze(-1), visual.to(embeds.dtype))
        positions = mrope_positions(ids, mask, image_grid_thw.tolist(), self.image_token_id, self.merge_size)
        hidden = self.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                     use_cache=False).last_hidden_state
        features = []
        for row in range(ids.shape[0]):
            row_ids = ids[row].tolist()
            for first, token in enumerate(row_ids):
                if token == self.start_id and mask[row, first]:
                    last = row_ids.index(self.end_id, first)
                    span = hidden[row, first:last + 1]
                    features.append(span[1:-1] if self.visual_positions_only else span)
        return features


def padded_positions(attention_mask, length: int):
    """Each row's positions counted from its first real token, for a batch with padding (None without): the
    target computes 0..L-1 for every row otherwise, so a left-padded row would read shifted positions. The mask
    covers the cached tokens too; the last `length` positions are this call's. generate() computes the same."""
    if attention_mask is None or attention_mask.ndim != 2 or bool(attention_mask.all()):
        return None
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)[:, -length:]


# ---- the model ----------------------------------------------------------------------------------------------------

class LlavaDpaPreTrainedModel(PreTrainedModel):
    config_class = LlavaDpaConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flash_attn_2 = True
    _supports_cache_class = True
    _supports_attention_backend = True
    _no_split_modules = []  # noqa: RUF012  (transformers reads a list here)

    def _init_weights(self, module):
        # every parameter comes from the exported checkpoint; a fresh model gets the common defaults
        std = getattr(self.config.text_config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)


class LlavaDpaForConditionalGeneration(LlavaDpaPreTrainedModel, GenerationMixin):
    def __init__(self, config: LlavaDpaConfig):
        super().__init__(config)
        attn = config._attn_implementation or "sdpa"
        vision_attn = config.vision.get("attn_implementation") or ("sdpa" if attn in ("eager", "sdpa") else attn)
        kind = config.vision["kind"]
        if kind == "llava_perceiver":
            self.vision_tower = LlavaPerceiver(config.vision, vision_attn)
        elif kind == "qwen_vl_perceiver":
            self.vision_tower = QwenVLPerceiver(config.vision, vision_attn)
        else:
            self.vision_tower = VisionEncoder(config.vision, vision_attn)
        self.mm_projector = build_projector(config.projector)
        text = config.text_config
        self.model = AutoModel.from_config(text)
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        # transformers picks the loss from the class name, and "ForConditionalGeneration" names none: a causal LM's
        self.loss_type = "ForCausalLM"
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def get_decoder(self):
        return self.model

    # ---- images -> features in the target's width ---------------------------------------------------------
    def image_features(self, pixel_values, image_grid_thw=None, perceiver_input_ids=None,
                       perceiver_attention_mask=None) -> list[torch.Tensor]:
        """One [tokens_i, d_target] tensor per image, in the order of the placeholder runs."""
        kind = self.config.vision["kind"]
        dtype = next(self.vision_tower.parameters()).dtype
        pixel_values = pixel_values.to(dtype)
        if kind == "qwen_vl_perceiver":
            features = self.vision_tower(pixel_values, image_grid_thw, perceiver_input_ids, perceiver_attention_mask)
        elif kind == "llava_perceiver":
            features = list(self.vision_tower(pixel_values, perceiver_input_ids, perceiver_attention_mask))
        elif self.vision_tower.native:
            features = self.vision_tower(pixel_values, image_grid_thw)
        else:
            features = list(self.vision_tower(pixel_values))
        sizes = [f.shape[0] for f in features]
        projected = self.mm_projector(torch.cat(features))
        return list(torch.split(projected, sizes))

    def embed_with_images(self, input_ids, pixel_values, image_grid_thw=None, perceiver_input_ids=None,
                          perceiver_attention_mask=None):
        image_id = self.config.image_token_id
        slots = input_ids == image_id
        embed = self.get_input_embeddings()
        inputs_embeds = embed(input_ids.masked_fill(slots, 0))
        if not bool(slots.any()):
            return inputs_embeds
        if pixel_values is None:
            raise LlavaDpaModelError("the ids hold image placeholders but no pixel_values were given")
        features = torch.cat(self.image_features(pixel_values, image_grid_thw, perceiver_input_ids,
                                                 perceiver_attention_mask))
        if features.shape[0] != int(slots.sum()):
            raise LlavaDpaModelError(f"{int(slots.sum())} image placeholders for {features.shape[0]} image features; "
                                     f"build the inputs with this model's processor")
        return inputs_embeds.masked_scatter(slots.unsqueeze(-1).to(inputs_embeds.device),
                                            features.to(inputs_embeds.device, inputs_embeds.dtype))

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, image_grid_thw=None, perceiver_input_ids=None,
                perceiver_attention_mask=None, logits_to_keep=0, return_dict=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.embed_with_images(input_ids, pixel_values, image_grid_thw, perceiver_input_ids,
                                                   perceiver_attention_mask)
        if position_ids is None:
            position_ids = padded_positions(attention_mask, inputs_embeds.shape[1])
        # cache arguments (past_key_values, cache_position or its successor) go to the target untouched; the
        # Trainer's loss count (num_items_in_batch) goes to the loss, not to the target
        kwargs.pop("token_type_ids", None)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, use_cache=use_cache, return_dict=True, **kwargs)
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size,
                                      num_items_in_batch=num_items_in_batch)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                      hidden_states=out.hidden_states, attentions=out.attentions)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, inputs_embeds=None,
                                      pixel_values=None, image_grid_thw=None, perceiver_input_ids=None,
                                      perceiver_attention_mask=None, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, past_key_values=past_key_values,
                                                       attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                                       **kwargs)
        step_ids = inputs.get("input_ids")
        # the images are read only on the step whose ids hold their placeholders (the prefill)
        if step_ids is not None and bool((step_ids == self.config.image_token_id).any()):
            inputs.update(pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                          perceiver_input_ids=perceiver_input_ids, perceiver_attention_mask=perceiver_attention_mask)
        return inputs


__all__ = ["LlavaDpaForConditionalGeneration", "LlavaDpaPreTrainedModel"]
