"""MIR during training (paper Figure 6): with `--mir_probe_images`, every checkpoint save (and the end of
training) measures MIR on a fixed set of probes and appends a row to <output_dir>/mir_history.csv.

Every rank runs the probe forwards (ZeRO-3 gathers parameters collectively, so rank 0 cannot run them
alone); the main process writes. The model is measured in eval mode without gradients and handed back in
the mode it was in.
"""
from __future__ import annotations

import csv
import os

import torch
from transformers import TrainerCallback

from llava_dpa.analysis.mir_probe import mir_per_layer
from llava_dpa.analysis.probes import LanguageModelView, read_probes


class MIRCallback(TrainerCallback):
    def __init__(self, tokenizer, conv_mode: str, images: str, texts: str | None, image_folder: str | None,
                 count: int, seed: int = 0):
        self.tokenizer, self.conv_mode, self.seed = tokenizer, conv_mode, seed
        self.probes = read_probes(images, texts, image_folder, count, seed)
        self.last_step = None

    def _record(self, args, state, model) -> None:
        if model is None or state.global_step == self.last_step:
            return
        self.last_step = state.global_step
        inner = getattr(model, "module", model)
        if hasattr(inner, "get_base_model"):
            inner = inner.get_base_model()
        view = LanguageModelView(inner, self.tokenizer, self.conv_mode, inner.get_vision_tower().image_processor,
                                 f"step {state.global_step}")
        was_training = inner.training
        inner.eval()
        try:
            with torch.no_grad():
                result = mir_per_layer(view, self.probes, seed=self.seed)
        finally:
            inner.train(was_training)
        if state.is_world_process_zero:
            path = os.path.join(args.output_dir, "mir_history.csv")
            new = not os.path.isfile(path)
            with open(path, "a", newline="") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(["step", "mir"] + [f"fd_layer_{k}" for k in range(1, len(result["fd"]) + 1)])
                writer.writerow([state.global_step, f"{result['mir']:.6f}"] + [f"{v:.8g}" for v in result["fd"]])

    def on_save(self, args, state, control, model=None, **kwargs):
        self._record(args, state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._record(args, state, model)
