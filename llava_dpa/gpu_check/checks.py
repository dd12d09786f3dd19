"""The checks. Each takes the run's `Context` (size, work folder, device) and a form where it has one, and
returns {"passed": bool, "figures": {...}}; an exception is the runner's to record. Tolerances are the module
constants below (docs/gpu.md states them).

- build: the components, both perceivers and the data (`models.build`); assemble: a form's DPA and baseline.
- forward: a batch of two rows that differ only in their image, bf16 logits against fp32 logits of the same model.
- generate: `generate` of N tokens with the KV cache against greedy decoding without it (the whole sequence
  re-run every step).
- train: one stage-1 and one stage-2 step of each model through the project's trainer (`training.train.train`,
  the registry's commands, gradient checkpointing): a finite loss, gradients on exactly the parameters the stage
  trains (grouped by part), peak memory.
- qlora: the 32B recipe's stage 2 (4-bit target with LoRA, LoRA on the perceiver) on a 32B-wide target cut to a
  few layers, one step.
- zero3: one DPA stage-2 step under DeepSpeed ZeRO-3, launched as multi-GPU users launch it (the registry's
  `deepspeed --module llava.train.train_mem --deepspeed zero3.json` command, one process): a finite loss, one step,
  the saved (gathered) weights moved from the loaded ones in every part that trains.
- packing: the same padded batch run padded and packed: loss and every parameter's gradient.
- bench: `llava-dpa bench` on the form's pair (prefill, decode, stage-1 and stage-2 ratios, analytic, the paper's).
- bench_packing: `llava-dpa bench-packing`'s speedup.
"""
from __future__ import annotations

import gc
import json
import math
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch

from llava_dpa.benchmarks.packing import run
from llava_dpa.benchmarks.throughput import bench_pair, synthetic_prompt
from llava_dpa.data.dataset import DataCollatorForSupervisedDataset, DataSpec, LazySupervisedDataset
from llava_dpa.gpu_check import models
from llava_dpa.gpu_check.processes import run_command
from llava_dpa.gpu_check.sizes import ENTRIES, QLORA_ENTRY, Size
from llava_dpa.llava_integration.inference import to_model
from llava_dpa.loading import load_pretrained_model
from llava_dpa.recipes.paper import get
from llava_dpa.recipes.render import stage1_dir, stage_command
from llava_dpa.recipes.settings import Settings
from llava_dpa.towers.weights import read_config_dict
from llava_dpa.training import train as train_module
from llava_dpa.training.parts import part_of
from llava_dpa.training.stage import Stage
from llava_dpa.training.trainer import DPATrainer

#: forward: bf16 logits against fp32 logits, relative L2 error per row (||bf16 - fp32|| / ||fp32||)
FORWARD_REL_L2 = 0.05
#: generate: a divergence passes only at a near tie of the uncached run, top-1 minus top-2 logit at most this many
#: bf16 units in the last place of the largest logit (2**-7 relative)
GENERATE_TIE_ULPS = 4
#: packing: packed against padded in bf16, relative loss difference and gradient cosine
PACKING_LOSS_REL = 1e-2
PACKING_GRAD_COSINE = 0.99
#: the paper's Table 5 (4B, GPU): DPA / baseline inference throughput and training cost
PAPER = {"inference_throughput": 0.94, "training_cost": 1.14}
#: zero3: the registry entry it trains, the parts whose saved weights must have moved from the loaded ones (the
#: projector is new: nothing to compare it with), and the seconds its command leaves the check to record it
ZERO3_ENTRY = "dpa-qwen3-4b"
ZERO3_MOVED_PARTS = ("language_model", "perceiver_vit", "perceiver_projector", "perceiver_lm")
COMMAND_MARGIN_S = 10
#: a check's command without a limit from the runner (a direct call) gets this many seconds
DEFAULT_COMMAND_S = 600


