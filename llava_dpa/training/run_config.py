"""One run configuration: every setting of a training run, parsed and validated once.

`parse_run_config(argv)` reads LLaVA's flags and this project's, decides the `Stage`, resolves what
depends on it (the auxiliary loss, the instruction context), parses typed values (anyres pinpoints, LoRA
parts) and refuses nonsensical combinations by naming the flags. Nothing downstream re-reads argv, the
environment or LLaVA's global template: the `RunConfig` travels as an argument.

`model_config_entries` is the one place that decides what a run writes into `model.config`.
`write_run_config` / `check_resume` keep `<output_dir>/run_config.json` (every argument, the stage, the
versions and the patch state) and refuse a resume whose model or data settings differ.
"""
from __future__ import annotations

import enum
import json
import os
import platform
import sys
import warnings
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from importlib import metadata
from typing import Optional

import torch
from llava.train import train as llava_train

from llava_dpa import patching
from llava_dpa.data.anyres import PinpointsError, parse_pinpoints
from llava_dpa.llava_integration.tower_registry import tower_class_for
from llava_dpa.templates import CHAT_TEMPLATE_VERSIONS
from llava_dpa.towers.qwen2_5_vl import Qwen2_5_VLTower
from llava_dpa.training.parts import PERCEIVER_PARTS, Part, parse_parts

RUN_CONFIG_NAME = "run_config.json"


class Stage(enum.IntEnum):
    """LLaVA's two stages. Stage 1 trains the alignment projector on captions; stage 2 tunes on
    instructions."""
    ALIGNMENT = 1
    INSTRUCTION_TUNING = 2

    @property
    def label(self) -> str:
        return "alignment" if self is Stage.ALIGNMENT else "instruction tuning"


class TowerKind(str, enum.Enum):
    NONE = "none"
    VIT = "vit"
    PERCEIVER = "perceiver"


class RunConfigError(ValueError):
    """A setting, or a combination of settings, that cannot train what the user meant."""


# ---- the flags --------------------------------------------------------------------------------------
@dataclass
class ModelArguments(llava_train.ModelArguments):
    stage: Optional[int] = field(default=None, metadata={
        "help": "1 (alignment: projector only) or 2 (instruction tuning). Default: 1 when "
                "--tune_mm_mlp_adapter True, else 2."})
    mm_projector_width: Optional[int] = field(default=None, metadata={"help": "Hidden width of a large_mlp projector."})
    mm_projector_depth: Optional[int] = field(default=None, metadata={"help": "Linear layers of a large_mlp projector."})
    unfreeze_mm_vision_tower: bool = field(default=False, metadata={"help": "Train the ViT tower in stage 2."})
    tower_attn_implementation: Optional[str] = field(default=None, metadata={
        "help": "Attention of the tower and the perceiver LM (sdpa, eager, flash_attention_2). Default: "
                "flash_attention_2 when flash-attn and a GPU are present, else sdpa."})
    freeze_perceiver: bool = field(default=False, metadata={"help": "Keep the whole perceiver frozen (ablation)."})
    dpa_select_layer: Optional[int] = field(default=None, metadata={
        "help": "Perceiver LM layer whose visual-token hidden states are the features; default: the last, "
                "after the final norm (as the model returns hidden_states[-1])."})
    perceiver_instruction_context: bool = field(default=False, metadata={
        "help": "Give the perceiver the sample's instruction text before the image (early fusion ablation)."})
    perceiver_aux_loss_weight: float = field(default=0.0, metadata={
        "help": "Weight of the perceiver's own LM loss on the same conversation (multi-task ablation)."})
    perceiver_aux_loss_stages: list[int] = field(default_factory=lambda: [2], metadata={
        "help": "Stages that use the auxiliary loss, e.g. 2 (default, as the paper reports) or 1 2."})
    min_pixels: Optional[int] = field(default=None, metadata={
        "help": "Native resolution (--image_aspect_ratio native): the fewest pixels an image is resized to "
                "(default 3136, Qwen2-VL's)."})
    max_pixels: Optional[int] = field(default=None, metadata={
        "help": "Native resolution: the most pixels an image is resized to (default 262144, the official training's)."})
    perceiver_visual_positions_only: bool = field(default=False, metadata={
        "help": "Qwen-VL perceiver: features at the N visual positions only (default: N + 2, with "
                "<|vision_start|> and <|vision_end|>, as the official model)."})
    perceiver_system_prompt: Optional[str] = field(default=None, metadata={
        "help": "Qwen-VL perceiver: a system prompt before its user turn (default none, as the official training; "
                "the official evaluation uses 'You are a helpful assistant.')."})


