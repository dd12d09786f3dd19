"""Small helpers the patched llava CLI and eval scripts call (patches/08-cli.patch, 09-eval-scripts.patch)."""
from __future__ import annotations

import torch

from llava_dpa.templates import resolve_conv_mode


def conv_mode_for(model, requested: str | None) -> str:
    """The checkpoint's template (from its config); `--conv-mode` overrides it."""
    from llava.conversation import conv_templates


    return resolve_conv_mode(model.config, requested, conv_templates.keys())


def image_dtype(model) -> torch.dtype:
    """Images go in at the vision tower's dtype (llava hard-codes float16, which a CPU model cannot use)."""
    tower = model.get_vision_tower()
    return tower.dtype if tower is not None else model.dtype


def to_model(images, model):
    if isinstance(images, list):
        return [im.to(model.device, dtype=image_dtype(model)) for im in images]
    return images.to(model.device, dtype=image_dtype(model))


def decode_reply(tokenizer, output_ids: torch.Tensor, input_ids: torch.Tensor) -> str:
    """The generated text alone. With inputs_embeds, current transformers returns only new tokens, and
    llava's CLI sliced the prompt length off again, storing an empty answer in the history."""
    row = output_ids[0]
    prompt = input_ids[0]
    if row.shape[0] >= prompt.shape[0] and torch.equal(row[:prompt.shape[0]].cpu(), prompt.cpu()):
        row = row[prompt.shape[0]:]
    return tokenizer.decode(row, skip_special_tokens=True).strip()
