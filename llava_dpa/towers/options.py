"""What a vision tower or DPA perceiver is built from: one typed, frozen `TowerOptions`.

LLaVA hands its tower builder an untyped object: the training flags (`ModelArguments`) when a run starts, the
model's config when a checkpoint loads. `tower_options` is the only place that reads it; every tower and
perceiver takes a `TowerOptions` (`towers/base.py`, `perceiver/`), and our own callers build one directly
(`llava_integration/tower_registry.build_tower`).

Each field is named as the LLaVA flag or config key it comes from, so what a tower records into the config
(`config_entries()`) is read back into the same field when the checkpoint loads. The defaults are LLaVA's
(or this project's flags') when the flag is absent.
"""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class TowerOptions:
    # ---- every tower ---------------------------------------------------------------------------------
    #: the tower's folder (`--vision_tower`, config `mm_vision_tower`); `dpa:<dir>` selects a perceiver
    vision_tower: str
    #: the hidden-state layer a ViT's features come from (Qwen2.5-VL accepts only -1, its merger's output)
    mm_vision_select_layer: int = -2
    #: 'patch' drops a CLS token, 'cls_patch' keeps it
    mm_vision_select_feature: str = "patch"
    #: the towers' attention ('eager', 'sdpa', 'flash_attention_2'); None: flash-attention-2 when usable, else sdpa
    tower_attn_implementation: str | None = None
    #: the tower's config.json as a trained checkpoint recorded it (None: read it from `vision_tower`)
    mm_vision_tower_config: dict | None = None
    #: the tower's image-processor settings as a trained checkpoint recorded them (None: read from the folder)
    mm_vision_tower_processor: dict | None = None
    #: how many distinct (images, tower inputs) results a tower's inference memo keeps (0: no memo)
    memo_size: int = 8

    # ---- the Qwen2.5-VL ViT and the Qwen-VL-native perceiver -------------------------------------------
    #: 'native' makes a Qwen2.5-VL tower read each image whole at native resolution
    image_aspect_ratio: str | None = None
    #: 'qwen_merger' makes a Qwen2.5-VL tower stop before its merger's MLP (the projector is that MLP)
    mm_projector_type: str | None = None
    #: native resolution's pixel limits; given now, they win over a checkpoint's recorded ones
    min_pixels: int | None = None
    max_pixels: int | None = None

    # ---- both DPA perceivers ----------------------------------------------------------------------------
    #: the target's chat template (its turn ends delimit the text the perceiver reads): `--version` or the config's
    conv_version: str | None = None
    #: the perceiver's prompt prefix as its tokenizer's ids, as a trained checkpoint recorded them
    mm_perceiver_prefix_ids: tuple[int, ...] | None = None

    # ---- the LLaVA-format perceiver ---------------------------------------------------------------------
    #: the perceiver LM's hidden-state layer the features come from (None: its last, after the final norm)
    dpa_select_layer: int | None = None
    #: the perceiver reads the question of the image's user turn before the image (early fusion)
    perceiver_instruction_context: bool = False

    # ---- the Qwen-VL-native perceiver -------------------------------------------------------------------
    #: keep only the N visual positions' features, not the N + 2 with the vision delimiters
    perceiver_visual_positions_only: bool = False
    #: a system prompt before the perceiver's prefix (None: none, as the official training)
    perceiver_system_prompt: str | None = None


def tower_options(vision_tower_cfg) -> TowerOptions:
    """The options LLaVA's `build_vision_tower(vision_tower_cfg)` means: its `ModelArguments` at the start of a
    run, or a checkpoint's config when it loads. The only reader of that untyped object; a missing attribute
    takes the field's default, one that is present (None included) is taken as it is."""
    def read(name: str, default=None):
        return getattr(vision_tower_cfg, name, default)

    values = {f.name: read(f.name, f.default) for f in fields(TowerOptions) if f.name != "vision_tower"}
    prefix = values["mm_perceiver_prefix_ids"]
    return TowerOptions(
        **{**values,
           "vision_tower": read("mm_vision_tower", read("vision_tower")),
           "conv_version": read("conv_version") or read("version"),
           "mm_perceiver_prefix_ids": tuple(prefix) if prefix is not None else None,
           "perceiver_instruction_context": bool(values["perceiver_instruction_context"]),
           "perceiver_visual_positions_only": bool(values["perceiver_visual_positions_only"]),
           "perceiver_system_prompt": values["perceiver_system_prompt"] or None,
           "memo_size": TowerOptions.memo_size if values["memo_size"] is None else int(values["memo_size"])})
