"""LLaVATrainer with parameter groups, crash-safe checkpoints and resumable stage-1 runs.

- The run configuration (with its `Stage`) is a constructor argument; nothing reads LLaVA's flags again.
- A checkpoint is written to `tmp-checkpoint-N` and renamed to `checkpoint-N` only once complete, so a run
  killed while saving never leaves a half-written checkpoint for the resume to pick up. The trainer writes
  the checkpoint's contents itself (model, optimizer, scheduler, scaler, RNG, trainer state, run_config.json)
  rather than redirecting transformers' own writer.
- Stage-1 checkpoints hold `mm_projector.bin` plus the optimizer, scheduler and RNG state (LLaVA's held
  only the projector and could not be resumed).
- LoRA checkpoints hold the adapter plus `non_lora_trainables.bin`, what trains in full beside it (the projector,
  a perceiver): PEFT's adapter alone resumed those from their initial weights.
"""
from __future__ import annotations

import os
import re
import shutil
import time

import torch
import transformers
from llava.train.llava_trainer import LLaVATrainer
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from llava_dpa.data.packing import PackedBatchSampler, expanded_lengths
from llava_dpa.perceiver.aux_loss import AUX_KEYS, perceiver_lm_loss
from llava_dpa.training.errors import RunConfigError
from llava_dpa.training.optim import parameter_groups
from llava_dpa.training.run_record import write_run_config
from llava_dpa.training.saving import NON_LORA_NAME, load_projector_state, non_lora_trainables, save_projector
from llava_dpa.training.stage import Stage

TRAINER_STATE_NAME = "trainer_state.json"
STAGING_PREFIX = "tmp-" + PREFIX_CHECKPOINT_DIR
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def complete_checkpoints(run_dir: str) -> list[str]:
    """`checkpoint-N` folders by step (staging folders are never complete)."""
    if not os.path.isdir(run_dir):
        return []
    found = [(int(m.group(1)), os.path.join(run_dir, name)) for name in os.listdir(run_dir)
             if (m := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(run_dir, name))]
    return [path for _, path in sorted(found)]


def rotate_checkpoints(run_dir: str, limit: int | None, keep: str | None = None) -> list[str]:
    """Delete the oldest checkpoints beyond `limit` (never `keep`); returns what was deleted."""
    if not limit or limit <= 0:
        return []
    checkpoints = complete_checkpoints(run_dir)
    removable = [c for c in checkpoints[:-1] if not keep or os.path.abspath(c) != os.path.abspath(keep)]
    excess = max(0, len(checkpoints) - limit)
    deleted = removable[:excess]
    for folder in deleted:
        shutil.rmtree(folder, ignore_errors=True)
    return deleted


