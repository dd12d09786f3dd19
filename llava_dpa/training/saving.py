"""Writing trained models in LLaVA's formats, safely.

- stage 1: `mm_projector.bin` + config (what `--pretrain_mm_mlp_adapter` reads);
- LoRA/QLoRA: the adapter + `non_lora_trainables.bin` (+ config), which always includes the vision
  tower's weights so the checkpoint reloads without the original tower folder;
- full: the whole model (tower included) in safetensors.
Final outputs are written to a staging folder and moved into place once complete.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

PROJECTOR_KEYS = ("mm_projector", "vision_resampler")


def gather(param) -> torch.Tensor:
    """A full CPU copy of a parameter, gathering it first under DeepSpeed ZeRO-3."""
    if hasattr(param, "ds_id"):
        from deepspeed import zero

        with zero.GatheredParameters([param]):
            return param.data.detach().cpu().clone()
    return param.detach().cpu().clone()


def maybe_zero_3(param, ignore_status=False, name=None):
    """Drop-in for llava.train.train.maybe_zero_3, which imported deepspeed unconditionally."""
    return gather(param)


def projector_state(model, use_im_start_end: bool = False) -> dict:
    keys = PROJECTOR_KEYS + (("embed_tokens", "embed_in") if use_im_start_end else ())
    return {k: gather(v) for k, v in model.named_parameters() if any(key in k for key in keys)}


def save_projector(model, output_dir: str, use_im_start_end: bool = False) -> None:
    os.makedirs(output_dir, exist_ok=True)
    unwrapped = getattr(model, "module", model)
    unwrapped.config.save_pretrained(output_dir)
    torch.save(projector_state(unwrapped, use_im_start_end), os.path.join(output_dir, "mm_projector.bin"))


def load_projector_state(model, path: str) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = dict(model.named_parameters())
    missing = [k for k in state if k not in own]
    if missing:
        raise KeyError(f"{path}: parameters {missing[:3]} are not in the model")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))


def lora_state(model, bias: str) -> dict:
    named = list(model.named_parameters())
    if bias == "none":
        keep = {k: t for k, t in named if "lora_" in k}
    elif bias == "all":
        keep = {k: t for k, t in named if "lora_" in k or "bias" in k}
    elif bias == "lora_only":
        keep = {k: t for k, t in named if "lora_" in k}
        lora_bias = {k.split("lora_")[0] + "bias" for k in keep}
        keep.update({k: t for k, t in named if k in lora_bias})
    else:
        raise ValueError(f"unknown --lora_bias {bias!r}")
    return {k: gather(v) for k, v in keep.items()}


def non_lora_trainables(model) -> dict:
    """Every trainable non-LoRA parameter, plus the vision tower (trainable or not): with it the
    checkpoint is self-contained."""
    return {k: gather(t) for k, t in model.named_parameters()
            if "lora_" not in k and (t.requires_grad or ".vision_tower." in k)}


class StagedOutput:
    """Write into `<output_dir>/.staging`, then move every file into `output_dir`."""

    def __init__(self, output_dir: str):
        self.output_dir = Path(output_dir)
        self.staging = self.output_dir / ".staging-final"

    def __enter__(self) -> str:
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)
        return str(self.staging)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            for item in self.staging.iterdir():
                target = self.output_dir / item.name
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(item, target)
        shutil.rmtree(self.staging, ignore_errors=True)
        return False
