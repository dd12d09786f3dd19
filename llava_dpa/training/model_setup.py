"""Build the model a LLaVA training run trains: target class from config.model_type, quantization,
vision modules, per-stage freezing and LoRA."""
from __future__ import annotations

import importlib.util
import logging
import re
import warnings

import torch
import transformers

from llava_dpa.language_models import target_class_for

logger = logging.getLogger("llava_dpa.train")

PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|endoftext|>", "<pad>", "[PAD]")


def resolve_attn_implementation(requested: str | None) -> str:
    if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        warnings.warn("flash-attn is not installed; training with attn_implementation='sdpa' instead "
                      "(pip install llava-dpa[flash-attn] on a CUDA machine for flash-attention-2)")
        return "sdpa"
    return requested or "sdpa"


def compute_dtype_of(training_args) -> torch.dtype:
    return torch.float16 if training_args.fp16 else (torch.bfloat16 if training_args.bf16 else torch.float32)


def ensure_pad_token(tokenizer, model=None) -> None:
    """llava set pad = unk unconditionally; Qwen3 and Llama 3 have no unk, so pad became None."""
    if tokenizer.pad_token is not None:
        return
    if tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
        return
    vocab = tokenizer.get_vocab()
    for candidate in PAD_CANDIDATES:
        if candidate in vocab:
            tokenizer.pad_token = candidate
            return
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    if model is not None:
        model.resize_token_embeddings(len(tokenizer))
    logger.warning("the tokenizer had no pad/unk token; added <pad> and resized the embeddings")


def quantization_kwargs(training_args, compute_dtype) -> dict:
    if training_args.bits not in (4, 8):
        if training_args.bits != 16:
            raise ValueError(f"--bits {training_args.bits}: use 4 (QLoRA), 8 or 16")
        return {}
    from transformers import BitsAndBytesConfig

    # Only quantization_config: passing load_in_4bit as well is rejected by current transformers.
    return dict(device_map={"": training_args.device}, quantization_config=BitsAndBytesConfig(
        load_in_4bit=training_args.bits == 4, load_in_8bit=training_args.bits == 8,
        llm_int8_skip_modules=["mm_projector", "vision_tower", "lm_head"], llm_int8_threshold=6.0,
        llm_int8_has_fp16_weight=False, bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=training_args.double_quant, bnb_4bit_quant_type=training_args.quant_type))


def load_target(model_args, training_args, attn_implementation: str):
    compute_dtype = compute_dtype_of(training_args)
    config = transformers.AutoConfig.from_pretrained(model_args.model_name_or_path, cache_dir=training_args.cache_dir)
    cls = target_class_for(config.model_type) if model_args.vision_tower else transformers.AutoModelForCausalLM
    model = cls.from_pretrained(model_args.model_name_or_path, cache_dir=training_args.cache_dir,
                                attn_implementation=attn_implementation,
                                torch_dtype=(torch.bfloat16 if training_args.bf16 else None),
                                **quantization_kwargs(training_args, compute_dtype))
    model.config.use_cache = False
    if model_args.freeze_backbone:
        model.model.requires_grad_(False)
    if training_args.bits in (4, 8):
        from peft import prepare_model_for_kbit_training

        model.config.torch_dtype = torch.float32 if training_args.fp16 else compute_dtype
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=training_args.gradient_checkpointing)
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def find_all_linear_names(model) -> list[str]:
    """LoRA targets: the LM's linears, as full module names. llava used leaf names (q_proj, gate_proj),
    which PEFT matches anywhere, so LoRA also landed in towers that reuse those names (Qwen2.5-VL's MLP,
    a DPA perceiver's LM blocks)."""
    names = []
    for name, module in model.named_modules():
        if any(k in name for k in ("mm_projector", "vision_tower", "vision_resampler")) or name.endswith("lm_head"):
            continue
        if isinstance(module, torch.nn.Linear):  # bitsandbytes' 4/8-bit layers subclass nn.Linear
            names.append(name)
    return names


def set_stage_trainability(model, model_args, training_args) -> None:
    """Stage 1 (--tune_mm_mlp_adapter): only the alignment projector. Stage 2: LLM + projector, plus the
    tower when --unfreeze_mm_vision_tower (a DPA perceiver trains by default; --freeze_perceiver stops it)."""
    inner = model.get_model()
    tower = model.get_vision_tower()
    if model_args.tune_mm_mlp_adapter:
        model.requires_grad_(False)
    # The projector trains in both stages (get_peft_model froze it under LoRA).
    inner.mm_projector.requires_grad_(True)
    if training_args.freeze_mm_mlp_adapter:
        inner.mm_projector.requires_grad_(False)
    tower.requires_grad_(False)
    # A stage-1 auxiliary perceiver loss trains the perceiver too; otherwise it would reach no trainable weight.
    if not model_args.tune_mm_mlp_adapter or getattr(tower, "aux_loss_weight", 0.0):
        tower.set_trainable(model_args) if hasattr(tower, "set_trainable") else (
            tower.requires_grad_(bool(model_args.unfreeze_mm_vision_tower)))
    if hasattr(inner, "image_newline") and not model_args.tune_mm_mlp_adapter:
        inner.image_newline.requires_grad_(True)


def apply_lora(model, training_args):
    from peft import LoraConfig, get_peft_model

    # A string is matched with re.fullmatch; a list would match by suffix, and the perceiver's LM has the
    # same module names under a longer prefix.
    exact = "|".join(re.escape(name) for name in find_all_linear_names(model))
    lora_config = LoraConfig(r=training_args.lora_r, lora_alpha=training_args.lora_alpha,
                             target_modules=f"(?:{exact})", lora_dropout=training_args.lora_dropout,
                             bias=training_args.lora_bias, task_type="CAUSAL_LM")
    if training_args.bits == 16:
        if training_args.bf16:
            model.to(torch.bfloat16)
        if training_args.fp16:
            model.to(torch.float16)
    return get_peft_model(model, lora_config)


def cast_for_kbit(model, training_args) -> None:
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and training_args.bf16:
            module.to(torch.bfloat16)
        if "norm" in name and "vision_tower" not in name:
            module.to(torch.float32)
        if ("lm_head" in name or "embed_tokens" in name) and hasattr(module, "weight"):
            if training_args.bf16 and module.weight.dtype == torch.float32:
                module.to(torch.bfloat16)