@dataclass
class Context:
    size: Size
    workdir: Path
    device: str
    deadline: float | None = None  # time.monotonic() by which the check is killed (the runner's limit)
    attn: str = "sdpa"             # the target's attention in the models the checks load and train

    @property
    def dtype(self) -> torch.dtype:
        return models.DTYPES[self.size.dtype]

    def command_timeout(self) -> float:
        """Seconds for a command the check starts: what its limit leaves, less the time to record the result."""
        if self.deadline is None:
            return DEFAULT_COMMAND_S
        return max(1.0, self.deadline - time.monotonic() - COMMAND_MARGIN_S)


# ---- helpers ----------------------------------------------------------------------------------------------
def release(ctx: Context) -> None:
    gc.collect()
    if ctx.device.startswith("cuda"):
        torch.cuda.empty_cache()


@contextmanager
def peak_memory(ctx: Context, box: dict, key: str = "peak_memory_gib"):
    """box[key]: the peak CUDA memory allocated inside the block (None on a CPU)."""
    if ctx.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        yield
    finally:
        if ctx.device.startswith("cuda"):
            torch.cuda.synchronize()
            box[key] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        else:
            box[key] = None


def load(ctx: Context, path: str, dtype=None):
    tokenizer, model, processor, _ = load_pretrained_model(path, None, None, device=ctx.device, dtype=dtype or ctx.dtype,
                                                           attn_implementation=ctx.attn)
    model.eval()  # each check's first forward encodes its images (the towers' inference memos start empty)
    return tokenizer, model, processor


def prompt(ctx: Context, tokenizer, model, processor, rows: int):
    ids, processed, sizes = synthetic_prompt(tokenizer, model, processor, ctx.size.text_tokens, seed=0,
                                             image_side=ctx.size.image_size, images=rows)
    return ids.to(ctx.device), processed, sizes


def on_model(processed, model):
    return to_model(processed, model)


# ---- build ------------------------------------------------------------------------------------------------
def build(ctx: Context) -> dict:
    start = time.perf_counter()
    built = models.build(ctx.size, ctx.workdir, ctx.device)
    return {"passed": True, "figures": {"seconds": round(time.perf_counter() - start, 2), "configs": built["configs"]}}


def assemble(ctx: Context, form: str) -> dict:
    pair = models.assemble_form(ctx.workdir, form)
    params = {}
    for name in ("DPA", "baseline"):
        params[name] = read_config_dict(pair[name]).get("mm_vision_tower")
    return {"passed": True, "figures": {"towers": params}}


# ---- forward ----------------------------------------------------------------------------------------------
def forward(ctx: Context, form: str) -> dict:
    pair, figures = models.pair(ctx.workdir, form), {}
    for name in ("DPA", "baseline"):
        tokenizer, model, processor = load(ctx, pair[name])
        ids, processed, sizes = prompt(ctx, tokenizer, model, processor, rows=2)
        row = {}
        with torch.no_grad(), peak_memory(ctx, row):
            low = model(input_ids=ids, images=on_model(processed, model), image_sizes=sizes).logits.float()
        model.float()
        with torch.no_grad():
            high = model(input_ids=ids, images=on_model(processed, model), image_sizes=sizes).logits.float()
        rel = [((low[i] - high[i]).norm() / high[i].norm()).item() for i in range(2)]
        # the rows differ only in their image: their last-position logits must differ (both images were read)
        apart = ((high[0, -1] - high[1, -1]).norm() / high[0, -1].norm()).item()
        row.update(rel_l2_bf16_vs_fp32=rel, max_abs_diff=(low - high).abs().max().item(),
                   top1_agreement=(low.argmax(-1) == high.argmax(-1)).float().mean().item(),
                   rows_apart_rel=apart, sequence_length=int(low.shape[1]), finite=bool(torch.isfinite(low).all()))
        row["passed"] = row["finite"] and max(rel) <= FORWARD_REL_L2 and apart > 0
        figures[name] = row
        del model, low, high
        release(ctx)
    figures["tolerance_rel_l2"] = FORWARD_REL_L2
    return {"passed": all(figures[n]["passed"] for n in ("DPA", "baseline")), "figures": figures}


# ---- generate ---------------------------------------------------------------------------------------------
def _eos_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    eos = eos if eos is not None else tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or [])