@dataclass
class DataArguments(llava_train.DataArguments):
    image_grid_pinpoints: Optional[str] = field(default=None, metadata={
        "help": "anyres grid resolutions, e.g. \"[(448, 896), (896, 448), (896, 896)]\""})
    strict_data: bool = field(default=False, metadata={"help": "Stop on the first bad sample instead of skipping it."})
    feature_cache: Optional[str] = field(default=None, metadata={
        "help": "Read the frozen tower's features from this folder (llava-dpa cache-features) instead of encoding "
                "every image (stage 1, or any stage where the tower is frozen)."})


# transformers 5 folded --warmup_ratio into --warmup_steps (a float below 1 is a ratio); LLaVA's scripts pass it.
_HAS_WARMUP_RATIO = "warmup_ratio" in {f.name for f in fields(llava_train.TrainingArguments)}


@dataclass
class TrainingArguments(llava_train.TrainingArguments):
    mm_vision_tower_lr: Optional[float] = field(default=None, metadata={"help": "Learning rate of the (perceiver) ViT."})
    perceiver_lr: Optional[float] = field(default=None, metadata={
        "help": "Learning rate of the perceiver's projector, LM blocks and LM head (default: --learning_rate)."})
    packing_budget: Optional[int] = field(default=None, metadata={
        "help": "Padding-free packing: each batch is a pack of samples of at most this many tokens, image tokens "
                "included (data/packing.py); set --per_device_train_batch_size 1."})
    lora_parts: list[str] = field(default_factory=lambda: ["language_model"], metadata={
        "help": "Parts that get LoRA adapters with --lora_enable (see llava_dpa.training.parts); the others "
                "train in full or stay frozen as the stage says."})
    mir_probe_images: Optional[str] = field(default=None, metadata={
        "help": "Record MIR at every save (mir_history.csv): an image folder or LLaVA data file of probes."})
    mir_probe_image_folder: Optional[str] = field(default=None, metadata={"help": "Images of a probe data file."})
    mir_probe_texts: Optional[str] = field(default=None, metadata={"help": "Probe texts, one per line."})
    mir_probe_count: int = field(default=64, metadata={"help": "Probes measured at every save."})
    evaluation_strategy: Optional[str] = field(default=None, metadata={
        "help": "Deprecated name of --eval_strategy (LLaVA's shipped scripts use it); translated."})
    if not _HAS_WARMUP_RATIO:
        warmup_ratio: Optional[float] = field(default=None, metadata={
            "help": "Linear warmup over this fraction of the steps (transformers 5: --warmup_steps RATIO); translated."})

    def __post_init__(self):
        # LLaVA's scripts pass flags that current transformers renamed or rejects on a CPU machine.
        if self.evaluation_strategy is not None:
            warnings.warn("--evaluation_strategy is now --eval_strategy in transformers; translated")
            self.eval_strategy, self.evaluation_strategy = self.evaluation_strategy, None
        if not _HAS_WARMUP_RATIO and self.warmup_ratio is not None:
            if self.warmup_steps:
                raise RunConfigError("--warmup_ratio and --warmup_steps both given; give one of them")
            self.warmup_steps, self.warmup_ratio = self.warmup_ratio, None
        if not torch.cuda.is_available():
            if self.tf32:
                warnings.warn("--tf32 needs a CUDA GPU; ignored on this CPU machine")
                self.tf32 = None
            if self.bf16:
                self.use_cpu = True
        super().__post_init__()

    @cached_property
    def _setup_devices(self):
        device = super()._setup_devices
        count_cpu_deepspeed_processes(self)
        return device


