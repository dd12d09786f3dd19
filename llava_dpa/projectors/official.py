"""The official DPA release's projectors, as LLaVA projector types (`--mm_projector_type`).

- `dpa_aligner`: the alignment projector between the perceiver and the target,
  Linear(d_p, d_p) -> ReLU -> Linear(d_p, d_t) (FVT 128-136, `linear_align_dim`). The official model builds
  it inside a Qwen2PreTrainedModel, whose `post_init` draws every Linear weight from N(0, 0.02) with zero
  biases; it is initialised the same way here.
- `qwen_merger`: Qwen2.5-VL's patch-merger MLP as the projector, Linear(4d, 4d) -> GELU -> Linear(4d, d_out)
  (modeling_llava_baseline.py 559-570), over the tower's normalised 2x2-grouped patch features (the
  Qwen2.5-VL tower with this projector type stops before its merger MLP). It starts from the ViT's
  pretrained merger MLP when the output width is the pretrained one, and is random otherwise, as the
  official baseline and perceiver rebuild it (`adopt_pretrained_merger`).
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

logger = logging.getLogger("llava_dpa.projectors")

ALIGNER = "dpa_aligner"
MERGER = "qwen_merger"
#: Qwen2Config's initializer_range, which the official post_init uses for the aligner
OFFICIAL_INIT_STD = 0.02


def build_aligner(config) -> nn.Sequential:
    d_p, d_t = config.mm_hidden_size, config.hidden_size
    aligner = nn.Sequential(nn.Linear(d_p, d_p), nn.ReLU(), nn.Linear(d_p, d_t))
    for layer in (aligner[0], aligner[2]):
        nn.init.normal_(layer.weight, mean=0.0, std=OFFICIAL_INIT_STD)
        nn.init.zeros_(layer.bias)
    return aligner


def build_merger(config) -> nn.Sequential:
    d = config.mm_hidden_size
    return nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, config.hidden_size))


def build(config):
    kind = getattr(config, "mm_projector_type", None)
    return {ALIGNER: build_aligner, MERGER: build_merger}[kind](config) if kind in (ALIGNER, MERGER) else None


def adopt_pretrained_merger(model) -> str:
    """After the projector is built: a `qwen_merger` projector whose shape matches the ViT's own merger MLP
    takes its pretrained weights; any other shape stays random. Returns what happened (also logged)."""
    if getattr(model.config, "mm_projector_type", None) != MERGER:
        return "not a qwen_merger projector"
    tower = model.get_vision_tower()
    pretrained = getattr(tower, "pretrained_merger_mlp", None)
    projector = model.get_model().mm_projector
    if not pretrained:
        message = "qwen_merger projector: randomly initialised (the ViT's merger MLP was not read from its folder)"
    elif pretrained["2.weight"].shape != projector[2].weight.shape:
        message = (f"qwen_merger projector: randomly initialised (output width {projector[2].out_features} differs "
                   f"from the pretrained merger's {pretrained['2.weight'].shape[0]})")
    else:
        with torch.no_grad():
            projector.load_state_dict({k: v.to(projector[0].weight.dtype) for k, v in pretrained.items()})
        message = "qwen_merger projector: initialised from the ViT's pretrained merger MLP (same output width)"
    logger.info(message)
    return message
