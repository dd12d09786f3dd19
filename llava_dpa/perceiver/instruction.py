"""Instruction context (early fusion, Table 4 "w/ instruction context").

With `--perceiver_instruction_context True`, the perceiver reads
    [its template up to the image] + [the instruction text] + "\\n" + [image tokens]
so the visual tokens can attend to the question. Text after the image could not influence the visual
tokens under causal attention, hence the instruction goes before the image.

The perceiver may use another tokenizer than the target, so the instruction travels as text: the target
tokens of the user turn that holds the image are decoded with the target tokenizer (special tokens and the
role name dropped) and re-encoded with the perceiver's tokenizer. This happens inside the model's
multimodal input preparation, so training, `llava.serve.cli`, `llava.eval.*` and anything else that calls
the model get the same features.

Multi-turn conversations: the features bind to the turn that holds the image (usually the first
question); later turns do not re-encode the image. The paper notes this as the variant's limitation.
"""
from __future__ import annotations

import re

import torch

from llava_dpa.data.tokenization import IMAGE_TOKEN_INDEX

ROLE = re.compile(r"^\s*(user|human|USER|Human)\s*:?\s*", flags=re.S)


def turn_end_ids(tokenizer, version: str | None) -> set[int]:
    """Token ids that end a turn: the template's separator token and the tokenizer's EOS."""
    ends = set()
    from llava.conversation import conv_templates

    sep = conv_templates[version].sep if version in conv_templates else None
    for text in (sep, tokenizer.eos_token):
        if text:
            ids = tokenizer(text, add_special_tokens=False).input_ids
            if len(ids) == 1:
                ends.add(ids[0])
    return ends


def image_turn_texts(input_ids: torch.Tensor, attention_mask, tokenizer, ends: set[int]) -> list[str]:
    """One instruction text per image placeholder, in the order LLaVA consumes image features; a sample
    without a placeholder consumes one (dummy) image and gets ''."""
    texts = []
    for row, ids in enumerate(input_ids):
        if attention_mask is not None:
            ids = ids[attention_mask[row].bool()]
        ids = ids.tolist()
        positions = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX]
        if not positions:
            texts.append("")
            continue
        for pos in positions:
            start = max((i for i in range(pos) if ids[i] in ends), default=-1) + 1
            end = next((i for i in range(pos, len(ids)) if ids[i] in ends), len(ids))
            turn = [t for t in ids[start:end] if t >= 0]
            text = tokenizer.decode(turn, skip_special_tokens=True)
            texts.append(ROLE.sub("", text, count=1).strip())
    return texts


def tiles_per_image(images) -> list[int]:
    if isinstance(images, list) or images.ndim == 5:
        return [x.shape[0] if x.ndim == 4 else 1 for x in images]
    return [1] * images.shape[0]
