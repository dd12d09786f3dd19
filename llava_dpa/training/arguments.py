"""LLaVA's argument dataclasses, extended. Every LLaVA flag keeps its meaning; new flags are LLaVA-NeXT's
(anyres, tower learning rate) and llava-dpa's (perceiver, data strictness)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from llava.train import train as llava_train


@dataclass
class ModelArguments(llava_train.ModelArguments):
    mm_projector_width: Optional[int] = field(default=None, metadata={"help": "Hidden width of a large_mlp projector."})
    mm_projector_depth: Optional[int] = field(default=None, metadata={"help": "Linear layers of a large_mlp projector."})
    unfreeze_mm_vision_tower: bool = field(default=False, metadata={"help": "Train the vision tower in this stage."})
    # DPA perceiver options (used when --vision_tower is a VLM checkpoint).
    freeze_perceiver: bool = field(default=False, metadata={"help": "Keep the whole perceiver frozen (ablation)."})
    dpa_select_layer: Optional[int] = field(default=None, metadata={
        "help": "Perceiver LM layer whose visual-token hidden states are the features; default: the last, "
                "after the final norm (as the model returns hidden_states[-1])."})
    perceiver_instruction_context: bool = field(default=False, metadata={
        "help": "Give the perceiver the sample's instruction text before the image (early fusion ablation)."})
    perceiver_aux_loss_weight: float = field(default=0.0, metadata={
        "help": "Weight of the perceiver's own LM loss on the same conversation (multi-task ablation)."})
    perceiver_aux_loss_stages: str = field(default="2", metadata={"help": "Stages that use the auxiliary loss, e.g. '2' or '1,2'."})


@dataclass
class DataArguments(llava_train.DataArguments):
    image_grid_pinpoints: Optional[str] = field(default=None, metadata={
        "help": "anyres grid resolutions, e.g. \"[(448, 896), (896, 448), (896, 896)]\""})
    strict_data: bool = field(default=False, metadata={"help": "Stop on the first bad sample instead of skipping it."})


@dataclass
class TrainingArguments(llava_train.TrainingArguments):
    mm_vision_tower_lr: Optional[float] = field(default=None, metadata={"help": "Learning rate of the (perceiver) ViT."})
    perceiver_lr: Optional[float] = field(default=None, metadata={
        "help": "Learning rate of the perceiver's projector and LM blocks (default: --learning_rate)."})
    mir_probe_images: Optional[str] = field(default=None, metadata={
        "help": "Record MIR at every save (mir_history.csv): an image folder or LLaVA data file of probes."})
    mir_probe_image_folder: Optional[str] = field(default=None, metadata={"help": "Images of a probe data file."})
    mir_probe_texts: Optional[str] = field(default=None, metadata={"help": "Probe texts, one per line."})
    mir_probe_count: int = field(default=64, metadata={"help": "Probes measured at every save."})