def count_cpu_deepspeed_processes(args) -> None:
    """A DeepSpeed run on a machine without CUDA: accelerate finds no device backend, records a single
    process although DeepSpeed's process group has several, and transformers then fills DeepSpeed's
    train_batch_size for one process ("train_batch_size is not equal to micro_batch_per_gpu *
    gradient_acc_step * world_size"). Take the counts from the process group DeepSpeed created."""
    import torch.distributed as dist

    state = args.distributed_state
    if (not args.deepspeed or torch.cuda.is_available() or state is None or not dist.is_available()
            or not dist.is_initialized() or state.num_processes == dist.get_world_size()):
        return
    state.num_processes = dist.get_world_size()   # PartialState shares its state: Accelerator reads these
    state.process_index = dist.get_rank()
    state.local_process_index = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    args.local_rank = state.local_process_index


# ---- the resolved configuration -----------------------------------------------------------------------
@dataclass
class RunConfig:
    model: ModelArguments
    data: DataArguments
    training: TrainingArguments
    stage: Stage
    tower_kind: TowerKind
    attn_implementation: str
    image_grid_pinpoints: Optional[list[tuple[int, int]]]
    lora_parts: tuple[Part, ...]
    qwen_vl_perceiver: bool           # the tower is the Qwen-VL-native perceiver (whole images, native resolution)
    aux_loss_weight: float            # the auxiliary perceiver loss weight in this stage (0: off)
    argv: list[str]

    @property
    def is_perceiver(self) -> bool:
        return self.tower_kind is TowerKind.PERCEIVER

    @property
    def compute_dtype(self) -> torch.dtype:
        t = self.training
        return torch.float16 if t.fp16 else (torch.bfloat16 if t.bf16 else torch.float32)

    def learning_rate_of(self, part: Part) -> float:
        t = self.training
        specific = {Part.PROJECTOR: t.mm_projector_lr, Part.VISION_TOWER: t.mm_vision_tower_lr,
                    Part.PERCEIVER_VIT: t.mm_vision_tower_lr, Part.PERCEIVER_PROJECTOR: t.perceiver_lr,
                    Part.PERCEIVER_LM: t.perceiver_lr, Part.PERCEIVER_LM_HEAD: t.perceiver_lr}.get(part)
        return t.learning_rate if specific is None else specific

    def to_json(self) -> dict:
        return {
            "stage": int(self.stage), "stage_name": self.stage.label,
            "arguments": {"model": _plain(asdict(self.model)), "data": _plain(asdict(self.data)),
                          "training": _plain(self.training.to_dict())},
            "resolved": {"tower_kind": self.tower_kind.value, "attn_implementation": self.attn_implementation,
                         "image_grid_pinpoints": self.image_grid_pinpoints,
                         "lora_parts": [p.value for p in self.lora_parts] if self.training.lora_enable else [],
                         "perceiver_aux_loss_weight": self.aux_loss_weight},
            "argv": self.argv,
        }


def _plain(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def parse_run_config(argv: list[str] | None = None, attn_implementation: str | None = None) -> RunConfig:
    import transformers

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return resolve(model_args, data_args, training_args, argv, attn_implementation)


def resolve(model_args, data_args, training_args, argv, attn_implementation=None) -> RunConfig:
    stage = decide_stage(model_args)
    # LLaVA's own code (llava_arch, its trainer) reads tune_mm_mlp_adapter; keep it equal to the stage.
    model_args.tune_mm_mlp_adapter = training_args.tune_mm_mlp_adapter = stage is Stage.ALIGNMENT
    model_args.stage = int(stage)
    aux_stages = {_stage_from(s, "--perceiver_aux_loss_stages") for s in model_args.perceiver_aux_loss_stages}
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
        tower_kind=tower_kind_of(model_args.vision_tower), qwen_vl_perceiver=qwen_vl,
        attn_implementation=resolve_attn_implementation(attn_implementation),
        image_grid_pinpoints=pinpoints,
        lora_parts=lora_parts,
        aux_loss_weight=weight if stage in aux_stages else 0.0, argv=list(argv))
    validate(run)
    return run