def generate(ctx: Context, form: str) -> dict:
    n, pair, figures = ctx.size.generate_tokens, models.pair(ctx.workdir, form), {}
    for name in ("DPA", "baseline"):
        tokenizer, model, processor = load(ctx, pair[name])
        ids, processed, sizes = prompt(ctx, tokenizer, model, processor, rows=1)
        images = on_model(processed, model)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.no_grad():
            start = time.perf_counter()
            cached = model.generate(ids, images=images, image_sizes=sizes, do_sample=False, max_new_tokens=n,
                                    min_new_tokens=n, use_cache=True, pad_token_id=pad)[0, -n:].tolist()
            cached_s = time.perf_counter() - start
            # greedy without a cache: the whole sequence through the model at every step; end-of-sequence is
            # suppressed as min_new_tokens suppresses it
            sequence, plain, margins, tolerances = ids, [], [], []
            eos = _eos_ids(model, tokenizer)
            start = time.perf_counter()
            for _ in range(n):
                logits = model(input_ids=sequence, images=images, image_sizes=sizes, use_cache=False).logits[0, -1].float()
                logits[eos] = -math.inf
                top = logits.topk(2)
                margins.append((top.values[0] - top.values[1]).item())
                tolerances.append(GENERATE_TIE_ULPS * 2 ** -7 * top.values[0].abs().item())
                plain.append(int(top.indices[0]))
                sequence = torch.cat([sequence, top.indices[:1].view(1, 1)], dim=1)
            plain_s = time.perf_counter() - start
        diverged = next((i for i, (a, b) in enumerate(zip(cached, plain)) if a != b), None)
        near_tie = diverged is not None and margins[diverged] <= tolerances[diverged]
        figures[name] = {"tokens": n, "equal": diverged is None, "first_divergence": diverged,
                         "margin_at_divergence": margins[diverged] if diverged is not None else None,
                         "tie_tolerance_at_divergence": tolerances[diverged] if diverged is not None else None,
                         "smallest_margin": min(margins), "cached_seconds": round(cached_s, 3),
                         "uncached_seconds": round(plain_s, 3), "cached_tokens": cached, "uncached_tokens": plain,
                         "passed": len(cached) == n and (diverged is None or near_tie)}
        del model
        release(ctx)
    return {"passed": all(figures[n]["passed"] for n in ("DPA", "baseline")), "figures": figures}


