"""LLaVATrainer with parameter groups, crash-safe checkpoints and resumable stage-1 runs.

- Checkpoints are written to `tmp-checkpoint-N` and renamed to `checkpoint-N` only when complete, so a
  run killed while saving never leaves a half-written checkpoint for the resume to pick up.
- Stage 1 (`--tune_mm_mlp_adapter True`) checkpoints hold `mm_projector.bin` plus the optimizer,
  scheduler and RNG state (LLaVA's held only the projector and could not be resumed).
"""
from __future__ import annotations

import os
import shutil

import transformers
from llava.train.llava_trainer import LLaVATrainer
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from llava_dpa.training.optim import parameter_groups
from llava_dpa.training.saving import load_projector_state, save_projector

STAGING_PREFIX = "tmp-" + PREFIX_CHECKPOINT_DIR


class DPATrainer(LLaVATrainer):
    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        if getattr(outputs, "perceiver_aux_loss", None) is not None and model.training:
            parts = self.__dict__.setdefault("_loss_parts", {"target_loss": [], "perceiver_aux_loss": []})
            parts["target_loss"].append(outputs.target_loss.item())
            parts["perceiver_aux_loss"].append(outputs.perceiver_aux_loss.item())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        # Every log line (and trainer_state.json) counts the bad samples skipped so far.
        if hasattr(self.train_dataset, "skipped"):
            logs["skipped_samples"] = self.train_dataset.skipped
        # With the auxiliary perceiver loss, its parts since the last log (the logged loss is their total).
        parts = self.__dict__.pop("_loss_parts", None)
        if parts and "loss" in logs:
            for key, values in parts.items():
                logs[key] = round(sum(values) / len(values), 6)
        return super().log(logs, *args, **kwargs)

    def create_optimizer(self):
        if self.optimizer is None:
            optimizer_cls, optimizer_kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(self.args, self.model)
            self.optimizer = optimizer_cls(parameter_groups(self.model, self.args), **optimizer_kwargs)
        return self.optimizer

    def _save_checkpoint(self, model, trial, *args, **kwargs):
        run_dir = self._get_output_dir(trial=trial)
        step = self.state.global_step
        staging = os.path.join(run_dir, f"{STAGING_PREFIX}-{step}")
        final = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        shutil.rmtree(staging, ignore_errors=True)
        # transformers names the folder from this module global; point it at the staging name meanwhile.
        transformers.trainer.PREFIX_CHECKPOINT_DIR = STAGING_PREFIX
        try:
            transformers.Trainer._save_checkpoint(self, model, trial)
        finally:
            transformers.trainer.PREFIX_CHECKPOINT_DIR = PREFIX_CHECKPOINT_DIR
        if self.args.should_save:
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(staging, final)
            self._rotate_checkpoints(use_mtime=False, output_dir=run_dir)

    def _save(self, output_dir=None, state_dict=None):
        if getattr(self.args, "tune_mm_mlp_adapter", False):
            save_projector(self.model, output_dir, use_im_start_end=getattr(self.args, "use_im_start_end", False))
            return
        transformers.Trainer._save(self, output_dir, state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        projector = os.path.join(resume_from_checkpoint, "mm_projector.bin")
        if getattr(self.args, "tune_mm_mlp_adapter", False) and os.path.isfile(projector):
            load_projector_state(model or self.model, projector)
            return
        return super()._load_from_checkpoint(resume_from_checkpoint, model)


class SkippedSamplesCallback(TrainerCallback):
    """Prints how many bad samples were skipped when training ends."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_train_end(self, args, state, control, **kwargs):
        skipped = getattr(self.dataset, "skipped", 0)
        if skipped and state.is_world_process_zero:
            print(f"[llava-dpa] skipped {skipped} bad sample(s) during training; see the warnings above "
                  f"(--strict_data True stops at the first one)")
