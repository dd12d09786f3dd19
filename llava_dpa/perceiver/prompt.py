"""The perceiver's input text: its own template up to the image placeholder (instruction-agnostic).

It is built with the perceiver's tokenizer, which may differ from the target's (DPA-LLaMA-3.2-3B uses a
Qwen3 perceiver), and recorded in the target's config as token ids, so a checkpoint needs no tokenizer
of the perceiver to run.
"""
from __future__ import annotations

from llava_dpa.data.tokenization import DEFAULT_IMAGE_TOKEN
from llava_dpa.templates import CHAT_TEMPLATE_VERSIONS, render


def prefix_text(version: str | None, system: str = "") -> str:
    """Everything the perceiver's template puts before the first image of a user turn."""
    if not version or version == "plain":
        return ""
    if version in CHAT_TEMPLATE_VERSIONS:
        text = render(version, system, [("user", DEFAULT_IMAGE_TOKEN)])[0]
    else:
        from llava.conversation import conv_templates

        if version not in conv_templates:
            raise ValueError(f"the perceiver's conversation version {version!r} is unknown")
        conv = conv_templates[version].copy()
        conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n")
        conv.append_message(conv.roles[1], None)
        text = conv.get_prompt()
    return text[:text.index(DEFAULT_IMAGE_TOKEN)]


def prefix_ids(tokenizer, version: str | None) -> list[int]:
    text = prefix_text(version)
    ids = tokenizer(text, add_special_tokens=False).input_ids if text else []
    bos = tokenizer.bos_token_id
    # A tokenizer that adds BOS by default (Llama) expects it first, as llava's tokenizer_image_token does.
    if bos is not None and tokenizer("a").input_ids[:1] == [bos] and ids[:1] != [bos]:
        ids = [bos] + ids
    return ids
