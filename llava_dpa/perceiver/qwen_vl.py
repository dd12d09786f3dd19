"""The Qwen-VL-native perceiver model: the official DPA release's perceiver, built from config.

A Qwen-VL ViT whose patch merger projects into the perceiver LM's width, and a language model that
reads the image at native resolution with 3-D M-RoPE positions. Three kinds are accepted:
- `qwen2_5_vl_text`: a stock Hugging Face Qwen2.5-VL checkpoint (its ViT and its own LM);
- `qwen3_mrope`: the official perceiver, a Qwen2.5-VL ViT and a Qwen3 LM with Qwen2.5-VL's sectioned M-RoPE
  (modeling_llava_baseline.py 550-557). Its rotary frequencies come from the recorded `rotary`
  settings: the official checkpoint builds them from its `perceiver_config` (a Qwen2Config), not from the
  Qwen3 LM's own config, so rope_theta may well be Qwen2Config's default 10000;
- `qwen3_vl_text`: a stock Qwen3-VL checkpoint (its ViT, whose deepstack features are added to the LM's first
  layers at the visual positions, and its LM with interleaved M-RoPE), where transformers has Qwen3-VL.

Everything the model needs is one normalised `spec` dict (recorded in the target's config), so a trained
DPA checkpoint rebuilds its perceiver with the perceiver folder gone.

The parts are built with their constructors, not `_from_config`: under DeepSpeed ZeRO-3, transformers 4.57's
`_from_config` builds inside `zero.Init`, whose empty partitions break the embedding's padding-row init; the
outer loader fills (and partitions) the weights as it does for every tower.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from llava_dpa.perceiver.mrope import SectionedRotary
from llava_dpa.towers.qwen2_5_vl import merged_tokens

SPEC_TYPE = "llava_dpa_qwen_vl_perceiver"
TEXT_MODELS = ("qwen2_5_vl_text", "qwen3_mrope", "qwen3_vl_text")


class QwenVLPerceiverError(ValueError):
    pass


def _rope_of(config: dict) -> dict:
    return config.get("rope_parameters") or config.get("rope_scaling") or {}


def _token_ids(config: dict) -> dict:
    """The vision tokens' ids a Qwen-VL config names (Qwen's own when it names none)."""
    return {"image_token_id": config.get("image_token_id", 151655),
            "vision_start_token_id": config.get("vision_start_token_id", 151652),
            "vision_end_token_id": config.get("vision_end_token_id", 151653)}


def spec_from_config(config: dict, source: str) -> dict:
    """The normalised spec of a perceiver folder's config.json: this project's own format, or a stock
    Qwen2.5-VL checkpoint. Anything else is refused, naming what it is."""
    model_type = config.get("model_type")
    if model_type == SPEC_TYPE:
        return config
    if model_type == "qwen2_5_vl":
        text = dict(config.get("text_config") or {k: v for k, v in config.items() if k != "vision_config"})
        text.pop("model_type", None)
        section = _rope_of(text).get("mrope_section") or _rope_of(config).get("mrope_section")
        return {"model_type": SPEC_TYPE, "source_format": "qwen2_5_vl", "text_model": "qwen2_5_vl_text",
                "vision_config": {k: v for k, v in config["vision_config"].items() if k != "model_type"},
                "text_config": text, "mrope_section": list(section),
                **_token_ids(config)}
    if model_type == "qwen3_vl":
        try:
            import transformers.models.qwen3_vl  # noqa: F401
        except ImportError:
            raise QwenVLPerceiverError(f"{source} is a Qwen3-VL checkpoint, which this transformers does not have "
                                       f"(it arrived in 4.57)") from None
        text = dict(config["text_config"])
        text.pop("model_type", None)
        return {"model_type": SPEC_TYPE, "source_format": "qwen3_vl", "text_model": "qwen3_vl_text",
                "vision_config": {k: v for k, v in config["vision_config"].items() if k != "model_type"},
                "text_config": text, "mrope_section": list(_rope_of(text)["mrope_section"]),
                **_token_ids(config)}
    if model_type == "qwen3_vl_moe":
        raise QwenVLPerceiverError(f"{source} is a Qwen3-VL MoE checkpoint; the Qwen-VL perceiver reads dense "
                                   f"Qwen2.5-VL and Qwen3-VL models")
    if model_type in ("llava_baseline", "forward_visual_tokens_llava_arch"):
        raise QwenVLPerceiverError(
            f"{source} is in the official DPA release's layout ({model_type}); convert it first: "
            f"llava-dpa import-official {source} --output DIR")
    raise QwenVLPerceiverError(f"{source}: model_type {model_type!r} is not a Qwen-VL perceiver (a Qwen2.5-VL checkpoint, "
                               f"or one written by llava-dpa import-official / make-perceiver --native)")


def mrope_text_config(text: dict, section: list[int], interleaved: bool = False) -> dict:
    """The M-RoPE settings where this transformers line reads them: 4.57 in `rope_scaling` (with `rope_theta`
    beside it), 5.x in `rope_parameters`; a config saved by either line works on both."""
    import transformers

    rope = _rope_of(text)
    theta = text.get("rope_theta") or rope.get("rope_theta") or 1_000_000.0
    text = {k: v for k, v in text.items() if k not in ("rope_scaling", "rope_parameters", "rope_theta")}
    settings = {"mrope_section": list(section), **({"mrope_interleaved": True} if interleaved else {})}
    if transformers.__version__.startswith("4."):
        return {**text, "rope_theta": theta, "rope_scaling": {"type": "mrope" if not interleaved else "default",
                                                              "rope_type": "default", **settings}}
    return {**text, "rope_parameters": {"rope_type": "default", "rope_theta": theta, **settings}}


def _text_model(spec: dict, attn_implementation: str) -> nn.Module:
    text = dict(spec["text_config"])
    kind = spec["text_model"]
    if kind == "qwen2_5_vl_text":
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLTextModel

        config = Qwen2_5_VLTextConfig(**mrope_text_config(text, spec["mrope_section"]))
        config._attn_implementation = attn_implementation
        return Qwen2_5_VLTextModel(config)
    if kind == "qwen3_vl_text":
        from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel

        config = Qwen3VLTextConfig(**mrope_text_config(text, spec["mrope_section"], interleaved=True))
        config._attn_implementation = attn_implementation
        return Qwen3VLTextModel(config)
    if kind == "qwen3_mrope":
        from transformers import Qwen3Config
        from transformers.models.qwen3.modeling_qwen3 import Qwen3Model

        config = Qwen3Config(**{k: v for k, v in text.items() if k != "model_type"})
        config._attn_implementation = attn_implementation
        model = Qwen3Model(config)
        rotary = spec["rotary"]
        if rotary["head_dim"] != config.head_dim:
            raise QwenVLPerceiverError(f"the perceiver's rotary settings are for head_dim {rotary['head_dim']}, its LM's "
                                       f"attention heads have {config.head_dim}")
        model.rotary_emb = SectionedRotary(rotary["head_dim"], rotary["theta"], spec["mrope_section"])
        return model
    raise QwenVLPerceiverError(f"unknown perceiver language model {kind!r}; expected one of {TEXT_MODELS}")


class QwenVLPerceiver(nn.Module):
    def __init__(self, spec: dict, attn_implementation: str = "sdpa"):
        super().__init__()
        self.spec = spec
        self.deepstack = spec["text_model"] == "qwen3_vl_text"
        if self.deepstack:
            from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
            from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel as vision_cls

            vision = Qwen3VLVisionConfig(**spec["vision_config"])
        else:
            from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
            from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
                Qwen2_5_VisionTransformerPretrainedModel as vision_cls,
            )

            vision = Qwen2_5_VLVisionConfig(**spec["vision_config"])
        vision._attn_implementation = attn_implementation
        self.visual = vision_cls(vision)
        self.language_model = _text_model(spec, attn_implementation)
        width = self.language_model.config.hidden_size
        if vision.out_hidden_size != width:
            raise QwenVLPerceiverError(f"the perceiver ViT's merger outputs {vision.out_hidden_size} features, its LM is "
                                       f"{width} wide")

    @property
    def config(self):
        return self.language_model.config

    @property
    def vision_config(self):
        return self.visual.config

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.embed_tokens(ids)

    def visual_tokens(self, patches: torch.Tensor, grids: torch.Tensor):
        """Flattened patches of all images -> (their merged tokens in the LM's width, Qwen3-VL's deepstack
        features of the same tokens or None)."""

        out = self.visual(patches, grid_thw=grids)
        if not self.deepstack:
            return merged_tokens(out), None
        if isinstance(out, tuple):  # transformers 4.57: (merged, deepstack list)
            return out[0], list(out[1])
        return out.pooler_output, list(out.deepstack_features)

    def forward(self, inputs_embeds, attention_mask, position_ids, all_layers: bool = False, **deepstack):
        """The final-norm hidden states, or (all_layers) the embeddings and every layer's output, the last one
        after the final norm, as transformers returns them. `deepstack`: Qwen3-VL's visual_pos_masks and
        deepstack_visual_embeds."""
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  position_ids=position_ids, use_cache=False, output_hidden_states=all_layers,
                                  **deepstack)
        return out.hidden_states if all_layers else out.last_hidden_state


# ---- the perceiver's own weights from the checkpoints it may come from ---------------------------------
def own_state(state: dict, spec: dict, source: str) -> dict:
    """A perceiver folder's weights under this module's names (visual.*, language_model.*); an LM head is
    dropped (the features never read it)."""
    out = {}
    for key, value in state.items():
        for prefix, target in (("model.visual.", "visual."), ("visual.", "visual."),
                               ("model.language_model.", "language_model."), ("language_model.", "language_model."),
                               ("model.", "language_model.")):
            if key.startswith(prefix):
                out[target + key[len(prefix):]] = value
                break
    if not any(k.startswith("visual.") for k in out) or not any(k.startswith("language_model.") for k in out):
        raise QwenVLPerceiverError(f"{source}: no perceiver ViT (visual.*) or LM (language_model.*) weights found")
    return out
