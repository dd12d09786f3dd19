"""run_config.json: written at start (atomically) and into every checkpoint: every argument, the stage, the argv,
the versions and each patch's state. A resume compares the checkpoint's copy with the new run."""
from __future__ import annotations

import json
import os
import platform
import warnings
from importlib import metadata

from llava_dpa import patching
from llava_dpa.training.errors import RunConfigError
from llava_dpa.training.run_config import RUN_CONFIG_NAME, RunConfig


# ---- run_config.json: written at start, compared on resume --------------------------------------------
def versions() -> dict:
    def version_of(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), **{name: version_of(name) for name in (
        "torch", "transformers", "peft", "deepspeed", "accelerate", "bitsandbytes", "llava-torch", "llava-dpa")}}


def patch_state() -> dict:
    return {name: state for name, state, _ in patching.report()}


def run_record(run: RunConfig) -> dict:
    return {**run.to_json(), "versions": versions(), "patches": patch_state()}


def write_json_atomically(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    staging = f"{path}.tmp"
    with open(staging, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(staging, path)


def write_run_config(run: RunConfig, folder: str | None = None) -> str:
    path = os.path.join(folder or run.training.output_dir, RUN_CONFIG_NAME)
    write_json_atomically(path, run_record(run))
    return path


# Settings a resumed run may change: where things are, how they are batched and logged. Everything else
# changes the model or the data and must match the checkpoint's.
MAY_CHANGE_ON_RESUME = {
    "model": {"model_name_or_path", "vision_tower", "pretrain_mm_mlp_adapter", "tower_attn_implementation"},
    "data": {"data_path", "image_folder", "lazy_preprocess", "strict_data"},
    "training": {"output_dir", "logging_dir", "cache_dir", "deepspeed", "run_name", "per_device_train_batch_size",
                 "per_device_eval_batch_size", "gradient_accumulation_steps", "auto_find_batch_size",
                 "gradient_checkpointing", "gradient_checkpointing_kwargs", "overwrite_output_dir", "local_rank",
                 "report_to", "disable_tqdm", "use_cpu", "no_cuda", "tf32", "resume_from_checkpoint",
                 "mir_probe_images", "mir_probe_image_folder", "mir_probe_texts", "mir_probe_count",
                 "ddp_backend", "ddp_timeout", "ddp_find_unused_parameters", "torch_compile", "hub_token",
                 "push_to_hub", "hub_model_id", "include_num_input_tokens_seen", "evaluation_strategy"},
}
_MAY_CHANGE_PREFIXES = ("logging_", "save_", "dataloader_", "eval_", "hub_", "push_to_hub", "torch_compile",
                        "ddp_", "fsdp", "_n_gpu", "deepspeed")


def resume_differences(saved: dict, current: dict) -> list[str]:
    """'--flag: saved -> now' for every model or data setting that differs."""
    diffs = []
    if saved.get("stage") != current.get("stage"):
        diffs.append(f"stage: {saved.get('stage')} -> {current.get('stage')}")
    for group, allowed in MAY_CHANGE_ON_RESUME.items():
        old, new = saved["arguments"].get(group, {}), current["arguments"].get(group, {})
        for key in sorted(set(old) & set(new)):  # a key of another transformers version is not a difference
            if key in allowed or key.startswith(_MAY_CHANGE_PREFIXES):
                continue
            if old[key] != new[key]:
                diffs.append(f"--{key}: {old[key]!r} -> {new[key]!r}")
    return diffs


def check_resume(run: RunConfig, checkpoint: str) -> None:
    path = os.path.join(checkpoint, RUN_CONFIG_NAME)
    if not os.path.isfile(path):
        warnings.warn(f"{checkpoint} has no {RUN_CONFIG_NAME} (written by an older llava-dpa); resuming unchecked")
        return
    with open(path) as f:
        saved = json.load(f)
    diffs = resume_differences(saved, run.to_json())
    if diffs:
        raise RunConfigError(
            f"resuming from {checkpoint}, but settings that change the model or data differ from that run:\n  "
            + "\n  ".join(diffs) + "\nResume with the same settings, or train into a new --output_dir.")
