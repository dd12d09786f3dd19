"""The target LLM inside a LLaVA checkpoint, as a plain language model.

Two users: text benchmarks run by harnesses that only know plain LMs (MMLU-Redux through
lm-evaluation-harness, `llava-dpa export-llm`), and the weight-update analysis, which compares the target
LLM of a VLM with its base LLM parameter by parameter.

Name mapping: LLaVA's classes keep the base family's module names (`model.layers.N...`, `model.norm`,
`model.embed_tokens`, `lm_head`) and add `model.mm_projector.*`, `model.vision_tower.*` and
`model.image_newline`, so the target LLM is the VLM's state dict without those. A LoRA checkpoint is merged
by the loader before anything here sees it.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from llava_dpa.loading import load_pretrained_model

MULTIMODAL_PREFIXES = ("model.mm_projector.", "model.vision_tower.", "model.image_newline")


def is_multimodal_key(name: str) -> bool:
    return name.startswith(MULTIMODAL_PREFIXES)


def base_model_type(config) -> str:
    model_type = config.model_type
    return model_type[len("llava_"):] if model_type.startswith("llava_") else model_type


def language_state_dict(model) -> dict[str, torch.Tensor]:
    """The target LLM's parameters under the base LLM's names (tied embeddings appear under both names,
    as in the base model's own state dict)."""
    state = model.state_dict()
    return {k: v for k, v in state.items() if not is_multimodal_key(k)}


def language_config(model):
    """The base family's config with the VLM's language settings (no mm_* keys)."""
    from transformers import AutoConfig

    values = {k: v for k, v in model.config.to_dict().items()
              if not (k.startswith("mm_") or k in {"model_type", "architectures", "auto_map"})}
    config = AutoConfig.for_model(base_model_type(model.config), **values)
    return config


def export_language_model(checkpoint: str, output: str, model_base: str | None = None,
                          dtype: torch.dtype | None = None) -> Path:
    """Write the target LLM of a checkpoint (full, LoRA or QLoRA: merged) as a plain HF model folder, at `dtype`
    (default: the loader's float32 on CPU)."""
    tokenizer, model, _, _ = load_pretrained_model(checkpoint, model_base, None, device="cpu", dtype=dtype)
    if not hasattr(model, "get_vision_tower"):
        raise ValueError(f"{checkpoint} is already a plain language model; nothing to export")
    return write_language_model(model, tokenizer, output, source=checkpoint, model_base=model_base)


def write_language_model(model, tokenizer, output: str, *, source: str | None = None,
                         model_base: str | None = None) -> Path:
    """Write a loaded LLaVA model's target LLM as a plain HF model folder, at the model's dtype, with its tokenizer
    and the checkpoint's generation config: an engine that reads the folder (vLLM stops on the tokenizer's eos and
    on generation_config.json's eos ids) then stops where transformers' generate on the checkpoint stops."""
    from transformers import AutoModelForCausalLM

    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder")
    config = language_config(model)
    config.architectures = None
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(language_state_dict(model), strict=True, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    # the checkpoint's own generation config (e.g. Qwen3's eos [<|im_end|>, <|endoftext|>]), not the one
    # from_config derives from config.json (its single eos_token_id)
    plain.generation_config = copy.deepcopy(model.generation_config)
    tmp = out.with_name(out.name + ".tmp")
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "llava_dpa_export.json").write_text(json.dumps(
        {"source": str(Path(source).resolve()) if source else None, "model_base": model_base,
         "dtype": str(model.dtype).replace("torch.", "")}, indent=1))
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out
