"""The trainable parts of a LLaVA or DPA model, named once.

Trainability (`training/trainability.py`), the optimizer's parameter groups (`training/optim.py`), LoRA
targets and the start-of-training table all map a parameter to its part with `part_of`, so a parameter
can never be frozen under one name and given a learning rate under another.
"""
from __future__ import annotations

from enum import Enum


class Part(str, Enum):
    LANGUAGE_MODEL = "language_model"          # the target LLM: embeddings, blocks, final norm, LM head
    PROJECTOR = "projector"                    # the alignment projector (mm_projector)
    IMAGE_NEWLINE = "image_newline"            # LLaVA-NeXT's row separator embedding (spatial_unpad)
    VISION_TOWER = "vision_tower"              # a plain ViT tower (the controlled baseline)
    PERCEIVER_VIT = "perceiver_vit"            # the perceiver's own ViT
    PERCEIVER_PROJECTOR = "perceiver_projector"
    PERCEIVER_LM = "perceiver_lm"              # the perceiver LM's embeddings, blocks and final norm
    PERCEIVER_LM_HEAD = "perceiver_lm_head"    # unused by the features; only the auxiliary loss reads it

    def __str__(self) -> str:
        return self.value


PERCEIVER_PARTS = (Part.PERCEIVER_VIT, Part.PERCEIVER_PROJECTOR, Part.PERCEIVER_LM, Part.PERCEIVER_LM_HEAD)

# First match wins. Substrings, so the rules hold under PEFT's and DeepSpeed's name prefixes.
_RULES = (
    ("vision_tower.perceiver.model.vision_tower.", Part.PERCEIVER_VIT),
    ("vision_tower.perceiver.visual.", Part.PERCEIVER_VIT),   # the Qwen-VL perceiver's ViT and merger (register_DPA.py)
    ("vision_tower.perceiver.model.mm_projector.", Part.PERCEIVER_PROJECTOR),
    ("vision_tower.perceiver.lm_head.", Part.PERCEIVER_LM_HEAD),
    ("vision_tower.perceiver.", Part.PERCEIVER_LM),
    ("vision_tower.", Part.VISION_TOWER),
    ("mm_projector.", Part.PROJECTOR),
    ("vision_resampler.", Part.PROJECTOR),
    ("image_newline", Part.IMAGE_NEWLINE),
)


def part_of(name: str) -> Part:
    """The part a parameter (or module) name belongs to."""
    for key, part in _RULES:
        if key in name:
            return part
    return Part.LANGUAGE_MODEL


def parse_parts(names, flag: str) -> tuple[Part, ...]:
    """Part names from the command line, refused by name when unknown."""
    known = {p.value: p for p in Part}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"{flag} {' '.join(unknown)}: unknown part; choose from {' '.join(known)}")
    return tuple(dict.fromkeys(known[n] for n in names))
