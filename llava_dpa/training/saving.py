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
#: beside a LoRA adapter: the parameters that are not LoRA's (LLaVA's name; llava_dpa/loading.py reads it)
NON_LORA_NAME = "non_lora_trainables.bin"


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


def lora_layer_biases(model) -> set[str]:
    """The parameter names of the biases of the modules that carry LoRA adapters (`--lora_bias lora_only`):
    PEFT keeps a wrapped module's own weight and bias under `base_layer`."""
    from peft.tuners.tuners_utils import BaseTunerLayer  # lazy: peft imports bitsandbytes; only LoRA runs need it

    return {f"{name}.base_layer.bias" for name, module in model.named_modules()
            if isinstance(module, BaseTunerLayer) and getattr(module.get_base_layer(), "bias", None) is not None}


def is_bias(name: str) -> bool:
    return name == "bias" or name.endswith(".bias")


def lora_state(model, bias: str) -> dict:
    """The adapter's parameters to save, selected as PEFT selects them for `--lora_bias` (its
    `get_peft_model_state_dict`, which filters what is passed to `save_pretrained` again by the same rule):
    `none` the LoRA weights; `all` also every bias; `lora_only` also the biases of the modules with adapters."""
    named = list(model.named_parameters())
    keep = {k: t for k, t in named if "lora_" in k}
    if bias == "all":
        keep.update({k: t for k, t in named if is_bias(k)})
    elif bias == "lora_only":
        wanted = lora_layer_biases(model)
        keep.update({k: t for k, t in named if k in wanted})
    elif bias != "none":
        raise ValueError(f"unknown --lora_bias {bias!r}: use none, all or lora_only")
    return {k: gather(v) for k, v in keep.items()}


def non_lora_trainables(model, with_tower: bool = True) -> dict:
    """Every trainable non-LoRA parameter, plus (`with_tower`) the vision tower, trainable or not: with it the
    final checkpoint is self-contained. A resumable checkpoint needs only what trains (the frozen rest comes
    from the base model again), so it leaves the frozen tower out."""
    return {k: gather(t) for k, t in model.named_parameters()
            if "lora_" not in k and (t.requires_grad or (with_tower and ".vision_tower." in k))}


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
