"""A registry entry + a stage + cluster settings -> the LLaVA command that trains it.

This is the only place that spells LLaVA's training flags for the paper's runs: the recipe CLI, the tests
and the demo all build their commands here (the tests and the demo add tiny-model overrides).
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from llava_dpa.perceiver.base import DPA_PREFIX
from llava_dpa.projectors.large_mlp import plan
from llava_dpa.recipes.paper import (
    REGISTRY,
    Compose,
    PerceiverOf,
    QwenVLPerceiverAt,
    Recipe,
    ReinitialiseLM,
    ViT,
    ViTOf,
    get,
)
from llava_dpa.recipes.settings import Settings
from llava_dpa.training.parts import parse_parts
from llava_dpa.training.stage import Stage, aux_loss_weight_in
from llava_dpa.training.trainability import TrainingChoices, tower_trains, trainability_plan


class RecipeError(ValueError):
    pass


@dataclass
class StageCommand:
    entry: Recipe
    stage: int
    argv: list[str]                 # LLaVA's flags
    launcher: list[str]             # the launch prefix (deepspeed ... --module llava.train.train_mem)
    output: Path
    needs: list[Path] = field(default_factory=list)   # inputs that must exist before it runs

    @property
    def command(self) -> list[str]:
        return self.launcher + self.argv

    def shell(self) -> str:
        return " ".join(shlex.quote(a) for a in self.command)


# ---- where each entry writes ----------------------------------------------------------------------------
def output_dir(entry: Recipe, settings: Settings) -> Path:
    """The folder holding the entry's result (a stage-2 model, or a built perceiver)."""
    return settings.checkpoints / entry.name


def stage1_dir(entry: Recipe, settings: Settings) -> Path:
    owner = get(entry.stage1_shared_with) if entry.stage1_shared_with else entry
    return settings.checkpoints / f"{owner.name}-stage1"


def tower_path(entry: Recipe, settings: Settings) -> str:
    tower = entry.tower
    if isinstance(tower, ViT):
        return settings.path(tower.path_key)
    if isinstance(tower, PerceiverOf):
        return str(output_dir(get(tower.entry), settings))
    if isinstance(tower, ViTOf):
        return str(settings.checkpoints / f"{tower.entry}-vit")
    if isinstance(tower, QwenVLPerceiverAt):
        return DPA_PREFIX + settings.path(tower.path_key)
    raise RecipeError(f"{entry.name}: unknown tower {tower!r}")


def choices_of(entry: Recipe, stage: Stage) -> TrainingChoices:
    """What trains in this entry's `stage`, as the run's own flags will say (`trainability.trainability_plan`)."""
    return TrainingChoices(stage=stage, perceiver=not is_vit(entry),
                           aux_loss=bool(aux_loss_weight_in(stage, entry.aux_loss_weight, entry.aux_loss_stages)),
                           unfreeze_vision_tower=is_vit(entry) and entry.train_vision_tower,
                           freeze_perceiver=entry.freeze_perceiver,
                           lora_parts=parse_parts(entry.lora.parts, "lora.parts") if entry.lora is not None else ())


def is_vit(entry: Recipe) -> bool:
    return isinstance(entry.tower, (ViT, ViTOf))


def subset_file(entry: Recipe, settings: Settings) -> Path:
    return settings.checkpoints / "data" / f"stage2-{entry.stage2_subset}-seed{entry.subset_seed}.json"


# ---- the flags --------------------------------------------------------------------------------------------
def _bool(value: bool) -> str:
    return "True" if value else "False"


def precision_flags(settings: Settings) -> list[str]:
    return {"bf16": ["--bf16", "True", "--tf32", "True"], "fp16": ["--fp16", "True"], "fp32": []}[settings.precision]


def large_mlp_flags(entry: Recipe, settings: Settings, tower: str) -> list[str]:
    """Width solved for the budget at the entry's depth, from the ViT's and the target's widths (read from their
    configs; without them the width is left out, and the run says it needs one)."""

    d_in, d_out = _vit_width(tower), _hidden_size(settings.path(entry.llm))
    if d_in is None or d_out is None:
        return ["--mm_projector_depth", str(entry.projector_depth)]
    result = plan(d_in, d_out, entry.projector_budget, depth=entry.projector_depth)
    return ["--mm_projector_width", str(result["width"]), "--mm_projector_depth", str(result["depth"])]