def decide_stage(model_args) -> Stage:
    if model_args.stage is None:
        return Stage.ALIGNMENT if model_args.tune_mm_mlp_adapter else Stage.INSTRUCTION_TUNING
    stage = _stage_from(model_args.stage, "--stage")
    if model_args.tune_mm_mlp_adapter and stage is not Stage.ALIGNMENT:
        raise RunConfigError(f"--stage {int(stage)} with --tune_mm_mlp_adapter True: LLaVA's flag means stage 1; "
                             f"drop one of them")
    return stage


def _stage_from(value, flag: str) -> Stage:
    try:
        return Stage(int(value))
    except (TypeError, ValueError):
        raise RunConfigError(f"{flag} {value}: use 1 (alignment) or 2 (instruction tuning)") from None


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
    import importlib.util

    if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        warnings.warn("flash-attn is not installed; training with attn_implementation='sdpa' instead "
                      "(pip install llava-dpa[flash-attn] on a CUDA machine for flash-attention-2)")
        return "sdpa"
    return requested or "sdpa"


# flag -> its default; any other value needs a perceiver tower
PERCEIVER_ONLY_FLAGS = {"freeze_perceiver": False, "dpa_select_layer": None, "perceiver_instruction_context": False,
                        "perceiver_aux_loss_weight": 0.0}


