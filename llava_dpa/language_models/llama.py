"""LLaMA targets (LLaMA 3.x incl. 3.2's rope scaling; LLaMA 2). model_type `llava_llama`, as in LLaVA."""
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from llava_dpa.language_models.base import make_llava_classes

LlavaConfig, LlavaLlamaModel, LlavaLlamaForCausalLM = make_llava_classes("llama", LlamaConfig, LlamaModel,
                                                                         LlamaForCausalLM)
