"""Build the model a LLaVA training run trains: target class from config.model_type, quantization and
LoRA. What trains in each stage is `training/trainability.py`'s."""
from __future__ import annotations

import logging

import torch
import transformers

from llava_dpa.language_models import target_class_for
from llava_dpa.training.trainability import lora_target_modules, lora_target_pattern

logger = logging.getLogger("llava_dpa.train")

PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|endoftext|>", "<pad>", "[PAD]")


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


def quantization_kwargs(run) -> dict:
    training_args, compute_dtype = run.training, run.compute_dtype
    if training_args.bits not in (4, 8):
        return {}
    from transformers import BitsAndBytesConfig

    # Only quantization_config: passing load_in_4bit as well is rejected by current transformers.
    return dict(device_map={"": training_args.device}, quantization_config=BitsAndBytesConfig(
        load_in_4bit=training_args.bits == 4, load_in_8bit=training_args.bits == 8,
        llm_int8_skip_modules=["mm_projector", "vision_tower", "lm_head"], llm_int8_threshold=6.0,
        llm_int8_has_fp16_weight=False, bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=training_args.double_quant, bnb_4bit_quant_type=training_args.quant_type))


def load_target(run):
    model_args, training_args = run.model, run.training
    config = transformers.AutoConfig.from_pretrained(model_args.model_name_or_path, cache_dir=training_args.cache_dir)
    cls = target_class_for(config.model_type) if model_args.vision_tower else transformers.AutoModelForCausalLM
    model = cls.from_pretrained(model_args.model_name_or_path, cache_dir=training_args.cache_dir,
                                attn_implementation=run.attn_implementation,
                                torch_dtype=(torch.bfloat16 if training_args.bf16 else None),
                                **quantization_kwargs(run))
    model.config.use_cache = False
    if training_args.bits in (4, 8):
        from peft import prepare_model_for_kbit_training

        model.config.torch_dtype = torch.float32 if training_args.fp16 else run.compute_dtype
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=training_args.gradient_checkpointing)
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def apply_lora(model, run):
    from peft import LoraConfig, get_peft_model


    training_args = run.training
    lora_config = LoraConfig(r=training_args.lora_r, lora_alpha=training_args.lora_alpha,
                             target_modules=lora_target_pattern(lora_target_modules(model, run)),
                             lora_dropout=training_args.lora_dropout,
                             bias=training_args.lora_bias, task_type="CAUSAL_LM")
    if training_args.bits == 16:
        if training_args.bf16:
            model.to(torch.bfloat16)
        if training_args.fp16:
            model.to(torch.float16)
    return get_peft_model(model, lora_config)


def cast_for_kbit(model, run) -> None:
    from peft.tuners.lora import LoraLayer

    training_args = run.training
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and training_args.bf16:
            module.to(torch.bfloat16)
        if "norm" in name and "vision_tower" not in name:
            module.to(torch.float32)
        if ("lm_head" in name or "embed_tokens" in name) and hasattr(module, "weight"):
            if training_args.bf16 and module.weight.dtype == torch.float32:
                module.to(torch.bfloat16)
