"""Read a checkpoint folder's tensors safely (safetensors, or torch.load with weights_only=True)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def read_config_dict(name_or_path: str) -> dict:
    """config.json of a local folder or a hub id (hub access only where the cluster has it)."""
    from transformers import PretrainedConfig

    config, _ = PretrainedConfig.get_config_dict(name_or_path)
    return config


def read_json_if_exists(folder: str, filename: str) -> dict | None:
    path = Path(folder) / filename
    if path.is_file():
        return json.loads(path.read_text())
    if not os.path.isdir(folder):
        try:
            from transformers.utils import cached_file

            resolved = cached_file(folder, filename, _raise_exceptions_for_missing_entries=False)
            if resolved:
                return json.loads(Path(resolved).read_text())
        except Exception:
            return None
    return None


def _local_folder(name_or_path: str) -> Path:
    if os.path.isdir(name_or_path):
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors"]))


def weight_files(folder: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    return []


def checkpoint_keys(folder: str | Path) -> list[str]:
    """Tensor names in a checkpoint folder, read from its index or headers, without loading tensors."""
    folder = Path(folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            return list(json.loads(index.read_text())["weight_map"])
    keys = []
    for f in weight_files(folder):
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as handle:
                keys.extend(handle.keys())
        else:
            keys.extend(torch.load(f, map_location="meta", weights_only=True))
    return keys


def load_state_dict(name_or_path: str, filter_prefixes: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    folder = _local_folder(name_or_path)
    files = weight_files(folder)
    if not files:
        raise FileNotFoundError(f"no model.safetensors / pytorch_model.bin (or sharded index) in {folder}")
    state = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            part = load_file(str(f))
        else:
            part = torch.load(f, map_location="cpu", weights_only=True)
        if filter_prefixes:
            part = {k: v for k, v in part.items() if k.startswith(filter_prefixes)}
        state.update(part)
    return state


def select_submodule_state(state: dict, module: torch.nn.Module, prefixes: tuple[str, ...], source: str) -> dict:
    """Find the prefix under which `module`'s parameters are stored in `state` and strip it."""
    wanted = set(module.state_dict().keys())
    # A folder saved without the module's first level (a CLIP/SigLIP vision model saved by transformers 5,
    # which has no `vision_model` level) is read with it added.
    first = {k.split(".", 1)[0] for k in wanted}
    levels = ("", next(iter(first)) + ".") if len(first) == 1 else ("",)
    for prefix in prefixes:
        for level in levels:
            sub = {level + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if wanted and wanted.issubset(sub):
                return {k: v for k, v in sub.items() if k in wanted}
    sample = sorted(state)[:5]
    raise KeyError(f"{source}: could not find the tower's weights under any of the prefixes {list(prefixes)}; "
                   f"the checkpoint's first keys are {sample}")


def load_into(module: torch.nn.Module, state: dict, strict: bool = True):
    """module.load_state_dict, also under DeepSpeed ZeRO-3, where parameters are partitioned (empty) until
    gathered; rank 0 writes them and DeepSpeed re-partitions on exit."""
    partitioned = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        return module.load_state_dict(state, strict=strict)
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0):
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            return module.load_state_dict(state, strict=strict)
