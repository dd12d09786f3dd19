"""`model_config_entries`: the one function that decides what a run writes into `model.config` (the tower adds
its own through `config_entries()`)."""
from __future__ import annotations

from llava_dpa.training.run_config import RunConfig
from llava_dpa.training.stage import Stage


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
