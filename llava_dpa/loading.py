"""`load_pretrained_model`: what llava.model.builder.load_pretrained_model delegates to.

A folder is a LLaVA checkpoint when its config has `mm_vision_tower`, whatever it is called; the class
comes from `config.model_type`. Three layouts are read:
- full: weights of everything (the tower included) in the folder;
- LoRA: adapter + non_lora_trainables.bin, with `model_base` the base LLM;
- projector-only (stage 1): mm_projector.bin, with `model_base` the base LLM.
The tower's weights come from the checkpoint when it has them; otherwise from the tower folder named in
the config, and if that is gone too the error says so.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

from llava_dpa.data.tokenization import load_tokenizer
from llava_dpa.language_models import target_class_for
from llava_dpa.language_models.base import hook_hidden_states_from_the_top
from llava_dpa.towers.weights import checkpoint_keys

TOWER_KEY = ".vision_tower."


class CheckpointError(ValueError):
    pass


#: the dtypes a user may name on a command line (--dtype), by name
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str) -> str:
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        warnings.warn("CUDA is not available; loading the model on the CPU in float32")
        return "cpu"
    return device


def _config_dict(model_path: str) -> dict:
    path = Path(model_path) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{model_path}: no config.json; is this a model folder?")
    return json.loads(path.read_text())


def _read_non_lora(model_path: str) -> dict:
    path = os.path.join(model_path, "non_lora_trainables.bin")
    if not os.path.isfile(path):
        raise CheckpointError(f"{model_path}: a LoRA checkpoint needs non_lora_trainables.bin next to the adapter")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {(k[len("base_model.model."):] if k.startswith("base_model.model.") else k): v for k, v in state.items()}
    # A module that also has LoRA (e.g. the perceiver's layers under --lora_parts) keeps its own weight under
    # PEFT's `base_layer`; the unwrapped model names it without. The adapter is merged on top afterwards.
    return {k.replace(".base_layer.", "."): v for k, v in state.items()}


def _tokenizer(model_path: str, model_base: str | None):
    source = model_path if (Path(model_path) / "tokenizer_config.json").is_file() else model_base
    return load_tokenizer(source)


def load_pretrained_model(model_path, model_base, model_name, load_8bit=False, load_4bit=False, device_map="auto",
                          device="cuda", use_flash_attn=False, **kwargs):
    kwargs.pop("multimodal", None)  # lmms-eval passes it to LLaVA-NeXT's builder
    device = resolve_device(device)
    if device != "cuda" or not torch.cuda.is_available():
        device_map = {"": device}
    load_kwargs = {"device_map": device_map}
    attn = kwargs.pop("attn_implementation", None) or ("flash_attention_2" if use_flash_attn else "sdpa")
    load_kwargs["attn_implementation"] = attn
    dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
    # the projector and the tower stay unquantized (as QLoRA training keeps them: training/model_setup.py); the
    # tower runs at the projector's dtype below
    # (4.57 matches these as substrings; 5.x from the start of the module name or as a regex: hence both forms)
    unquantized = ["mm_projector", "vision_tower", "lm_head", r".*\.mm_projector", r".*\.vision_tower"]
    if load_8bit:
        load_kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=unquantized)
    elif load_4bit:
        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16 if device != "cpu" else torch.float32,
            bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4", llm_int8_skip_modules=unquantized)
    # quantized too: the unquantized parts (projector, tower, norms) at this dtype, as LLaVA's builder does
    load_kwargs["dtype"] = dtype or (torch.float32 if device == "cpu" else torch.float16)
    load_kwargs.update(kwargs)

    cfg = _config_dict(model_path)
    if "mm_vision_tower" not in cfg:
        return _load_language_model(model_path, model_base, load_kwargs)

    cls = target_class_for(cfg["model_type"])
    is_lora = os.path.isfile(os.path.join(model_path, "adapter_config.json"))
    has_projector_only = os.path.isfile(os.path.join(model_path, "mm_projector.bin")) and not checkpoint_keys(model_path)
    if (is_lora or has_projector_only) and model_base is None:  # before the tokenizer, which may be the base's
        kind = "a LoRA" if is_lora else "a projector-only (stage-1)"
        raise CheckpointError(f"{model_path} is {kind} checkpoint: pass model_base (--model-base) = the base LLM folder")
    tokenizer = _tokenizer(model_path, model_base)
    tower_in_checkpoint = False
    if is_lora or has_projector_only:
        config = AutoConfig.from_pretrained(model_path)
        # A QLoRA run saves its 4-bit quantization_config; the LoRA merge needs unquantized base weights.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = cls.from_pretrained(model_base, config=config, low_cpu_mem_usage=True, **load_kwargs)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
        if is_lora:
            extra = _read_non_lora(model_path)
            tower_in_checkpoint = any(TOWER_KEY in k for k in extra)
            _load_partial(model, extra, model_path)
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, model_path).merge_and_unload()
        else:
            projector = torch.load(os.path.join(model_path, "mm_projector.bin"), map_location="cpu", weights_only=True)
            _load_partial(model, projector, model_path)
    else:
        tower_in_checkpoint = any(TOWER_KEY in k for k in checkpoint_keys(model_path))
        model = cls.from_pretrained(model_path, low_cpu_mem_usage=True, **load_kwargs)

    _add_llava_tokens(model, tokenizer)
    tower = model.get_vision_tower()
    tower.attach_tokenizers(tokenizer, perceiver_tokenizer_dir=os.path.join(model_path, "perceiver_tokenizer"))
    if tower_in_checkpoint:
        tower.mark_loaded()
    elif not tower.is_loaded:
        if not os.path.exists(tower.vision_tower_name) and os.path.sep in tower.vision_tower_name:
            raise CheckpointError(
                f"{model_path} holds no vision-tower weights and the tower folder {tower.vision_tower_name} it names "
                f"does not exist; restore that folder or load a checkpoint saved with its tower")
        tower.load_model(device_map=device_map)
    # The tower runs at the projector's dtype (never quantized), on the model's device.
    tower.to(device=model.device, dtype=next(model.get_model().mm_projector.parameters()).dtype)
    hook_hidden_states_from_the_top(model)
    model.eval()
    context_len = getattr(model.config, "max_sequence_length", None) or getattr(
        model.config, "tokenizer_model_max_length", None) or 2048
    return tokenizer, model, tower.image_processor, context_len


def _load_partial(model, state: dict, source: str) -> None:
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"{source}: weights {result.unexpected_keys[:3]} do not belong to this model")


def _add_llava_tokens(model, tokenizer) -> None:
    from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN

    if getattr(model.config, "mm_use_im_patch_token", True):
        tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
    if getattr(model.config, "mm_use_im_start_end", False):
        tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))


def _load_language_model(model_path, model_base, load_kwargs):
    if model_base is not None:
        from peft import PeftModel

        tokenizer = load_tokenizer(model_base)
        model = AutoModelForCausalLM.from_pretrained(model_base, low_cpu_mem_usage=True, **load_kwargs)
        model = PeftModel.from_pretrained(model, model_path).merge_and_unload()
    else:
        tokenizer = load_tokenizer(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, low_cpu_mem_usage=True, **load_kwargs)
    context_len = getattr(model.config, "max_sequence_length", 2048)
    return tokenizer, model, None, context_len
