"""Cluster settings for the recipes: where the models and data are, and how to launch.

Read, in this order (later wins): the defaults below, a YAML file (`--settings FILE`, or the file named by
`LLAVA_DPA_SETTINGS`), then `LLAVA_DPA_<KEY>` environment variables (e.g. `LLAVA_DPA_VIT=/ckpt/vit`,
`LLAVA_DPA_GPUS_PER_NODE=8`). Values are data: they are parsed as YAML scalars, never executed.
docs/recipes.md lists every key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

PATH_KEYS = {
    "vit": "the Qwen2.5-VL vision encoder folder (the controlled baselines' ViT)",
    "qwen3_0_6b": "Qwen3-0.6B (the perceiver LM)",
    "qwen3_4b": "Qwen3-4B", "qwen3_32b": "Qwen3-32B", "llama3_2_3b": "LLaMA-3.2-3B(-Instruct)",
    "stage1_data": "LLaVA-Pretrain blip_laion_cc_sbu_558k.json", "stage1_images": "its image folder",
    "stage2_data": "the 1M instruction samples (MAmmoTH-VL, LLaVA format)", "stage2_images": "their image folder",
    "official_perceiver": "the Qwen-VL-native perceiver of DPA-4B-init (llava-dpa import-official's perceiver/)",
    "checkpoints": "where every recipe writes its outputs",
}
LAUNCHERS = ("deepspeed", "torchrun", "python")
PRECISIONS = ("bf16", "fp16", "fp32")


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    paths: dict = field(default_factory=lambda: {k: f"/path/to/{k}" for k in PATH_KEYS} | {"checkpoints": "checkpoints"})
    launcher: str = "deepspeed"
    nodes: int = 1
    gpus_per_node: int = 8
    hostfile: str = ""                 # deepspeed: the hostfile of a multi-node run
    master_addr: str = ""              # the first node's address (deepspeed --master_addr, torchrun rendezvous)
    master_port: int = 29500
    node_rank: int = -1                # torchrun: this node's rank (-1: let the c10d rendezvous assign it)
    per_device_batch: int = 8          # Table 6 ("Batch Size 8" per device)
    deepspeed_config: str = "zero2"    # zero2 | zero3 | zero3_offload | a JSON file
    precision: str = "bf16"
    dataloader_workers: int = 4
    python: str = "python"

    def path(self, key: str) -> str:
        if key not in self.paths:
            raise SettingsError(f"no path '{key}' in the settings; set {env_name(key)} or '{key}:' in the YAML file")
        return str(self.paths[key])

    @property
    def checkpoints(self) -> Path:
        return Path(self.path("checkpoints"))

    def grad_accumulation(self, global_batch: int) -> int:
        per_step = self.nodes * self.gpus_per_node * self.per_device_batch
        return max(1, global_batch // per_step)

    def deepspeed_file(self) -> str:
        builtin = Path(__file__).parent / "deepspeed" / f"{self.deepspeed_config}.json"
        if builtin.is_file():
            return str(builtin)
        if Path(self.deepspeed_config).is_file():
            return self.deepspeed_config
        raise SettingsError(f"deepspeed_config {self.deepspeed_config!r}: neither zero2, zero3, zero3_offload nor a file")

    def validated(self) -> "Settings":
        if self.launcher not in LAUNCHERS:
            raise SettingsError(f"launcher {self.launcher!r}: use one of {', '.join(LAUNCHERS)}")
        if self.precision not in PRECISIONS:
            raise SettingsError(f"precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if self.nodes > 1 and self.launcher == "python":
            raise SettingsError(f"nodes: {self.nodes} needs launcher deepspeed or torchrun")
        if self.nodes > 1 and self.launcher == "torchrun" and not self.master_addr:
            raise SettingsError("a multi-node torchrun needs master_addr (the rendezvous host)")
        if self.nodes > 1 and self.launcher == "deepspeed" and not self.hostfile:
            raise SettingsError("a multi-node deepspeed run needs hostfile (one 'host slots=N' line per node)")
        for name in ("nodes", "gpus_per_node", "per_device_batch"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise SettingsError(f"{name} must be a whole number >= 1 (got {getattr(self, name)!r})")
        return self


def env_name(key: str) -> str:
    return f"LLAVA_DPA_{key.upper()}"


def _apply(settings: Settings, values: dict, where: str) -> Settings:
    known = {f.name for f in fields(Settings)} - {"paths"}
    paths = dict(settings.paths)
    updates = {}
    for key, value in values.items():
        if key in PATH_KEYS or key == "paths":
            if key == "paths":
                paths.update({k: str(v) for k, v in (value or {}).items()})
            else:
                paths[key] = str(value)
        elif key in known:
            updates[key] = value
        else:
            raise SettingsError(f"{where}: unknown setting {key!r}; known: {', '.join(sorted(known | set(PATH_KEYS)))}")
    return replace(settings, paths=paths, **updates)


def load_settings(file: str | None = None, environ: dict | None = None, base: Settings | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    settings = base or Settings()
    file = file or environ.get("LLAVA_DPA_SETTINGS")
    if file:
        if not Path(file).is_file():
            raise SettingsError(f"settings file {file} does not exist")
        loaded = yaml.safe_load(Path(file).read_text()) or {}
        if not isinstance(loaded, dict):
            raise SettingsError(f"{file}: expected 'key: value' lines")
        settings = _apply(settings, loaded, file)
    keys = set(PATH_KEYS) | {f.name for f in fields(Settings)} - {"paths"}
    from_env = {k: yaml.safe_load(environ[env_name(k)]) for k in keys if env_name(k) in environ}
    from_env = {k: (str(v) if k in PATH_KEYS or k in ("launcher", "precision", "deepspeed_config", "python", "hostfile",
                                                      "master_addr") else v)
                for k, v in from_env.items()}
    return _apply(settings, from_env, "environment").validated()