# ---- training through the project's trainer -------------------------------------------------------------
class GradientProbe:
    """Before the (first) optimizer step: per part, the parameters that train, those with a gradient, frozen
    ones with a gradient, and non-finite gradients."""

    def __init__(self):
        from transformers import TrainerCallback

        probe = self

        class Callback(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                if probe.parts is None:
                    probe.record(model)

        self.callback, self.parts, self.trainable_without_grad, self.lora_a_without_grad = Callback(), None, [], 0

    def record(self, model) -> None:
        parts = {}
        for name, param in model.named_parameters():
            row = parts.setdefault(part_of(name).value, {"trainable": 0, "with_grad": 0, "frozen_with_grad": 0,
                                                         "nonfinite_grads": 0, "lora_trainable": 0})
            grad = param.grad
            has = grad is not None and bool(grad.detach().abs().sum() > 0)
            if param.requires_grad:
                row["trainable"] += param.numel()
                row["with_grad"] += param.numel() if has else 0
                row["lora_trainable"] += param.numel() if "lora_" in name else 0
                if not has and "lora_A" in name:  # LoRA's B starts at zero: A has no gradient on the first step
                    self.lora_a_without_grad += 1
                elif not has and len(self.trainable_without_grad) < 8:
                    self.trainable_without_grad.append(name)
            elif has:
                row["frozen_with_grad"] += param.numel()
            if grad is not None and not bool(torch.isfinite(grad).all()):
                row["nonfinite_grads"] += 1
        self.parts = parts

    def verdict(self) -> dict:
        if self.parts is None:
            return {"recorded": False, "trained_parts": [], "parts_with_grad": [], "exact": False}
        trained = sorted(p for p, r in self.parts.items() if r["trainable"])
        with_grad = sorted(p for p, r in self.parts.items() if r["with_grad"] or r["frozen_with_grad"])
        clean = all(r["frozen_with_grad"] == 0 and r["nonfinite_grads"] == 0 for r in self.parts.values())
        return {"recorded": True, "trained_parts": trained, "parts_with_grad": with_grad,
                "exact": trained == with_grad and clean}


def settings_for(ctx: Context, form: str):
    """The registry's cluster settings pointed at the built models: one process, bf16, batch 2."""

    built = models.manifest(ctx.workdir)
    c = built["components"]
    official = built["towers"]["qwen-vl"].split(":", 1)[1]
    return Settings(
        paths={"vit": c["vit"], "qwen3_0_6b": c["perceiver_lm"], "qwen3_4b": c["target"],
               "qwen3_32b": built["qlora_target"], "llama3_2_3b": c["target"], "stage1_data": built["data"],
               "stage1_images": built["images"], "stage2_data": built["data"], "stage2_images": built["images"],
               "checkpoints": str(models.layout(ctx.workdir)["runs"] / form), "official_perceiver": official},
        launcher="python", gpus_per_node=1, per_device_batch=2, precision="bf16", dataloader_workers=0,
        python=sys.executable)


def one_step_flags(ctx: Context, form: str) -> list[str]:
    """One optimizer step of batch 2 that saves nothing but stage 1's projector; the schedule is irrelevant."""
    flags = ["--max_steps", "1", "--gradient_accumulation_steps", "1", "--save_strategy", "no", "--logging_steps", "1",
             "--gradient_checkpointing", "True", "--model_max_length", str(ctx.size.max_length), "--report_to", "none",
             "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--group_by_modality_length", "False"]
    if not ctx.device.startswith("cuda"):
        flags += ["--tf32", "False", "--use_cpu", "True"]
    if form == "llava" and ctx.size.pinpoints:
        flags += ["--image_grid_pinpoints", ctx.size.pinpoints]
    if form == "qwen-vl" and ctx.size.max_pixels:
        flags += ["--max_pixels", str(ctx.size.max_pixels)]
    return flags


def run_training(ctx: Context, argv: list[str]) -> dict:
    """One run of `training.train.train` in this process: loss, seconds, peak memory, the gradient probe. Stage 2's
    model is not saved (a check measures one step; at the full size it would write 8 GB)."""

    probe = GradientProbe()
    original_init, original_save = DPATrainer.__init__, train_module.save_final

    def init_with_probe(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(probe.callback)

    def save_stage1_only(trainer, model, tokenizer, run):
        if run.stage is Stage.ALIGNMENT:
            original_save(trainer, model, tokenizer, run)

    figures = {}
    start = time.perf_counter()
    with mock.patch.object(DPATrainer, "__init__", init_with_probe), \
            mock.patch.object(train_module, "save_final", save_stage1_only), peak_memory(ctx, figures):
        trainer = train_module.train(attn_implementation=ctx.attn, argv=argv)
    figures["seconds"] = round(time.perf_counter() - start, 2)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    figures["loss"] = losses[0] if losses else None
    figures["steps"] = trainer.state.global_step
    figures["gradient_checkpointing"] = bool(getattr(trainer.model, "is_gradient_checkpointing", False)
                                             or trainer.args.gradient_checkpointing)
    figures["parts"] = probe.parts
    figures["trainable_without_grad"] = probe.trainable_without_grad
    figures["lora_a_without_grad"] = probe.lora_a_without_grad
    figures.update(probe.verdict())
    figures["quantized_4bit_params"] = sum(1 for p in trainer.model.parameters() if type(p).__name__ == "Params4bit")
    del trainer
    release(ctx)
    figures["passed"] = (figures["loss"] is not None and math.isfinite(figures["loss"]) and figures["steps"] == 1
                         and figures["exact"])
    return figures


def train(ctx: Context, form: str) -> dict:
    settings, figures = settings_for(ctx, form), {}
    built = models.manifest(ctx.workdir)
    for kind, entry in zip(("baseline", "DPA"), ENTRIES[form]):
        for stage in (1, 2):
            flags, drop = one_step_flags(ctx, form), ("--lr_scheduler_kwargs",)
            if kind == "DPA" and form == "llava":  # the registry's perceiver is a trained one; here the built one
                flags += ["--vision_tower", built["towers"]["llava"]]
            if stage == 2:
                projector = stage1_dir(get(entry), settings) / "mm_projector.bin"
                if projector.is_file():  # stage 2 starts from stage 1's projector, as the recipe does
                    flags += ["--pretrain_mm_mlp_adapter", str(projector)]
                else:
                    drop += ("--pretrain_mm_mlp_adapter",)
            command = stage_command(entry, stage, settings, flags, drop)
            key = f"{kind} stage {stage}"
            try:
                figures[key] = run_training(ctx, command.argv)
            except Exception as exc:  # one run's failure does not stop the others
                figures[key] = {"passed": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
                release(ctx)
            figures[key]["entry"] = entry
            expected = {"projector"} if stage == 1 else None
            if expected and figures[key].get("trained_parts") not in (None, sorted(expected)):
                figures[key]["passed"] = False
                figures[key]["error"] = f"stage 1 trained {figures[key]['trained_parts']}, expected {sorted(expected)}"
    return {"passed": all(r["passed"] for r in figures.values()), "figures": figures}


def qlora(ctx: Context) -> dict:
    settings = settings_for(ctx, "llava")
    built = models.manifest(ctx.workdir)
    flags = one_step_flags(ctx, "llava") + ["--vision_tower", built["towers"]["llava"]]
    command = stage_command(QLORA_ENTRY, 2, settings, flags, ("--lr_scheduler_kwargs", "--pretrain_mm_mlp_adapter"))
    run = run_training(ctx, command.argv)
    parts = run.get("parts") or {}
    perceiver_lora = sum(r["lora_trainable"] for p, r in parts.items() if p.startswith("perceiver"))
    target_lora = parts.get("language_model", {}).get("lora_trainable", 0)
    run.update(entry=QLORA_ENTRY, target=built["configs"]["qlora_target"], perceiver_lora_params=perceiver_lora,
               target_lora_params=target_lora)
    run["passed"] = run["passed"] and run["quantized_4bit_params"] > 0 and perceiver_lora > 0 and target_lora > 0
    return {"passed": run["passed"], "figures": run}


# ---- DeepSpeed ZeRO-3 --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(folder: str | Path) -> dict:
    from safetensors.torch import load_file

    found = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        found.update(load_file(str(path)))
    return found


def moved(saved: dict, sources: dict[str, dict]) -> dict:
    """Per part: the saved tensors that have a loaded counterpart (`sources`: key prefix in the checkpoint ->
    that folder's weights), how many of them changed, the largest change; compared in fp32, so a bf16 copy
    counts as changed only where the step moved it by at least its rounding."""
    parts = {}
    for key, value in saved.items():
        for prefix, source in sources.items():
            if key.startswith(prefix) and key[len(prefix):] in source:
                before = source[key[len(prefix):]]
                row = parts.setdefault(part_of(key).value, {"tensors": 0, "changed": 0, "max_abs_change": 0.0,
                                                            "other_shape": 0})
                row["tensors"] += 1
                if value.shape != before.shape:  # not the loaded tensor (it counts as not moved)
                    row["other_shape"] += 1
                    break
                change = (value.float() - before.float()).abs().max().item()
                row["changed"] += int(change > 0)
                row["max_abs_change"] = max(row["max_abs_change"], change)
                break
    return parts


def zero3(ctx: Context) -> dict:
    """One DPA stage-2 step under ZeRO-3 through the registry's own command: DeepSpeed's launcher (as its module,
    with this interpreter: the bundle's install puts no console scripts on PATH) starting
    `llava.train.train_mem --deepspeed zero3.json`. What a multi-GPU run takes and the in-process train check
    does not: the launcher and its process group, zero.Init's partitioned loading of the target and the
    perceiver (under GatheredParameters), DeepSpeed's optimizer wrapping torch's AdamW (the config names no
    optimizer: the trainer's goes in as the client optimizer), and the gathered 16-bit save."""
    figures = {"entry": ZERO3_ENTRY, "stage": 2, "processes": 1, "precision": ctx.size.deepspeed_precision,
               "scale": ctx.size.deepspeed_scale if ctx.size.deepspeed_scale is not None else ctx.size.scale}
    start = time.perf_counter()
    built = models.zero3_models(ctx.size, ctx.workdir, ctx.device)
    release(ctx)
    figures["build_seconds"] = round(time.perf_counter() - start, 2)
    figures["target"] = {k: built["configs"]["target"][k] for k in ("hidden_size", "num_hidden_layers")}
    runs = models.layout(ctx.workdir)["runs"]
    out = runs / "zero3"
    shutil.rmtree(out, ignore_errors=True)
    base = settings_for(ctx, "llava")
    settings = replace(base, paths={**base.paths, "qwen3_4b": built["target"]}, launcher="deepspeed",
                       deepspeed_config="zero3", gpus_per_node=1, master_addr="127.0.0.1", master_port=free_port(),
                       precision=ctx.size.deepspeed_precision)
    flags = one_step_flags(ctx, "llava") + ["--vision_tower", built["tower"], "--output_dir", str(out)]
    command = stage_command(ZERO3_ENTRY, 2, settings, flags, ("--lr_scheduler_kwargs", "--pretrain_mm_mlp_adapter"))
    if command.launcher[0] != "deepspeed":
        raise RuntimeError(f"the registry rendered {command.launcher[0]!r} for launcher deepspeed")
    argv = [sys.executable, "-m", "deepspeed.launcher.runner", *command.launcher[1:], *command.argv]
    figures["command"] = " ".join(argv)
    figures["zero_stage"] = json.loads(Path(settings.deepspeed_file()).read_text())["zero_optimization"]["stage"]
    finished = run_command(argv, ctx.command_timeout(), runs / "zero3.log",
                           env=dict(os.environ, PYTHONUNBUFFERED="1"))
    figures.update(seconds=finished.seconds, exit_status=finished.returncode, timed_out=finished.timed_out)
    if finished.returncode != 0:
        figures["error"] = (f"killed at {finished.seconds:.0f} s, its share of the check's limit" if finished.timed_out
                            else f"exit status {finished.returncode}") + f"; its output ended:\n{finished.output}"
        return {"passed": False, "figures": figures}
    print(finished.output, flush=True)
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    runtime = [h["train_runtime"] for h in state["log_history"] if "train_runtime" in h]
    record = json.loads((out / "run_config.json").read_text())
    figures.update(loss=losses[0] if losses else None, steps=state["global_step"],
                   train_runtime_s=runtime[0] if runtime else None,
                   deepspeed_version=record["versions"].get("deepspeed"),
                   # the launcher's rank argument and the config reached the training process
                   launched_by_deepspeed=any(a.startswith("--local_rank") for a in record["argv"]),
                   deepspeed_config=record["argv"][record["argv"].index("--deepspeed") + 1]
                   if "--deepspeed" in record["argv"] else None)
    parts = moved(weights(out), {"model.vision_tower.perceiver.": weights(built["tower"]), "": weights(built["target"])})
    figures["parts"] = parts
    figures["unmoved_parts"] = [p for p in ZERO3_MOVED_PARTS if not parts.get(p, {}).get("changed")]
    figures["passed"] = (figures["loss"] is not None and math.isfinite(figures["loss"]) and figures["steps"] == 1
                         and figures["launched_by_deepspeed"] and figures["deepspeed_config"] is not None
                         and figures["zero_stage"] == 3 and not figures["unmoved_parts"])
    shutil.rmtree(out, ignore_errors=True)
    return {"passed": figures["passed"], "figures": figures}


# ---- packing ----------------------------------------------------------------------------------------------
def padded_batch(ctx: Context, tokenizer, model, processor, n: int) -> dict:
    from llava.conversation import conv_templates


    built = models.manifest(ctx.workdir)
    tower = model.get_vision_tower()
    spec = DataSpec(conversation=conv_templates[model.config.conv_version], image_folder=built["images"],
                    image_aspect_ratio=model.config.image_aspect_ratio,
                    image_grid_pinpoints=getattr(model.config, "image_grid_pinpoints", None), image_processor=processor,
                    tokens_per_image=tower.num_patches,
                    tokens_for=getattr(tower, "tokens_for", None) if getattr(tower, "per_image_features", False) else None)
    dataset = LazySupervisedDataset(built["data"], tokenizer, spec)
    batch = DataCollatorForSupervisedDataset(tokenizer)([dataset[i] for i in range(n)])
    return {k: (on_model(v, model) if k == "images" else v.to(ctx.device) if torch.is_tensor(v) else v)
            for k, v in batch.items()}


def packing(ctx: Context, form: str) -> dict:
    pair, figures = models.pair(ctx.workdir, form), {}
    for name in ("DPA", "baseline"):
        tokenizer, model, processor = load(ctx, pair[name])
        batch = padded_batch(ctx, tokenizer, model, processor, ctx.size.packing_samples)
        model.requires_grad_(True)
        params = [p for p in model.parameters()]
        row = {"pads": bool((~batch["attention_mask"].bool()).any()), "rows": int(batch["input_ids"].shape[0])}
        with peak_memory(ctx, row):
            padded_loss = model(**batch, packed=False).loss
            padded_loss.backward()
            padded = [p.grad for p in params]
            model.zero_grad(set_to_none=True)
            packed_loss = model(**batch, packed=True).loss
            packed_loss.backward()
        dot = a2 = b2 = 0.0
        for p, g in zip(params, padded):
            if g is None or p.grad is None:
                continue
            a, b = g.float().flatten(), p.grad.float().flatten()
            dot, a2, b2 = dot + (a @ b).item(), a2 + (a @ a).item(), b2 + (b @ b).item()
        cosine = dot / math.sqrt(a2 * b2) if a2 and b2 else float("nan")
        rel = abs(packed_loss.item() - padded_loss.item()) / abs(padded_loss.item())
        row.update(padded_loss=padded_loss.item(), packed_loss=packed_loss.item(), loss_rel_diff=rel,
                   grad_cosine=cosine, passed=row["pads"] and rel <= PACKING_LOSS_REL and cosine >= PACKING_GRAD_COSINE)
        figures[name] = row
        del model, padded, params, batch
        release(ctx)
    figures["tolerance"] = {"loss_rel_diff": PACKING_LOSS_REL, "grad_cosine": PACKING_GRAD_COSINE}
    return {"passed": all(figures[n]["passed"] for n in ("DPA", "baseline")), "figures": figures}


# ---- the benches ------------------------------------------------------------------------------------------
def bench(ctx: Context, form: str) -> dict:
    pair, built = models.pair(ctx.workdir, form), models.manifest(ctx.workdir)
    configs = {k: built["configs"][k] for k in ("vit", "perceiver_lm", "target")}
    args = SimpleNamespace(dtype=ctx.size.dtype, text_tokens=ctx.size.text_tokens, model_base=None, seed=0,
                           image_size=ctx.size.image_size, preset="qwen3-4b", perceiver=form, scale=ctx.size.scale,
                           **ctx.size.bench)
    report = bench_pair({"DPA": pair["DPA"], "baseline": pair["baseline"]}, configs, args, ctx.device)
    rows = report["cost_ratio_dpa_over_baseline"]
    report["paper"] = {**PAPER, "as_time_ratio": {"prefill": 1 / PAPER["inference_throughput"],
                                                  "decode": 1 / PAPER["inference_throughput"],
                                                  "train_stage2": PAPER["training_cost"]}}
    passed = all(r["measured"] > 0 and math.isfinite(r["measured"]) for r in rows.values())
    return {"passed": passed, "figures": report}


def bench_packing(ctx: Context) -> dict:
    import json
    import tempfile


    with tempfile.TemporaryDirectory(prefix="gpu-check-bench-packing-", dir=ctx.workdir) as tmp:
        out = Path(tmp) / "bench_packing.json"
        args = SimpleNamespace(seed=0, verbose=False, output=str(out), **ctx.size.bench_packing)
        run(args)
        report = json.loads(out.read_text())
    return {"passed": report["packing_speedup"] > 0, "figures": report}
