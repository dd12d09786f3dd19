"""`llava-dpa export-hf CKPT OUT`: a llava-dpa checkpoint as a transformers-native model folder.

The checkpoint is loaded by the project's own loader (LoRA merged, the tower's weights from the checkpoint),
and written as: config.json (`LlavaDpaConfig`, auto_map to the remote code), model.safetensors, the remote
code (`remote/*.py`, torch and transformers only), the target's tokenizer with the checkpoint's chat template,
the perceiver's tokenizer where it reads text (perceiver_tokenizer/), processor_config.json,
generation_config.json and a model card. Everything is written into a temporary folder beside OUT and renamed
into place when complete.

What it covers: the ViT baselines (CLIP, SigLIP, SigLIP2, Qwen2.5-VL at fixed tiles or native resolution,
the official baseline's merger projector), DPA with the LLaVA-format perceiver (any of those ViTs at tiles, its
instruction context and select layer included) and DPA with the Qwen-VL-native perceiver with the official Qwen3
M-RoPE LM (imported releases included); Qwen3 and LLaMA targets (qwen_3 / llama_3 templates); every projector
LLaVA and llava-dpa build. Refused from the checkpoint's config, before the model loads, naming why: anyres tiles
and `pad` images, image start/end tokens, templates without a chat template here, Qwen2.5-VL / Qwen3-VL stock
perceiver LMs. tests/test_export_hf.py runs every kind on both transformers lines against the LLaVA path.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from llava_dpa.export.card import render_card
from llava_dpa.export.remote.configuration_llava_dpa import LlavaDpaConfig
from llava_dpa.export.remote.modeling_llava_dpa import LlavaDpaForConditionalGeneration
from llava_dpa.loading import load_pretrained_model
from llava_dpa.perceiver.instruction import turn_end_ids
from llava_dpa.perceiver.qwen_vl import SPEC_TYPE as QWEN_VL_SPEC
from llava_dpa.perceiver.qwen_vl_tower import QwenVLPerceiverTower
from llava_dpa.perceiver.tower import PerceiverTower
from llava_dpa.towers.clip import CLIPTower
from llava_dpa.towers.qwen2_5_vl import Qwen2_5_VLTower
from llava_dpa.towers.siglip import SigLIPTower
from llava_dpa.towers.siglip2 import SigLIP2Tower

REMOTE_DIR = Path(__file__).resolve().parent / "remote"
REMOTE_FILES = ("configuration_llava_dpa.py", "modeling_llava_dpa.py", "processing_llava_dpa.py")
IMAGE_TOKEN = "<image>"
AUTO_MAP = {"AutoConfig": "configuration_llava_dpa.LlavaDpaConfig",
            "AutoModelForImageTextToText": "modeling_llava_dpa.LlavaDpaForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_llava_dpa.LlavaDpaForConditionalGeneration"}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_llava_dpa.LlavaDpaProcessor"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VIT_KINDS = {CLIPTower: "clip", SigLIPTower: "siglip", SigLIP2Tower: "siglip2", Qwen2_5_VLTower: "qwen2_5_vl"}
#: LLaVA keys of the target's config that are not the language model's
_LLAVA_KEYS = ("image_aspect_ratio", "image_grid_pinpoints", "tokenizer_model_max_length", "tokenizer_padding_side",
               "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "use_mm_proj", "conv_version", "dpa_select_layer",
               "perceiver_", "auto_map", "architectures", "_name_or_path", "transformers_version", "quantization_config")

# ---- chat templates: the same text as llava_dpa.templates renders, with <image> where each image goes ----------
_CONTENT = (
    "{%- macro content(m) -%}{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}"
    "{%- for part in m['content'] -%}{%- if part['type'] == 'image' -%}{{ '<image>\\n' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}{%- endmacro -%}")
QWEN3_TEMPLATE = _CONTENT + (
    "{%- set ns = namespace(last_user=-1, system=default_system) -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- if m['role'] == 'system' -%}{%- set ns.system = content(m) -%}{%- endif -%}{%- endfor -%}"
    "{%- if ns.system -%}{{ '<|im_start|>system\\n' + ns.system + '<|im_end|>\\n' }}{%- endif -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'assistant' -%}"
    "{%- if loop.index0 > ns.last_user -%}"
    "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + content(m).lstrip('\\n') + '<|im_end|>\\n' }}"
    "{%- else -%}{{ '<|im_start|>assistant\\n' + content(m) + '<|im_end|>\\n' }}{%- endif -%}"
    "{%- elif m['role'] != 'system' -%}{{ '<|im_start|>' + m['role'] + '\\n' + content(m) + '<|im_end|>\\n' }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}{%- endif -%}")
LLAMA3_TEMPLATE = _CONTENT + (
    "{%- set ns = namespace(system=default_system) -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'system' -%}{%- set ns.system = content(m) -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{ '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023\\n"
    "Today Date: 26 Jul 2024\\n\\n' + ns.system.strip() + '<|eot_id|>' }}"
    "{%- for m in messages -%}{%- if m['role'] != 'system' -%}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + content(m).strip() + '<|eot_id|>' }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}")
TEMPLATES = {"qwen_3": QWEN3_TEMPLATE, "llama_3": LLAMA3_TEMPLATE}


class ExportError(ValueError):
    pass


def chat_template(version: str, system: str = "") -> str:
    if version not in TEMPLATES:
        raise ExportError(f"the checkpoint's conversation template {version!r} has no chat template for export; "
                          f"export-hf writes {sorted(TEMPLATES)} (train with --version qwen_3 or llama_3)")
    return "{%- set default_system = " + json.dumps(system) + " -%}" + TEMPLATES[version]


# ---- the pieces ---------------------------------------------------------------------------------------------------

def projector_layers(module: nn.Module, where: str) -> tuple[list[dict], bool]:
    """A LLaVA projector as layer specs; also whether it is a bare nn.Linear (its keys gain the index 0)."""
    if isinstance(module, nn.Linear):
        return [_linear(module)], True
    if not isinstance(module, nn.Sequential):
        if not list(module.parameters()):  # LLaVA's IdentityMap
            return [{"type": "identity"}], False
        raise ExportError(f"{where}: projector {type(module).__name__} cannot be exported")
    layers = []
    for child in module:
        if isinstance(child, nn.Linear):
            layers.append(_linear(child))
        elif isinstance(child, nn.GELU) and child.approximate == "none":
            layers.append({"type": "gelu"})
        elif isinstance(child, nn.ReLU):
            layers.append({"type": "relu"})
        elif isinstance(child, nn.Identity):
            layers.append({"type": "identity"})
        else:
            raise ExportError(f"{where}: projector layer {child!r} cannot be exported")
    return layers, False


def _linear(layer: nn.Linear) -> dict:
    return {"type": "linear", "in": layer.in_features, "out": layer.out_features, "bias": layer.bias is not None}


def _plain(config_dict: dict) -> dict:
    return {k: v for k, v in config_dict.items() if k not in ("transformers_version", "_name_or_path", "architectures")}


def vit_spec(tower) -> tuple[dict, dict]:
    """(the model's spec, the processor's image settings) of a ViT tower."""
    kind = next((k for cls, k in VIT_KINDS.items() if type(tower) is cls), None)
    if kind is None:
        raise ExportError(f"vision tower {type(tower).__name__} cannot be exported")
    config = tower.vision_tower.config.to_dict()
    spec = {"kind": kind, "config": _plain(config), "select_layer": tower.select_layer,
            "select_feature": tower.select_feature}
    if kind == "qwen2_5_vl":
        spec.update(native=bool(tower.native), merger_as_projector=bool(tower.merger_as_projector))
    if kind == "qwen2_5_vl" and tower.native:
        p = tower.image_processor
        image = {"mode": "native", "patch_size": p.patch_size, "merge_size": p.merge_size,
                 "temporal_patch_size": tower.vision_tower.config.temporal_patch_size, "min_pixels": p.min_pixels,
                 "max_pixels": p.max_pixels, "image_mean": p.image_mean, "image_std": p.image_std}
        return spec, image
    recorded = {k: v for k, v in tower.processor_dict.items() if k != "image_processor_type"}
    if kind == "qwen2_5_vl":
        side = int(recorded["tile_size"])
        kwargs = {"size": {"shortest_edge": side}, "crop_size": {"height": side, "width": side},
                  "image_mean": recorded["image_mean"], "image_std": recorded["image_std"], "resample": 3,
                  "do_center_crop": True}
    elif kind == "siglip2":
        side = int(recorded.get("tile_size", 256))
        kwargs = {"size": {"height": side, "width": side}, "image_mean": recorded.get("image_mean", [0.5] * 3),
                  "image_std": recorded.get("image_std", [0.5] * 3)}
    else:
        kwargs = recorded
    tokens = tower.num_patches + (1 if kind == "clip" and tower.select_feature == "cls_patch" else 0)
    # the class the tower constructs (towers/*.py), by its name on both lines (5.x's instance is `...Pil`)
    processor_class = "CLIPImageProcessor" if kind in ("clip", "qwen2_5_vl") else "SiglipImageProcessor"
    image = {"mode": "tiles", "processor_class": processor_class, "processor": kwargs,
             "tokens_per_image": tokens}
    return spec, image


def language_model_config(config, vocab_size: int) -> dict:
    values = config.to_dict()
    model_type = values["model_type"]
    values["model_type"] = model_type.removeprefix("llava_")
    values = {k: v for k, v in values.items()
              if not k.startswith("mm_") and not any(k == key or (key.endswith("_") and k.startswith(key))
                                                     for key in _LLAVA_KEYS)}
    values.update(vocab_size=vocab_size, tie_word_embeddings=False)
    return values


# ---- the exporter -------------------------------------------------------------------------------------------------

def _check_output(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not empty; choose a new output folder or remove it")


def _check_checkpoint(ckpt: Path, model_base: str | None) -> None:
    config = ckpt / "config.json"
    if not config.is_file():
        raise ExportError(f"{ckpt}: no config.json; pass a llava-dpa checkpoint folder")
    values = json.loads(config.read_text())
    if "mm_vision_tower" not in values:
        raise ExportError(f"{ckpt} is a language model, not a LLaVA checkpoint (its config has no mm_vision_tower); "
                          f"use `llava-dpa export-llm` for a plain LLM")
    lora = (ckpt / "adapter_config.json").is_file()
    projector_only = (ckpt / "mm_projector.bin").is_file() and not any(
        (ckpt / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                                             "pytorch_model.bin.index.json"))
    if (lora or projector_only) and model_base is None:
        kind = "a LoRA" if lora else "a projector-only (stage-1)"
        raise ExportError(f"{ckpt} is {kind} checkpoint: pass --model-base BASE_LLM (the LLM it was trained on)")
    if not (lora or projector_only) and not any((ckpt / n).is_file() for n in (
            "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise ExportError(f"{ckpt}: no weights (model.safetensors or pytorch_model.bin); is the checkpoint complete?")
    aspect = values.get("image_aspect_ratio", "square")
    if aspect in ("anyres", "pad") or str(aspect).startswith("anyres"):
        raise ExportError(f"{ckpt}: image_aspect_ratio {aspect!r} is not exported yet (anyres tiles / padded images); "
                          f"export-hf writes square tiles and native resolution")
    if values.get("mm_use_im_start_end"):
        raise ExportError(f"{ckpt}: image start/end tokens (mm_use_im_start_end) are not exported")
    # what the config already says cannot be exported is refused before the model loads
    chat_template(values.get("conv_version"))
    tower = values.get("mm_vision_tower_config")
    if isinstance(tower, dict) and tower.get("model_type") == QWEN_VL_SPEC:
        check_qwen_vl_text_model(tower, str(ckpt))


def check_qwen_vl_text_model(spec: dict, source: str) -> None:
    if spec.get("text_model") != "qwen3_mrope":
        raise ExportError(f"{source}: the Qwen-VL perceiver's LM {spec.get('text_model')!r} is not exported yet "
                          f"(export-hf writes the official perceiver's Qwen3 M-RoPE LM, as import-official and "
                          f"make-perceiver --native build it)")


def export_hf(ckpt, out, model_base: str | None = None, dtype: str = "float32", log=print) -> Path:
    """Export `ckpt` into the new folder `out`; returns `out`."""
    ckpt, out = Path(ckpt), Path(out)
    _check_output(out)
    _check_checkpoint(ckpt, model_base)
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r}: choose one of {sorted(DTYPES)}")
    tokenizer, model, _, _ = load_pretrained_model(str(ckpt), model_base, None, device="cpu", dtype=torch.float32)
    parts = describe(model, tokenizer, str(ckpt))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        write(staging, model, tokenizer, parts, DTYPES[dtype], source=str(ckpt))
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"exported {ckpt} ({parts['label']}) to {out}")
    return out


def describe(model, tokenizer, source: str) -> dict:
    """What the export holds: the model's vision spec and projector, the processor's settings, the key renames."""
    config = model.config
    tower = model.get_vision_tower()
    projector, bare = projector_layers(model.get_model().mm_projector, f"{source} (mm_projector)")
    renames = []  # (LLaVA prefix, exported prefix or None to drop)
    perceiver_tokenizer = None
    extra_tokens = 0
    version = getattr(config, "conv_version", None)
    if isinstance(tower, PerceiverTower):
        inner = tower.vit
        vit, image = vit_spec(inner)
        inner_projector, inner_bare = projector_layers(tower.perceiver.get_model().mm_projector,
                                                       f"{source} (the perceiver's projector)")
        text = language_model_config(tower.perceiver.config, tower.perceiver.get_input_embeddings().weight.shape[0])
        vision = {"kind": "llava_perceiver", "vit": vit, "projector": inner_projector, "text_config": text,
                  "prefix_ids": list(tower.prefix_ids), "select_layer": tower.select_layer}
        p = "model.vision_tower.perceiver."
        renames += [(p + "model.vision_tower.vision_tower.", "vision_tower.vit.encoder."),
                    (p + "model.mm_projector.", ("vision_tower.projector.", inner_bare)),
                    (p + "model.image_newline", None), (p + "lm_head.", None),
                    (p + "model.", "vision_tower.language_model.")]
        perceiver = {"kind": "llava_perceiver", "instruction_context": bool(tower.instruction_context),
                     "prefix_ids": list(tower.prefix_ids),
                     "turn_end_ids": sorted(turn_end_ids(tokenizer, tower.conv_version or version))}
        if tower.instruction_context:
            perceiver_tokenizer = tower.perceiver_tokenizer
        label = "DPA, LLaVA-format perceiver" + (" with its instruction context" if tower.instruction_context else "")
    elif isinstance(tower, QwenVLPerceiverTower):
        spec = tower.spec
        check_qwen_vl_text_model(spec, source)
        p = tower.image_processor
        image = {"mode": "native", "patch_size": p.patch_size, "merge_size": p.merge_size,
                 "temporal_patch_size": spec["vision_config"].get("temporal_patch_size", 2),
                 "min_pixels": p.min_pixels, "max_pixels": p.max_pixels, "image_mean": p.image_mean,
                 "image_std": p.image_std}
        vision = {"kind": "qwen_vl_perceiver", "spec": spec, "visual_positions_only": tower.visual_positions_only}
        renames += [("model.vision_tower.perceiver.visual.", "vision_tower.visual."),
                    ("model.vision_tower.perceiver.language_model.", "vision_tower.language_model.")]
        extra_tokens = 0 if tower.visual_positions_only else 2
        if tower.perceiver_tokenizer is None:
            raise ExportError(f"{source}: the Qwen-VL perceiver's tokenizer was not found (perceiver_tokenizer/ in the "
                              f"checkpoint); it re-encodes the text before each image")
        perceiver_tokenizer = tower.perceiver_tokenizer
        perceiver = {"kind": "qwen_vl_perceiver", "prefix_ids": list(tower.prefix_ids),
                     "turn_end_ids": sorted(turn_end_ids(tokenizer, tower.conv_version or version)),
                     "vision_start_id": spec["vision_start_token_id"], "image_pad_id": spec["image_token_id"],
                     "vision_end_id": spec["vision_end_token_id"],
                     "visual_positions_only": bool(tower.visual_positions_only),
                     "target_slot_ids": sorted(tower._slot_ids())}
        label = "DPA, Qwen-VL-native perceiver (the official release's form)"
    else:
        vision, image = vit_spec(tower)
        renames += [("model.vision_tower.vision_tower.", "vision_tower.encoder.")]
        perceiver = None
        label = f"baseline, {vision['kind']} ViT" + (" at native resolution" if vision.get("native") else "")
    renames += [("model.mm_projector.", ("mm_projector.", bare)), ("model.image_newline", None),
                ("lm_head.", "lm_head."), ("model.", "model.")]
    return {"vision": vision, "projector": projector, "image": image, "perceiver": perceiver, "renames": renames,
            "perceiver_tokenizer": perceiver_tokenizer, "extra_tokens": extra_tokens, "label": label,
            "version": version}


def renamed_state(model, renames) -> dict:
    state = {}
    for key, value in model.state_dict().items():
        for prefix, target in renames:
            if key.startswith(prefix):
                if target is None:
                    break
                new_prefix, bare = target if isinstance(target, tuple) else (target, False)
                rest = key[len(prefix):]
                state[new_prefix + ("0." + rest if bare else rest)] = value
                break
        else:
            raise ExportError(f"weight {key} has no place in the exported model")
    return state


def write(folder: Path, model, tokenizer, parts: dict, dtype: torch.dtype, source: str) -> None:
    from safetensors.torch import save_file

    tokenizer = _copy_tokenizer(tokenizer)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    version = parts["version"]
    # the template's default system prompt
    from llava.conversation import conv_templates

    system = conv_templates[version].system if version in conv_templates else ""
    tokenizer.chat_template = chat_template(version, system)
    vocab = model.get_input_embeddings().weight.shape[0]
    config = LlavaDpaConfig(text_config=language_model_config(model.config, vocab), vision=parts["vision"],
                            projector=parts["projector"], image_token_id=image_token_id, template=version)
    config.auto_map = dict(AUTO_MAP)
    config.architectures = ["LlavaDpaForConditionalGeneration"]
    config.torch_dtype = str(dtype).replace("torch.", "")
    config.llava_dpa_source = {"checkpoint": os.path.basename(os.path.normpath(source)), "kind": parts["label"]}

    state = renamed_state(model, parts["renames"])
    with torch.device("meta"):
        expected = LlavaDpaForConditionalGeneration(config).state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ExportError(f"{source}: the exported weights do not match the exported model (missing {missing[:4]}, "
                          f"unexpected {unexpected[:4]})")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ExportError(f"{source}: {key} has shape {tuple(value.shape)}, the exported model expects "
                              f"{tuple(expected[key].shape)}")
    tensors = {k: v.detach().to(dtype if v.is_floating_point() else v.dtype).contiguous().clone()
               for k, v in state.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)

    tokenizer.save_pretrained(folder)
    _pin_tokenizer_class(folder)
    if parts["perceiver_tokenizer"] is not None:
        sub = folder / "perceiver_tokenizer"
        parts["perceiver_tokenizer"].save_pretrained(sub)
        _pin_tokenizer_class(sub)
    settings = {"auto_map": dict(PROCESSOR_AUTO_MAP), "image_token": IMAGE_TOKEN, "image_token_id": image_token_id,
                "image": parts["image"], "extra_tokens_per_image": parts["extra_tokens"],
                "perceiver": parts["perceiver"], "template": version}
    (folder / "processor_config.json").write_text(json.dumps(settings, indent=1))
    for name in REMOTE_FILES:
        shutil.copyfile(REMOTE_DIR / name, folder / name)
    (folder / "README.md").write_text(render_card(parts["label"], version, config.torch_dtype,
                                                  os.path.basename(os.path.normpath(source))))


def _copy_tokenizer(tokenizer):
    """The loaded tokenizer is the caller's; adding the image token must not change it."""
    import copy

    return copy.deepcopy(tokenizer)


def _pin_tokenizer_class(folder: Path) -> None:
    """transformers 5 records a generic fast tokenizer as `TokenizersBackend`, which 4.57 cannot load: record the
    class both lines have (the tokenizer.json is the same)."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False))
