"""The check's models and data, with random weights from the configs of `sizes` (no downloads):
- `build`: the component folders (the ViT, the perceiver LM, the target, the 32B-wide QLoRA target), the two
  perceivers (the paper's LLaVA-format VLM, and the release's Qwen-VL-native one) and the synthetic data set;
- `assemble_form`: a form's DPA and baseline checkpoints (`benchmarks/models.assemble_pair`, as training
  assembles them), written only while that form's checks run, since at the full size each pair takes ~19 GB;
- `zero3_models`: the target and the LLaVA-format perceiver the ZeRO-3 check trains (`Size.deepspeed_scale`).
Everything is written under one work folder; `layout` names its paths."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from llava_dpa.benchmarks.models import _save_lm, assemble_pair, make_perceiver_of, write_components
from llava_dpa.benchmarks.packing import synthetic_set
from llava_dpa.gpu_check.sizes import FORMS, Size, configs

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def layout(workdir: str | Path) -> dict:
    root = Path(workdir)
    return {"components": root / "components", "qlora_target": root / "components" / "qlora_target",
            "perceiver": {form: root / "components" / f"perceiver-{form}" for form in FORMS},
            "pair": {form: root / f"pair-{form}" for form in FORMS}, "data": root / "data",
            "runs": root / "runs", "zero3": root / "zero3", "manifest": root / "models.json"}


def build(size: Size, workdir: str | Path, device: str) -> dict:
    """Write every component, both perceivers and the data; returns (and writes) the manifest."""
    from transformers import AutoTokenizer

    paths = layout(workdir)
    found = configs(size)
    dtype = DTYPES[size.dtype]
    components = write_components(found, paths["components"], size.image_size, dtype, seed=0, device=device)
    tokenizer = AutoTokenizer.from_pretrained(components["target"])
    _save_lm(found["qlora_target"], paths["qlora_target"], tokenizer, dtype, seed=3, device=device)
    towers = {form: make_perceiver_of(components, found, paths["perceiver"][form], form) for form in FORMS}
    data = synthetic_set(paths["data"], size.train_samples, size.image_size, text_only=0.0, seed=0)
    manifest = {"size": size.name, "dtype": size.dtype, "configs": found,
                "components": {k: str(v) for k, v in components.items()}, "qlora_target": str(paths["qlora_target"]),
                "towers": towers, "data": str(data), "images": str(paths["data"] / "images")}
    paths["manifest"].write_text(json.dumps(manifest, indent=1))
    return manifest


def manifest(workdir: str | Path) -> dict:
    path = layout(workdir)["manifest"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the models were not built (the build check failed or did not run)")
    return json.loads(path.read_text())


def assemble_form(workdir: str | Path, form: str) -> dict:
    """The form's DPA and baseline checkpoints: {"DPA", "baseline", "tower"}."""

    built = manifest(workdir)
    folder = layout(workdir)["pair"][form]
    shutil.rmtree(folder, ignore_errors=True)
    pair = assemble_pair(built["components"], built["configs"], folder, DTYPES[built["dtype"]], seed=0,
                         perceiver=form, tower=built["towers"][form])
    (folder / "pair.json").write_text(json.dumps(pair))
    return pair


def pair(workdir: str | Path, form: str) -> dict:
    path = layout(workdir)["pair"][form] / "pair.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the {form} pair was not assembled (its assemble check failed or did not run)")
    return json.loads(path.read_text())


def remove_form(workdir: str | Path, form: str) -> None:
    shutil.rmtree(layout(workdir)["pair"][form], ignore_errors=True)


def zero3_models(size: Size, workdir: str | Path, device: str) -> dict:
    """{"target", "tower" (the --vision_tower value), "configs"}: the built components, or at
    `size.deepspeed_scale` of the paper's new ones (a target and the paper's LLaVA-format perceiver)."""

    built = manifest(workdir)
    if size.deepspeed_scale is None:
        return {"target": built["components"]["target"], "tower": built["towers"]["llava"],
                "configs": {k: built["configs"][k] for k in ("vit", "perceiver_lm", "target")}}
    root = layout(workdir)["zero3"]
    shutil.rmtree(root, ignore_errors=True)
    found = {k: v for k, v in configs(size, size.deepspeed_scale).items() if k != "qlora_target"}
    components = write_components(found, root / "components", size.image_size, DTYPES[size.dtype], seed=0,
                                  device=device)
    tower = make_perceiver_of(components, found, root / "perceiver", "llava")
    return {"target": str(components["target"]), "tower": tower, "configs": found}