def validate(run: RunConfig) -> None:
    """Every refusal of a nonsensical combination, naming the flags."""
    from llava.conversation import conv_templates


    m, d, t, stage = run.model, run.data, run.training, run.stage
    s1 = stage is Stage.ALIGNMENT
    if m.version not in conv_templates:
        raise RunConfigError(f"unknown --version {m.version!r}; choose one of {sorted(conv_templates)} (qwen_3 for "
                             f"Qwen3 targets, llama_3 for LLaMA 3.x, plain for LLaVA's caption-only stage 1)")
    if m.version in ("v0", "v0.5"):
        raise RunConfigError(f"--version {m.version} is LLaVA-1.0's format, which this project does not train; use "
                             f"plain, v1, llama_2, qwen_3 or llama_3")
    if run.tower_kind is not TowerKind.PERCEIVER:
        used = [f"--{k}" for k, default in PERCEIVER_ONLY_FLAGS.items() if getattr(m, k) != default]
        used += ["--perceiver_lr"] if t.perceiver_lr is not None else []
        if used:
            raise RunConfigError(f"{', '.join(used)} only apply to a DPA perceiver tower; --vision_tower "
                                 f"{m.vision_tower} is {'missing' if run.tower_kind is TowerKind.NONE else 'a plain ViT'}")
    if m.perceiver_instruction_context:
        if m.version not in CHAT_TEMPLATE_VERSIONS:
            raise RunConfigError(f"--perceiver_instruction_context reads the user turn of a chat template; use --version "
                                 f"{' or '.join(CHAT_TEMPLATE_VERSIONS)} (got {m.version!r})")
        if s1:
            raise RunConfigError("--perceiver_instruction_context True in stage 1: the text beside a stage-1 image is "
                                 "the caption the model must predict, so the perceiver would read the answer. Use the "
                                 "flag in stage 2 only.")
    if m.freeze_perceiver and run.aux_loss_weight:
        raise RunConfigError("--freeze_perceiver True with --perceiver_aux_loss_weight: the auxiliary loss trains the "
                             "perceiver; drop one of them")
    if m.mm_projector_type == "large_mlp":
        if run.is_perceiver:
            raise RunConfigError("--mm_projector_type large_mlp is the plain-ViT ablation; use it with a ViT --vision_tower")
        if not (m.mm_projector_width and m.mm_projector_depth):
            raise RunConfigError("--mm_projector_type large_mlp needs --mm_projector_width and --mm_projector_depth "
                                 "(llava-dpa projector-budget computes them for a parameter budget)")
    validate_native_resolution(run)
    if d.image_aspect_ratio not in ("square", "pad", "anyres", "native"):
        raise RunConfigError(f"unknown --image_aspect_ratio {d.image_aspect_ratio!r}; use square, pad, anyres or native")
    if d.image_aspect_ratio == "anyres" and run.image_grid_pinpoints is None:
        raise RunConfigError("--image_aspect_ratio anyres needs --image_grid_pinpoints, e.g. "
                             "\"[(448, 896), (896, 448), (896, 896)]\"")
    if t.bits not in (4, 8, 16):
        raise RunConfigError(f"--bits {t.bits}: use 4 (QLoRA), 8 or 16")
    if t.bits in (4, 8) and not t.lora_enable:
        raise RunConfigError(f"--bits {t.bits} quantizes the target, whose weights then cannot train: add "
                             f"--lora_enable True (QLoRA)")
    if s1:
        if t.lora_enable:
            raise RunConfigError("--lora_enable True in stage 1: stage 1 trains the alignment projector only; use "
                                 "LoRA in stage 2")
        if m.unfreeze_mm_vision_tower:
            raise RunConfigError("--unfreeze_mm_vision_tower True in stage 1: stage 1 trains the alignment projector "
                                 "only (Table 6); use it in stage 2")
    if t.lora_enable:
        absent = {TowerKind.PERCEIVER: (Part.VISION_TOWER,), TowerKind.VIT: PERCEIVER_PARTS,
                  TowerKind.NONE: (Part.VISION_TOWER,) + PERCEIVER_PARTS}[run.tower_kind]
        wrong = [p.value for p in run.lora_parts if p in absent or p is Part.PROJECTOR or p is Part.IMAGE_NEWLINE]
        if wrong:
            raise RunConfigError(f"--lora_parts {' '.join(wrong)}: not a LoRA part of this model (the projector and "
                                 f"image_newline train in full; tower parts need that tower)")
    elif t.lora_parts != ["language_model"]:
        raise RunConfigError("--lora_parts without --lora_enable True: add --lora_enable True or drop --lora_parts")
    tower_trains = (not s1) and (run.is_perceiver and not m.freeze_perceiver or m.unfreeze_mm_vision_tower) \
        or bool(run.aux_loss_weight)
    if t.packing_budget is not None:
        if t.packing_budget < t.model_max_length:
            raise RunConfigError(f"--packing_budget {t.packing_budget} is below --model_max_length {t.model_max_length}: "
                                 f"a sample that fits the model would not fit a pack; raise the budget")
        if t.per_device_train_batch_size != 1:
            raise RunConfigError(f"--packing_budget with --per_device_train_batch_size {t.per_device_train_batch_size}: "
                                 f"a pack is the batch; pass --per_device_train_batch_size 1 and size the batch with "
                                 f"--packing_budget")
        if t.group_by_modality_length:
            raise RunConfigError("--packing_budget with --group_by_modality_length True: packing decides the batches; "
                                 "drop --group_by_modality_length")
        if run.aux_loss_weight:
            raise RunConfigError("--packing_budget with --perceiver_aux_loss_weight: the auxiliary loss reads padded "
                                 "rows of the perceiver's own tokenization; train it without packing")
    if d.feature_cache:
        if run.tower_kind is TowerKind.NONE:
            raise RunConfigError("--feature_cache without a --vision_tower: there are no image features to read")
        if tower_trains:
            raise RunConfigError(f"--feature_cache with a tower that trains in this stage {int(stage)} run: cached "
                                 f"features are those of the frozen tower; use the cache in stage 1 (or with the tower "
                                 f"frozen), not with --unfreeze_mm_vision_tower / a trainable perceiver")
        if run.qwen_vl_perceiver or m.perceiver_instruction_context:
            raise RunConfigError("--feature_cache: this perceiver reads the sample's text, so its features are not a "
                                 "function of the image alone; drop --feature_cache")
    if t.mm_vision_tower_lr is not None and not tower_trains:
        raise RunConfigError(f"--mm_vision_tower_lr is set but no vision tower trains in this stage {int(stage)} run "
                             f"(stage 2 with --unfreeze_mm_vision_tower True, or a trainable perceiver)")
    if t.load_best_model_at_end:
        raise RunConfigError("--load_best_model_at_end is not supported (checkpoints are rotated by step)")


