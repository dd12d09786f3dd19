"""Qwen2 / Qwen2.5 targets."""
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Model

from llava_dpa.language_models.base import make_llava_classes

LlavaQwen2Config, LlavaQwen2Model, LlavaQwen2ForCausalLM = make_llava_classes("qwen2", Qwen2Config, Qwen2Model,
                                                                              Qwen2ForCausalLM)
