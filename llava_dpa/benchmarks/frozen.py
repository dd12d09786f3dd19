"""`llava-dpa bench-frozen`: what a frozen tower costs in a training step, with this project's explicit no_grad
(after) and without it (before), for DPA and its baseline side by side.

A frozen tower fed pixels builds no graph by itself. It does once something upstream asks for gradients:
LLaVA's train.py calls `enable_input_require_grads()` under `--gradient_checkpointing`, and transformers 5 hooks
the input embeddings of every sub-model it finds then, the perceiver LM's among them when the tower exists at
that point (a run that continues from a DPA checkpoint, e.g. fine-tuning it with `--freeze_perceiver`). The
perceiver LM's activations are then kept for a backward that never reaches a trainable weight. transformers
4.57 hooks the target's embeddings only.

The step trains the target and the projector with the tower frozen, after `enable_input_require_grads()`. It
reports the median step time, the activations autograd saved for the backward (each storage once, the weights
not counted; measurable on any device) and, on CUDA, the peak memory.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time

import torch

from llava_dpa.benchmarks.models import build_pair, describe, run_environment
from llava_dpa.benchmarks.throughput import _DTYPES, Pipeline, _sync
from llava_dpa.data.tower_features import TowerFeatures
from llava_dpa.perceiver.tower import PerceiverTower


def with_autograd(tower, input_ids, images):
    """The tower's features with autograd as the caller has it, a LLaVA-format perceiver's own ViT tower included:
    what a frozen tower cost before the explicit no_grad (`VisionTower.forward`)."""
    inputs = tower.tower_inputs(input_ids, None, images) or {}
    if isinstance(tower, PerceiverTower):
        return tower.perceive(tower.vit.features(images), **inputs)
    return tower.features(images, **inputs)


def saved_bytes_and_seconds(pipeline, device, mode: str) -> tuple[int, float, float | None]:
    """One training step. "after": the model's own forward (a frozen tower runs under no_grad, towers/base.py).
    "before": the tower runs as its caller has it, with autograd, and its output goes in as features
    (data/tower_features.py), so the step pays what a frozen tower cost before the explicit no_grad."""
    # activations only: each storage once (ops share saved inputs), the weights themselves not counted
    weights = {p.untyped_storage().data_ptr() for p in pipeline.model.parameters()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    labels = pipeline.input_ids.clone()
    labels[labels < 0] = -100
    model = pipeline.model
    model.train()
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    start = time.perf_counter()
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            images = pipeline.images
            if mode == "before":
                images = TowerFeatures.of(with_autograd(pipeline.tower, pipeline.input_ids, images))
            out = model(input_ids=pipeline.input_ids, labels=labels, images=images, image_sizes=pipeline.sizes)
        out.loss.backward()
        _sync(device)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    peak = torch.cuda.max_memory_allocated() / 2**30 if str(device).startswith("cuda") else None
    return sum(storages.values()), time.perf_counter() - start, peak


def run(args) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="llava-dpa-bench-frozen-") as tmp:
        built = build_pair(args.preset, args.scale, tmp, args.image_size, _DTYPES[args.dtype], args.seed)
        print(f"built from this project's classes at scale {args.scale}: {describe(built['configs'])}")
        pipelines = {(name, mode): Pipeline(f"{name} {mode}", built[name], device, _DTYPES[args.dtype],
                                            args.text_tokens, seed=args.seed)
                     for mode in ("after", "before") for name in ("DPA", "baseline")}
        for p in pipelines.values():
            p.model.requires_grad_(True)
            p.tower.requires_grad_(False)
            p.model.enable_input_require_grads()  # as llava's train.py under --gradient_checkpointing
        results = {}
        for i in range(args.warmup + args.repeats):
            for key, p in pipelines.items():
                saved, seconds, peak = saved_bytes_and_seconds(p, device, key[1])
                if i >= args.warmup:
                    results.setdefault(key, []).append((saved, seconds, peak))
    rows = {}
    for (name, mode), runs in results.items():
        rows[f"{name} {mode}"] = {"saved_for_backward_mib": runs[0][0] / 2**20,
                                  "step_s": statistics.median(r[1] for r in runs),
                                  "peak_cuda_gib": max(r[2] for r in runs) if runs[0][2] is not None else None}
    report = {**run_environment(args, device), "rows": rows,
              "before_over_after": {n: {"saved": rows[f"{n} before"]["saved_for_backward_mib"]
                                        / rows[f"{n} after"]["saved_for_backward_mib"],
                                        "step": rows[f"{n} before"]["step_s"] / rows[f"{n} after"]["step_s"]}
                                    for n in ("DPA", "baseline")}}
    print(f"{'':18s}{'saved for backward':>20s}{'step':>10s}{'peak CUDA':>11s}")
    for key, r in rows.items():
        peak = f"{r['peak_cuda_gib']:.2f} GiB" if r["peak_cuda_gib"] is not None else "-"
        print(f"{key:18s}{r['saved_for_backward_mib']:16.1f} MiB{r['step_s']:9.3f}s{peak:>11s}")
    for name, ratio in report["before_over_after"].items():
        print(f"{name}: before / after: saved {ratio['saved']:.3f}x, step time {ratio['step']:.3f}x")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)
    return 0
