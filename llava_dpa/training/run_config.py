"""The one run configuration: every setting of a training run, parsed and validated once (`resolution.py`), then
passed as an argument. Nothing downstream re-reads argv, the environment or LLaVA's global template.

The rest of the concerns live beside it: the flags (`flags.py`), the stage (`stage.py`), the refusals
(`validation.py`), what a run writes into model.config (`model_config.py`) and run_config.json with the resume
check (`run_record.py`)."""
from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from llava_dpa.training.flags import DataArguments, ModelArguments, TrainingArguments
from llava_dpa.training.parts import Part
from llava_dpa.training.stage import Stage
from llava_dpa.training.trainability import TrainingChoices

RUN_CONFIG_NAME = "run_config.json"


class TowerKind(str, enum.Enum):
    NONE = "none"
    VIT = "vit"
    PERCEIVER = "perceiver"


# ---- the resolved configuration -----------------------------------------------------------------------
@dataclass
class RunConfig:
    model: ModelArguments
    data: DataArguments
    training: TrainingArguments
    stage: Stage
    tower_kind: TowerKind
    tower_class: Optional[type]       # the tower class --vision_tower resolves to (None: no tower)
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
    def choices(self) -> TrainingChoices:
        """The flags that decide what trains (`trainability.trainability_plan`)."""
        m, t = self.model, self.training
        return TrainingChoices(stage=self.stage, perceiver=self.is_perceiver, aux_loss=bool(self.aux_loss_weight),
                               freeze_backbone=m.freeze_backbone, unfreeze_vision_tower=m.unfreeze_mm_vision_tower,
                               freeze_perceiver=m.freeze_perceiver, freeze_projector=t.freeze_mm_mlp_adapter,
                               lora_parts=self.lora_parts if t.lora_enable else ())

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