def validate_native_resolution(run: RunConfig) -> None:
    """Whole images at native resolution: the Qwen-VL perceiver always, a Qwen2.5-VL ViT tower on request."""
    m, d = run.model, run.data
    native = d.image_aspect_ratio == "native"
    if run.qwen_vl_perceiver:
        if d.image_aspect_ratio != "native":
            raise RunConfigError(f"--image_aspect_ratio {d.image_aspect_ratio} with the Qwen-VL perceiver "
                                 f"{m.vision_tower}: it reads each image whole at native resolution; drop the flag "
                                 f"(or pass native)")
        used = [f for f, bad in (("--image_grid_pinpoints", d.image_grid_pinpoints is not None),
                                 ("--mm_patch_merge_type " + str(m.mm_patch_merge_type), m.mm_patch_merge_type != "flat"),
                                 ("--perceiver_instruction_context", m.perceiver_instruction_context),
                                 ("--dpa_select_layer", m.dpa_select_layer is not None),
                                 ("--perceiver_aux_loss_weight", bool(m.perceiver_aux_loss_weight))) if bad]
        if used:
            raise RunConfigError(
                f"{', '.join(used)}: not with the Qwen-VL perceiver {m.vision_tower}. Anyres tiles and spatial merges do "
                f"not apply to whole images; the perceiver already reads the sample's text before each image (put the "
                f"question before <image> to give it the instruction); its features are the last layer's; the "
                f"auxiliary loss is built for the LLaVA-format perceiver.")
    else:
        if m.perceiver_visual_positions_only or m.perceiver_system_prompt:
            raise RunConfigError("--perceiver_visual_positions_only and --perceiver_system_prompt apply to the Qwen-VL "
                                 "perceiver (--vision_tower dpa:<Qwen2.5-VL or imported folder>)")
        if native:
            if run.tower_kind is not TowerKind.VIT or tower_class_of(m.vision_tower) is not Qwen2_5_VLTower:
                raise RunConfigError(f"--image_aspect_ratio native needs a Qwen2.5-VL ViT tower or the Qwen-VL perceiver; "
                                     f"{m.vision_tower} reads fixed-size tiles")
            if d.image_grid_pinpoints is not None or m.mm_patch_merge_type != "flat":
                raise RunConfigError("--image_aspect_ratio native reads whole images: drop --image_grid_pinpoints and "
                                     "--mm_patch_merge_type")
    if not native and (m.min_pixels or m.max_pixels):
        raise RunConfigError("--min_pixels/--max_pixels set the native resolution: add --image_aspect_ratio native")


def check_against_tower(run: RunConfig, tower) -> None:
    """The checks that need the built tower: anyres tiles are multiples of its input size."""
    points = run.image_grid_pinpoints
    if run.data.image_aspect_ratio == "anyres" and points:
        tile = tower.image_size
        bad = [p for p in points if p[0] % tile or p[1] % tile]
        if bad:
            raise RunConfigError(
                f"--image_grid_pinpoints {bad} are not multiples of {run.model.vision_tower}'s image size {tile}; use "
                f"resolutions made of {tile}-pixel tiles, e.g. [({tile}, {2 * tile}), ({2 * tile}, {tile})]")


# ---- what the run records in model.config -------------------------------------------------------------
def model_config_entries(run: RunConfig, tower=None, tokenizer=None) -> dict:
    """Everything this project writes into `model.config`. Called before the vision modules are built
    (the projector builder reads its shape from the config) and again once the tower exists."""
    m, d, t = run.model, run.data, run.training
    entries = {
        "conv_version": m.version,
        "training_stage": int(run.stage),
        "mm_projector_width": m.mm_projector_width, "mm_projector_depth": m.mm_projector_depth,
        "image_aspect_ratio": d.image_aspect_ratio,
        "tune_mm_mlp_adapter": run.stage is Stage.ALIGNMENT,
        "freeze_mm_mlp_adapter": t.freeze_mm_mlp_adapter,
        "unfreeze_mm_vision_tower": m.unfreeze_mm_vision_tower,
        "mm_use_im_start_end": m.mm_use_im_start_end, "mm_use_im_patch_token": m.mm_use_im_patch_token,
        "mm_projector_lr": t.mm_projector_lr, "mm_vision_tower_lr": t.mm_vision_tower_lr,
    }
    if run.image_grid_pinpoints is not None:
        entries["image_grid_pinpoints"] = [list(p) for p in run.image_grid_pinpoints]
    if tokenizer is not None:
        entries.update(tokenizer_padding_side=tokenizer.padding_side,
                       tokenizer_model_max_length=tokenizer.model_max_length)
    if tower is not None:
        entries.update(tower.config_entries())
        if run.is_perceiver:
            entries.update(freeze_perceiver=m.freeze_perceiver, perceiver_aux_loss_weight=run.aux_loss_weight)
    return entries


