"""Qwen3 targets (Qwen3-0.6B perceiver LM, Qwen3-4B, Qwen3-32B)."""
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

from llava_dpa.language_models.base import make_llava_classes

LlavaQwen3Config, LlavaQwen3Model, LlavaQwen3ForCausalLM = make_llava_classes("qwen3", Qwen3Config, Qwen3Model,
                                                                              Qwen3ForCausalLM)
