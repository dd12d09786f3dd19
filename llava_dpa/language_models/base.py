"""What every LLaVA causal LM shares: multimodal forward and generate on current transformers.

llava 1.2.2's classes have a fixed forward signature (generate now passes cache_position) and pass
attention_mask=None explicitly to generate; both break on transformers >= 4.45.
"""
from __future__ import annotations

from typing import Optional

import torch
from transformers import AutoConfig, AutoModelForCausalLM


class LlavaCausalLMMixin:
    """Put first in the bases: `class X(LlavaCausalLMMixin, QwenForCausalLM, LlavaMetaForCausalLM)`."""

    def get_model(self):
        return self.model

    def forward(self, input_ids: torch.LongTensor = None, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.LongTensor] = None, past_key_values=None,
                inputs_embeds: Optional[torch.FloatTensor] = None, labels: Optional[torch.LongTensor] = None,
                use_cache: Optional[bool] = None, output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, images=None, image_sizes=None,
                return_dict: Optional[bool] = None, cache_position=None, packed: bool = False, **kwargs):
        # The batch becomes the target's input embeddings in one module (llava_integration/multimodal_inputs.py,
        # through LLaVA's prepare_inputs_labels_for_multimodal), a pack from the packing sampler included.
        if inputs_embeds is None:
            (input_ids, position_ids, attention_mask, past_key_values, inputs_embeds,
             labels) = self.prepare_inputs_labels_for_multimodal(
                input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes, packed=packed)
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              past_key_values=past_key_values, inputs_embeds=inputs_embeds, labels=labels,
                              use_cache=use_cache, output_attentions=output_attentions,
                              output_hidden_states=output_hidden_states, return_dict=return_dict,
                              cache_position=cache_position, **kwargs)
        return out

    @torch.no_grad()
    def generate(self, inputs: Optional[torch.Tensor] = None, images=None, image_sizes=None, **kwargs):
        position_ids = kwargs.pop("position_ids", None)
        attention_mask = kwargs.pop("attention_mask", None)
        if "inputs_embeds" in kwargs:
            raise NotImplementedError("`inputs_embeds` is not supported; pass input_ids and images")
        if images is not None:
            (inputs, position_ids, attention_mask, _, inputs_embeds,
             _) = self.prepare_inputs_labels_for_multimodal(inputs, position_ids, attention_mask, None, None,
                                                              images, image_sizes=image_sizes)
        else:
            inputs_embeds = self.get_model().embed_tokens(inputs)
        optional = {k: v for k, v in (("position_ids", position_ids), ("attention_mask", attention_mask))
                    if v is not None}
        return super().generate(inputs_embeds=inputs_embeds, **optional, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, inputs_embeds=None, **kwargs):
        images = kwargs.pop("images", None)
        image_sizes = kwargs.pop("image_sizes", None)
        inputs = super().prepare_inputs_for_generation(input_ids, past_key_values=past_key_values,
                                                       inputs_embeds=inputs_embeds, **kwargs)
        if images is not None:
            inputs["images"] = images
        if image_sizes is not None:
            inputs["image_sizes"] = image_sizes
        return inputs


def hook_hidden_states_from_the_top(model) -> None:
    """Install transformers' output-capturing hooks once, from the outermost model, before any forward asks for
    hidden states. transformers 5.x installs them on first request and recurses into nested models, but installs
    them again on a nested model that already has them (`output_capturing.recursively_install_hooks` does not check
    `_output_capturing_hooks_installed`): after a tower (or perceiver LM) has answered `output_hidden_states=True` and
    the whole model is then asked for its hidden states (MIR, CKA), the tower records every layer twice and
    `hidden_states[select_layer]` is another layer, silently. Installed from the top, every nested model is marked
    as hooked and nothing installs twice. The hooks do nothing unless a call collects outputs. transformers 4.57
    records hidden states without hooks: nothing to do."""
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:
        return
    maybe_install_capturing_hooks(model)


def rope_settings_for_this_line(kwargs: dict) -> dict:
    """transformers 5 saves RoPE as `rope_parameters` ({rope_theta, rope_type, ...}) without the top-level
    `rope_theta`/`rope_scaling` that 4.57 reads; 4.57 would silently fall back to its default theta (10000
    where Qwen3 uses 1e6). Under 4.x the saved values are moved back where 4.57 reads them."""
    import transformers

    rope = kwargs.get("rope_parameters")
    if not transformers.__version__.startswith("4.") or not isinstance(rope, dict) or "rope_theta" in kwargs:
        return kwargs
    kwargs = dict(kwargs)
    kwargs["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "default") != "default":
        kwargs.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    return kwargs


def make_llava_classes(family: str, config_cls, base_model_cls, causal_lm_cls):
    """Build (Config, Model, ForCausalLM) LLaVA classes for one language-model family.

    The config's model_type is `llava_<family>`; saved checkpoints therefore name their class.
    """
    from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel

    title = "".join(part.capitalize() for part in family.split("_"))

    def config_init(self, **kwargs):
        config_cls.__init__(self, **rope_settings_for_this_line(kwargs))

    config = type(f"Llava{title}Config" if family != "llama" else "LlavaConfig", (config_cls,),
                  {"model_type": f"llava_{family}", "__init__": config_init})

    def model_init(self, cfg):
        super(model, self).__init__(cfg)

    model = type(f"Llava{title}Model", (LlavaMetaModel, base_model_cls),
                 {"config_class": config, "__init__": model_init})

    def lm_init(self, cfg):
        # Skip causal_lm_cls.__init__ (it would build the plain base model) and build the LLaVA one.
        super(causal_lm_cls, self).__init__(cfg)
        self.model = model(cfg)
        self.vocab_size = cfg.vocab_size
        self.lm_head = torch.nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.post_init()

    lm = type(f"Llava{title}ForCausalLM", (LlavaCausalLMMixin, causal_lm_cls, LlavaMetaForCausalLM),
              {"config_class": config, "__init__": lm_init})
    module = f"llava_dpa.language_models.{family}"
    for cls in (config, model, lm):
        cls.__module__ = module
    AutoConfig.register(config.model_type, config, exist_ok=True)
    AutoModelForCausalLM.register(config, lm, exist_ok=True)
    return config, model, lm