def apply_model_config(config, run: RunConfig, tower=None, tokenizer=None) -> None:
    for key, value in model_config_entries(run, tower, tokenizer).items():
        setattr(config, key, value)


# ---- run_config.json: written at start, compared on resume --------------------------------------------
def versions() -> dict:
    def version_of(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), **{name: version_of(name) for name in (
        "torch", "transformers", "peft", "deepspeed", "accelerate", "bitsandbytes", "llava-torch", "llava-dpa")}}


def patch_state() -> dict:
    return {name: state for name, state, _ in patching.report()}


def run_record(run: RunConfig) -> dict:
    return {**run.to_json(), "versions": versions(), "patches": patch_state()}


def write_json_atomically(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    staging = f"{path}.tmp"
    with open(staging, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(staging, path)


def write_run_config(run: RunConfig, folder: str | None = None) -> str:
    path = os.path.join(folder or run.training.output_dir, RUN_CONFIG_NAME)
    write_json_atomically(path, run_record(run))
    return path


# Settings a resumed run may change: where things are, how they are batched and logged. Everything else
# changes the model or the data and must match the checkpoint's.
MAY_CHANGE_ON_RESUME = {
    "model": {"model_name_or_path", "vision_tower", "pretrain_mm_mlp_adapter", "tower_attn_implementation"},
    "data": {"data_path", "image_folder", "lazy_preprocess", "strict_data"},
    "training": {"output_dir", "logging_dir", "cache_dir", "deepspeed", "run_name", "per_device_train_batch_size",
                 "per_device_eval_batch_size", "gradient_accumulation_steps", "auto_find_batch_size",
                 "gradient_checkpointing", "gradient_checkpointing_kwargs", "overwrite_output_dir", "local_rank",
                 "report_to", "disable_tqdm", "use_cpu", "no_cuda", "tf32", "resume_from_checkpoint",
                 "mir_probe_images", "mir_probe_image_folder", "mir_probe_texts", "mir_probe_count",
                 "ddp_backend", "ddp_timeout", "ddp_find_unused_parameters", "torch_compile", "hub_token",
                 "push_to_hub", "hub_model_id", "include_num_input_tokens_seen", "evaluation_strategy"},
}
_MAY_CHANGE_PREFIXES = ("logging_", "save_", "dataloader_", "eval_", "hub_", "push_to_hub", "torch_compile",
                        "ddp_", "fsdp", "_n_gpu", "deepspeed")


def resume_differences(saved: dict, current: dict) -> list[str]:
    """'--flag: saved -> now' for every model or data setting that differs."""
    diffs = []
    if saved.get("stage") != current.get("stage"):
        diffs.append(f"stage: {saved.get('stage')} -> {current.get('stage')}")
    for group, allowed in MAY_CHANGE_ON_RESUME.items():
        old, new = saved["arguments"].get(group, {}), current["arguments"].get(group, {})
        for key in sorted(set(old) & set(new)):  # a key of another transformers version is not a difference
            if key in allowed or key.startswith(_MAY_CHANGE_PREFIXES):
                continue
            if old[key] != new[key]:
                diffs.append(f"--{key}: {old[key]!r} -> {new[key]!r}")
    return diffs


def check_resume(run: RunConfig, checkpoint: str) -> None:
    path = os.path.join(checkpoint, RUN_CONFIG_NAME)
    if not os.path.isfile(path):
        warnings.warn(f"{checkpoint} has no {RUN_CONFIG_NAME} (written by an older llava-dpa); resuming unchecked")
        return
    with open(path) as f:
        saved = json.load(f)
    diffs = resume_differences(saved, run.to_json())
    if diffs:
        raise RunConfigError(
            f"resuming from {checkpoint}, but settings that change the model or data differ from that run:\n  "
            + "\n  ".join(diffs) + "\nResume with the same settings, or train into a new --output_dir.")
