"""Every flag of a training run: LLaVA's argument dataclasses extended with this project's. transformers renames
and CPU-only refusals are translated in `TrainingArguments.__post_init__`, not by rewriting argv."""
from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Optional

import torch
from llava.train import train as llava_train

from llava_dpa.data.native_resolution import OFFICIAL_MAX_PIXELS
from llava_dpa.training.distributed import count_cpu_deepspeed_processes
from llava_dpa.training.errors import RunConfigError


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
        "help": f"Native resolution: the most pixels an image is resized to (default {OFFICIAL_MAX_PIXELS}, the official "
                "training's)."})
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
        if self.deepspeed and importlib.util.find_spec("deepspeed") is None:
            # before transformers' own check, which names the package but not the extra
            raise RunConfigError(f"--deepspeed {self.deepspeed}: DeepSpeed is not installed: "
                                 "pip install 'llava-dpa[deepspeed]'")
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