def _read_config(folder: str) -> dict | None:
    path = Path(folder) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _vit_width(folder: str) -> int | None:
    config = _read_config(folder)
    if config is None:
        return None
    config = config.get("vision_config", config)
    return config.get("out_hidden_size") or config.get("hidden_size")


def _hidden_size(folder: str) -> int | None:
    config = _read_config(folder)
    return None if config is None else config.get("hidden_size")


def stage_flags(entry: Recipe, stage: int, settings: Settings) -> list[str]:
    tower = tower_path(entry, settings)
    data_key = entry.stage1_data if stage == 1 else entry.stage2_data
    data = str(subset_file(entry, settings)) if stage == 2 and entry.stage2_subset else settings.path(f"{data_key}_data")
    template = (entry.stage1_template or entry.template) if stage == 1 else entry.template
    out = stage1_dir(entry, settings) if stage == 1 else output_dir(entry, settings)
    flags = [
        "--model_name_or_path", settings.path(entry.llm), "--vision_tower", tower, "--output_dir", str(out),
        "--stage", str(stage), "--version", template,
        "--data_path", data, "--image_folder", settings.path(f"{data_key}_images"),
        "--mm_vision_select_layer", str(entry.vision_select_layer), "--mm_projector_type", entry.projector,
        "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
        "--image_aspect_ratio", entry.image_aspect_ratio,
        *(["--image_grid_pinpoints", str([tuple(p) for p in entry.image_grid_pinpoints])] if entry.image_grid_pinpoints else []),
        *(["--max_pixels", str(entry.max_pixels)] if entry.max_pixels else []),
        "--mm_patch_merge_type", entry.patch_merge,
        "--weight_decay", str(entry.weight_decay), "--adam_beta2", str(entry.adam_beta2),
        "--per_device_train_batch_size", str(settings.per_device_batch),
        "--gradient_checkpointing", "True", "--dataloader_num_workers", str(settings.dataloader_workers),
        "--lazy_preprocess", "True", "--save_strategy", "steps", "--save_steps", "500", "--save_total_limit", "2",
        "--logging_steps", "10", "--report_to", "none",
    ]
    if entry.projector == "large_mlp":
        flags += large_mlp_flags(entry, settings, tower)
    if stage == 1:
        flags += [
            "--learning_rate", str(entry.stage1_learning_rate), "--lr_scheduler_type", entry.stage1_scheduler,
            "--lr_scheduler_kwargs", json.dumps({"num_decay_steps": entry.stage1_decay_steps}),
            "--warmup_steps", str(entry.stage1_warmup_steps), "--num_train_epochs", str(entry.stage1_epochs),
            "--gradient_accumulation_steps", str(settings.grad_accumulation(entry.stage1_global_batch)),
            "--model_max_length", str(entry.stage1_max_length)]
    else:
        flags += [
            "--pretrain_mm_mlp_adapter", str(stage1_dir(entry, settings) / "mm_projector.bin"),
            "--learning_rate", str(entry.stage2_learning_rate), "--mm_projector_lr", str(entry.stage2_projector_lr),
            "--lr_scheduler_type", entry.stage2_scheduler, "--warmup_steps", str(entry.stage2_warmup_steps),
            "--num_train_epochs", str(entry.stage2_epochs),
            "--gradient_accumulation_steps", str(settings.grad_accumulation(entry.stage2_global_batch)),
            "--model_max_length", str(entry.stage2_max_length), "--group_by_modality_length", "True"]
        if is_vit(entry) and entry.train_vision_tower:
            flags += ["--unfreeze_mm_vision_tower", "True"]
        if tower_trains(trainability_plan(choices_of(entry, Stage(stage)))):
            flags += ["--mm_vision_tower_lr", str(entry.stage2_vision_lr)]
        if entry.stage2_perceiver_lr is not None:
            flags += ["--perceiver_lr", str(entry.stage2_perceiver_lr)]
        if entry.lora is not None:
            flags += ["--lora_enable", "True", "--bits", str(entry.lora.bits), "--lora_r", str(entry.lora.r),
                      "--lora_alpha", str(entry.lora.alpha), "--lora_dropout", str(entry.lora.dropout),
                      "--lora_parts", *entry.lora.parts]
        if entry.freeze_perceiver:
            flags += ["--freeze_perceiver", "True"]
        if entry.instruction_context:
            flags += ["--perceiver_instruction_context", "True"]
    if aux_loss_weight_in(Stage(stage), entry.aux_loss_weight, entry.aux_loss_stages):
        flags += ["--perceiver_aux_loss_weight", str(entry.aux_loss_weight),
                  "--perceiver_aux_loss_stages", *[str(s) for s in entry.aux_loss_stages]]
    return flags + precision_flags(settings)


