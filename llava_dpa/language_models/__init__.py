"""LLaVA target language models, chosen by `config.model_type` (never by a path).

`llava.model` re-exports these names (patches/03-model-classes.patch), so LLaVA code that does
`from llava.model import *` gets them.
"""
from __future__ import annotations

from llava_dpa.language_models.llama import LlavaConfig, LlavaLlamaForCausalLM, LlavaLlamaModel
from llava_dpa.language_models.mistral import LlavaMistralConfig, LlavaMistralForCausalLM, LlavaMistralModel
from llava_dpa.language_models.qwen2 import LlavaQwen2Config, LlavaQwen2ForCausalLM, LlavaQwen2Model
from llava_dpa.language_models.qwen3 import LlavaQwen3Config, LlavaQwen3ForCausalLM, LlavaQwen3Model

# model_type of a plain LM or of a LLaVA checkpoint -> the LLaVA class that trains/loads it.
TARGET_CLASSES = {
    "llama": LlavaLlamaForCausalLM,
    "qwen3": LlavaQwen3ForCausalLM,
    "qwen2": LlavaQwen2ForCausalLM,
    "mistral": LlavaMistralForCausalLM,
}


def target_class_for(model_type: str):
    family = model_type[len("llava_"):] if model_type.startswith("llava_") else model_type
    try:
        return TARGET_CLASSES[family]
    except KeyError:
        raise ValueError(f"unsupported language model type {model_type!r}; supported: "
                         f"{sorted(TARGET_CLASSES)} (and their llava_* checkpoints)") from None


__all__ = [
    "LlavaConfig", "LlavaLlamaModel", "LlavaLlamaForCausalLM",
    "LlavaMistralConfig", "LlavaMistralModel", "LlavaMistralForCausalLM",
    "LlavaQwen2Config", "LlavaQwen2Model", "LlavaQwen2ForCausalLM",
    "LlavaQwen3Config", "LlavaQwen3Model", "LlavaQwen3ForCausalLM",
    "TARGET_CLASSES", "target_class_for",
]
