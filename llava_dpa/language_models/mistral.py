"""Mistral targets. model_type `llava_mistral`, as in LLaVA."""
from transformers import MistralConfig, MistralForCausalLM, MistralModel

from llava_dpa.language_models.base import make_llava_classes

LlavaMistralConfig, LlavaMistralModel, LlavaMistralForCausalLM = make_llava_classes(
    "mistral", MistralConfig, MistralModel, MistralForCausalLM)
