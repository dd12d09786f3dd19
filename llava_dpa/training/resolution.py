"""`parse_run_config(argv)`: LLaVA's flags and this project's into one `RunConfig`. It decides the `Stage`,
resolves what depends on it (the auxiliary loss, the image mode of a whole-image perceiver), parses typed values
(anyres pinpoints, LoRA parts) and validates the result (`validation.py`)."""
from __future__ import annotations

import importlib.util
import sys
import warnings

import transformers

from llava_dpa.data.anyres import PinpointsError, parse_pinpoints
from llava_dpa.llava_integration.tower_registry import tower_class_for
from llava_dpa.training.errors import RunConfigError
from llava_dpa.training.flags import DataArguments, ModelArguments, TrainingArguments
from llava_dpa.training.parts import parse_parts
from llava_dpa.training.run_config import RunConfig, TowerKind
from llava_dpa.training.stage import Stage, aux_loss_weight_in, stage_from
from llava_dpa.training.validation import validate


def parse_run_config(argv: list[str] | None = None, attn_implementation: str | None = None) -> RunConfig:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return resolve(model_args, data_args, training_args, argv, attn_implementation)


def resolve(model_args, data_args, training_args, argv, attn_implementation=None) -> RunConfig:
    stage = decide_stage(model_args)
    # LLaVA's own code (llava_arch, its trainer) reads tune_mm_mlp_adapter; keep it equal to the stage.
    model_args.tune_mm_mlp_adapter = training_args.tune_mm_mlp_adapter = stage is Stage.ALIGNMENT
    model_args.stage = int(stage)
    weight = float(model_args.perceiver_aux_loss_weight or 0.0)
    if weight < 0:
        raise RunConfigError(f"--perceiver_aux_loss_weight {weight}: use a weight >= 0")
    try:
        lora_parts = parse_parts(training_args.lora_parts, "--lora_parts")
    except ValueError as exc:
        raise RunConfigError(str(exc)) from None
    tower_class = tower_class_of(model_args.vision_tower)
    qwen_vl = bool(tower_class is not None and getattr(tower_class, "per_image_features", False))
    if qwen_vl and data_args.image_aspect_ratio == "square":  # LLaVA's default: this perceiver reads whole images
        data_args.image_aspect_ratio = "native"
    # The tower is built from the model arguments (llava's initialize_vision_modules), and reads its image mode.
    model_args.image_aspect_ratio = data_args.image_aspect_ratio
    try:
        pinpoints = parse_pinpoints(data_args.image_grid_pinpoints)
    except PinpointsError as exc:
        raise RunConfigError(str(exc)) from None
    run = RunConfig(
        model=model_args, data=data_args, training=training_args, stage=stage,
        tower_kind=tower_kind_of(model_args.vision_tower), tower_class=tower_class, qwen_vl_perceiver=qwen_vl,
        attn_implementation=resolve_attn_implementation(attn_implementation),
        image_grid_pinpoints=pinpoints,
        lora_parts=lora_parts,
        aux_loss_weight=aux_loss_weight_in(stage, weight, model_args.perceiver_aux_loss_stages), argv=list(argv))
    validate(run)
    return run


def decide_stage(model_args) -> Stage:
    if model_args.stage is None:
        return Stage.ALIGNMENT if model_args.tune_mm_mlp_adapter else Stage.INSTRUCTION_TUNING
    stage = stage_from(model_args.stage, "--stage")
    if model_args.tune_mm_mlp_adapter and stage is not Stage.ALIGNMENT:
        raise RunConfigError(f"--stage {int(stage)} with --tune_mm_mlp_adapter True: LLaVA's flag means stage 1; "
                             f"drop one of them")
    return stage


def tower_class_of(vision_tower: str | None):
    if not vision_tower:
        return None

    return tower_class_for(vision_tower)


def tower_kind_of(vision_tower: str | None) -> TowerKind:
    cls = tower_class_of(vision_tower)
    if cls is None:
        return TowerKind.NONE
    return TowerKind.PERCEIVER if cls.is_perceiver else TowerKind.VIT


def resolve_attn_implementation(requested: str | None) -> str:
    if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        warnings.warn("flash-attn is not installed; training with attn_implementation='sdpa' instead "
                      "(pip install llava-dpa[flash-attn] on a CUDA machine for flash-attention-2)")
        return "sdpa"
    return requested or "sdpa"