class DPATrainer(LLaVATrainer):
    def __init__(self, *args, run, **kwargs):
        self.run = run
        super().__init__(*args, **kwargs)

    @property
    def stage(self) -> Stage:
        return self.run.stage

    def get_train_dataloader(self):
        budget = self.run.training.packing_budget
        if budget is None:
            return super().get_train_dataloader()
        from torch.utils.data import DataLoader


        dataset = self.train_dataset
        started = time.perf_counter()
        sampler = PackedBatchSampler(expanded_lengths(dataset), budget, seed=self.args.seed)
        if self.is_world_process_zero():
            print(f"[llava-dpa] packing: {len(dataset)} samples measured and cut into {len(sampler)} packs of at "
                  f"most {budget} tokens in {time.perf_counter() - started:.1f}s", flush=True)
        collate = self.data_collator

        def packed(instances):
            return {**collate(instances), "packed": True}

        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=packed,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        return self.accelerator.prepare(loader)

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        # The perceiver's auxiliary loss (perceiver/aux_loss.py) is the trainer's business, not the target's forward:
        # its inputs leave the batch here, and loss = target loss + λ * the perceiver's own LM loss.
        aux_inputs = {k: inputs[k] for k in AUX_KEYS if k in inputs}
        inputs = {k: v for k, v in inputs.items() if k not in AUX_KEYS}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        if aux_inputs and self.run.aux_loss_weight:
            tower = self.accelerator.unwrap_model(model).get_vision_tower()
            aux = perceiver_lm_loss(tower, aux_inputs, inputs.get("images"), inputs.get("image_sizes"))
            outputs.target_loss, outputs.perceiver_aux_loss = loss.detach(), aux.detach()
            loss = loss + self.run.aux_loss_weight * aux
        if model.training:  # throughput since the last log line: samples, and positions the target computed
            self.__dict__.setdefault("_last_log_time", time.perf_counter())
            count = self.__dict__.setdefault("_throughput", [0, 0])
            count[0] += int(inputs["input_ids"].shape[0])
            logits = getattr(outputs, "logits", None)
            count[1] += int(logits.shape[0] * logits.shape[1]) if logits is not None else 0
        if getattr(outputs, "perceiver_aux_loss", None) is not None and model.training:
            parts = self.__dict__.setdefault("_loss_parts", {"target_loss": [], "perceiver_aux_loss": []})
            parts["target_loss"].append(outputs.target_loss.item())
            parts["perceiver_aux_loss"].append(outputs.perceiver_aux_loss.item())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        # Every log line (and trainer_state.json) counts the bad samples skipped so far.
        logs["skipped_samples"] = self.train_dataset.skipped
        # With the auxiliary perceiver loss, its parts since the last log (the logged loss is their total).
        parts = self.__dict__.pop("_loss_parts", None)
        if parts and "loss" in logs:
            for key, values in parts.items():
                logs[key] = round(sum(values) / len(values), 6)
        if "loss" in logs:
            logs.update(self._throughput_since_last_log())
        return super().log(logs, *args, **kwargs)

    def _throughput_since_last_log(self) -> dict:
        """samples/s and tokens/s (the target's input positions, image tokens and padding included, as computed)
        since the previous log line, per process; peak GPU memory on CUDA."""
        now = time.perf_counter()
        samples, tokens = self.__dict__.pop("_throughput", [0, 0])
        last = self.__dict__.get("_last_log_time")
        self.__dict__["_last_log_time"] = now
        out = {}
        if last is not None and now > last:
            out = {"samples_per_second": round(samples / (now - last), 3), "tokens_per_second": round(tokens / (now - last), 1)}
        if torch.cuda.is_available():
            out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        return out

    def create_optimizer(self):
        if self.optimizer is None:
            optimizer_cls, optimizer_kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(self.args, self.model)
            self.optimizer = optimizer_cls(parameter_groups(self.model, self.run), **optimizer_kwargs)
        return self.optimizer

    # ---- checkpoints ---------------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial, *args, **kwargs):
        run_dir = self._get_output_dir(trial=trial)
        step = self.state.global_step
        staging = os.path.join(run_dir, f"{STAGING_PREFIX}-{step}")
        final = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        self.save_model(staging, _internal_call=True)  # every rank: ZeRO-3 gathers shards
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(staging)
            self._save_scaler(staging)
            self._save_rng_state(staging)
        if self.args.should_save:
            self._save_trainer_state(staging)
            write_run_config(self.run, staging)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(staging, final)
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def _save_trainer_state(self, folder: str) -> None:
        for cb in [cb for cb in self.callback_handler.callbacks + [self.control] if isinstance(cb, ExportableState)]:
            name, state = cb.__class__.__name__, cb.state()
            if isinstance(self.state.stateful_callbacks.get(name), list):
                self.state.stateful_callbacks[name].append(state)
            else:
                self.state.stateful_callbacks[name] = state
        self.state.save_to_json(os.path.join(folder, TRAINER_STATE_NAME))

    def _save(self, output_dir=None, state_dict=None):
        if self.stage is Stage.ALIGNMENT:
            save_projector(self.model, output_dir, use_im_start_end=self.run.model.mm_use_im_start_end)
            return
        transformers.Trainer._save(self, output_dir, state_dict)
        if self.run.training.lora_enable and not self.is_deepspeed_enabled:
            # PEFT writes the adapter only; what trains in full beside it (the projector, a perceiver) would start
            # again from its initial weights on resume. DeepSpeed's own checkpoint holds every module weight.
            torch.save(non_lora_trainables(self.model, with_tower=False), os.path.join(output_dir, NON_LORA_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        projector = os.path.join(resume_from_checkpoint, "mm_projector.bin")
        if self.stage is Stage.ALIGNMENT and os.path.isfile(projector):
            load_projector_state(model or self.model, projector)
            return
        result = super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.run.training.lora_enable:
            load_non_lora_trainables(model or self.model, resume_from_checkpoint)
        return result


def load_non_lora_trainables(model, checkpoint: str) -> None:
    """A LoRA checkpoint's non-LoRA trainables back into the model being resumed: every parameter that trains
    besides the adapters must be there (a checkpoint written without them cannot resume this run)."""
    path = os.path.join(checkpoint, NON_LORA_NAME)
    trains = {k for k, p in model.named_parameters() if p.requires_grad and "lora_" not in k}
    if not os.path.isfile(path):
        if not trains:
            return
        raise RunConfigError(f"{checkpoint} has no {NON_LORA_NAME}: the parameters that train besides the LoRA adapters "
                             f"({len(trains)}, e.g. {min(trains)}) cannot be restored; resume from a checkpoint "
                             f"written by this version, or start the run again in an empty --output_dir")
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = sorted(trains - set(state))
    if missing:
        raise RunConfigError(f"{path} lacks {len(missing)} of the parameters this run trains, e.g. {missing[0]}: it was "
                             f"written by another run configuration")
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise RunConfigError(f"{path}: weights {result.unexpected_keys[:3]} do not belong to this model")


class SkippedSamplesCallback(TrainerCallback):
    """Prints how many bad samples were skipped when training ends."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_train_end(self, args, state, control, **kwargs):
        skipped = self.dataset.skipped
        if skipped and state.is_world_process_zero:
            print(f"[llava-dpa] skipped {skipped} bad sample(s) during training; see the warnings above "
                  f"(--strict_data True stops at the first one)")