def merge_flags(base: list[str], overrides: list[str], drop: tuple[str, ...] = ()) -> list[str]:
    """`base` with every flag in `overrides` replaced (or appended) and the flags in `drop` removed: one
    occurrence of each flag."""
    def parse(argv):
        out, key = {}, None
        for token in argv:
            if token.startswith("--"):
                key, value = (token.split("=", 1) + [None])[:2] if "=" in token else (token, None)
                out[key] = [] if value is None else [value]
            elif key is None:
                raise RecipeError(f"{token!r}: flags start with --")
            else:
                out[key].append(token)
        return out

    merged = parse(base)
    merged.update(parse(overrides))
    for flag in drop:
        merged.pop(flag, None)
    return [t for key, values in merged.items() for t in (key, *values)]


def launcher_prefix(settings: Settings) -> list[str]:
    s = settings
    if s.launcher == "deepspeed":
        nodes = ["--hostfile", s.hostfile, "--num_nodes", str(s.nodes)] if s.nodes > 1 else []
        master = ["--master_addr", s.master_addr, "--master_port", str(s.master_port)] if s.master_addr else []
        return ["deepspeed", *nodes, *master, "--num_gpus", str(s.gpus_per_node), "--module", "llava.train.train_mem",
                "--deepspeed", s.deepspeed_file()]
    if s.launcher == "torchrun":
        nodes = []
        if s.nodes > 1:
            nodes = ["--nnodes", str(s.nodes), "--rdzv_backend", "c10d", "--rdzv_endpoint",
                     f"{s.master_addr}:{s.master_port}", "--rdzv_id", "llava-dpa"]
            nodes += ["--node_rank", str(s.node_rank)] if s.node_rank >= 0 else []
        return ["torchrun", *nodes, "--nproc_per_node", str(s.gpus_per_node), "-m", "llava.train.train_mem"]
    return [s.python, "-m", "llava.train.train_mem"]


def stage_command(entry: Recipe | str, stage: int, settings: Settings, overrides: list[str] = (),
                  drop: tuple[str, ...] = ()) -> StageCommand:
    entry = get(entry) if isinstance(entry, str) else entry
    if stage not in (1, 2):
        raise RecipeError(f"--stage {stage}: use 1 or 2")
    if stage not in entry.stages:
        raise RecipeError(f"{entry.name} does not train stage {stage} (it trains {list(entry.stages) or 'no stage'})")
    argv = merge_flags(stage_flags(entry, stage, settings), list(overrides), drop)
    needs = [Path(tower_path(entry, settings))]
    if stage == 2:
        needs.append(stage1_dir(entry, settings) / "mm_projector.bin")
    out = stage1_dir(entry, settings) if stage == 1 else output_dir(entry, settings)
    return StageCommand(entry, stage, argv, launcher_prefix(settings), out, needs)


def shared_stage1_owner(entry: Recipe) -> Recipe:
    return get(entry.stage1_shared_with) if entry.stage1_shared_with else entry


def trainings(entry: Recipe, settings: Settings) -> list[StageCommand]:
    """The stages this entry trains itself (a shared stage 1 is its owner's)."""
    own = [s for s in entry.stages if not (s == 1 and entry.stage1_shared_with)]
    return [stage_command(entry, s, settings) for s in own]


def entries_needed(entry: Recipe) -> list[Recipe]:
    """Other entries whose outputs this one reads (its tower, its shared stage 1, what it is built from)."""
    found = []
    if isinstance(entry.tower, (PerceiverOf, ViTOf)):
        found.append(get(entry.tower.entry))
    if entry.stage1_shared_with:
        found.append(get(entry.stage1_shared_with))
    if isinstance(entry.output_from, ReinitialiseLM):
        found.append(get(entry.output_from.entry))
    return found


def is_built_not_trained(entry: Recipe) -> bool:
    return isinstance(entry.output_from, (Compose, ReinitialiseLM))


__all__ = ["REGISTRY", "RecipeError", "StageCommand", "entries_needed", "is_built_not_trained", "merge_flags",
           "output_dir", "stage1_dir", "stage_command", "stage_flags", "subset_file", "tower_path", "trainings"]
