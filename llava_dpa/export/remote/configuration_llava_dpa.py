"""Configuration of a llava-dpa model exported for transformers (`llava-dpa export-hf`).

Remote code: this file is copied into the exported folder and imports only torch and transformers. The
target language model's config is a real sub-config (`text_config`, so generation finds its layers); the
vision side (a ViT, the LLaVA-format perceiver or the Qwen-VL-native perceiver) and the projector are plain
JSON dicts written by the exporter and read by modeling_llava_dpa.py.
"""
from __future__ import annotations

import transformers
from transformers import AutoConfig, PretrainedConfig


def text_config_for_this_line(values: dict) -> dict:
    """RoPE settings where this transformers line reads them: 5.x saves `rope_parameters` without the top-level
    `rope_theta` / `rope_scaling` that 4.57 reads (4.57 would silently use theta 10000); 4.57 saves the reverse,
    which 5.x converts itself."""
    values = dict(values)
    rope = values.get("rope_parameters")
    if transformers.__version__.startswith("4.") and isinstance(rope, dict) and "rope_theta" not in values:
        values["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            values.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    return values


def build_text_config(values: dict) -> PretrainedConfig:
    values = text_config_for_this_line(values)
    model_type = values.pop("model_type")
    return AutoConfig.for_model(model_type, **values)


class LlavaDpaConfig(PretrainedConfig):
    model_type = "llava_dpa"
    sub_configs = {"text_config": AutoConfig}  # noqa: RUF012  (transformers reads a dict here)

    def __init__(self, text_config=None, vision=None, projector=None, image_token_id=None, template=None,
                 **kwargs):
        if isinstance(text_config, dict):
            text_config = build_text_config(text_config)
        self.text_config = text_config
        self.vision = vision or {}
        self.projector = projector or []
        self.image_token_id = image_token_id
        self.template = template
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    def to_dict(self):
        out = super().to_dict()
        if isinstance(self.text_config, PretrainedConfig):
            out["text_config"] = self.text_config.to_dict()
        return out
