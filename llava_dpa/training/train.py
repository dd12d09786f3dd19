"""The body of `llava.train.train.train`, which delegates here (patches/02-train-delegate.patch).

Same flags and outputs as LLaVA; the differences are the fixes listed in docs/design.md.
"""
from __future__ import annotations

import logging
import os

import torch
import transformers
from transformers.trainer_utils import get_last_checkpoint

from llava_dpa.data.anyres import check_pinpoints, parse_pinpoints
from llava_dpa.data.dataset import make_supervised_data_module
from llava_dpa.training import cli_args, saving
from llava_dpa.training.arguments import DataArguments, ModelArguments, TrainingArguments
from llava_dpa.training.model_setup import (apply_lora, cast_for_kbit, compute_dtype_of, ensure_pad_token,
                                            load_target, resolve_attn_implementation, set_stage_trainability)
from llava_dpa.training.trainer import DPATrainer, SkippedSamplesCallback

logger = logging.getLogger("llava_dpa.train")


def select_conversation(version: str):
    from llava import conversation as conversation_lib

    if version in ("v0", "v0.5"):
        return
    if version not in conversation_lib.conv_templates:
        raise ValueError(f"unknown --version {version!r}; choose one of {sorted(conversation_lib.conv_templates)} "
                         f"(qwen_3 for Qwen3 targets, llama_3 for LLaMA 3.x, plain for stage 1)")
    conversation_lib.default_conversation = conversation_lib.conv_templates[version]


PERCEIVER_FLAGS = {"freeze_perceiver": False, "dpa_select_layer": None, "perceiver_instruction_context": False,
                   "perceiver_aux_loss_weight": 0.0}


def check_variant_flags(model_args, tower) -> None:
    """Refuse combinations that make no sense, instead of silently ignoring a flag."""
    from llava_dpa.templates import CHAT_TEMPLATE_VERSIONS

    if not hasattr(tower, "perceiver"):
        used = [f"--{k}" for k, off in PERCEIVER_FLAGS.items() if getattr(model_args, k, off) not in (off, 0)]
        if used:
            raise ValueError(f"{', '.join(used)} only apply to a DPA perceiver tower; --vision_tower "
                             f"{model_args.vision_tower} is a plain ViT")
    if getattr(model_args, "perceiver_instruction_context", False) and \
            model_args.version not in CHAT_TEMPLATE_VERSIONS + ("plain",):
        raise ValueError(f"--perceiver_instruction_context reads the user turn of a chat template; use --version "
                         f"{' or '.join(CHAT_TEMPLATE_VERSIONS)} (got {model_args.version!r})")
    if model_args.mm_projector_type == "large_mlp" and hasattr(tower, "perceiver"):
        raise ValueError("--mm_projector_type large_mlp is the plain-ViT ablation; use it with a ViT --vision_tower")


def setup_vision(model, model_args, data_args, training_args, tokenizer) -> None:
    inner = model.get_model()
    # read by the projector builder during initialize_vision_modules
    model.config.mm_projector_width = model_args.mm_projector_width
    model.config.mm_projector_depth = model_args.mm_projector_depth
    inner.initialize_vision_modules(model_args=model_args, fsdp=training_args.fsdp)
    tower = model.get_vision_tower()
    check_variant_flags(model_args, tower)
    compute_dtype = compute_dtype_of(training_args)
    tower.to(dtype=compute_dtype, device=training_args.device)
    for key, value in tower.embedded_config().items():
        setattr(model.config, key, value)
    if hasattr(tower, "record_in_config"):
        tower.record_in_config(model.config, model_args)
    if hasattr(tower, "attach_tokenizers"):
        from llava_dpa.perceiver.aux_loss import active_in_stage, aux_data_for

        if active_in_stage(model_args):
            tower.aux_loss_weight = float(model_args.perceiver_aux_loss_weight)
        tower.attach_tokenizers(tokenizer)
        data_args.perceiver_aux = aux_data_for(tower, model_args)
    elif getattr(model_args, "perceiver_aux_loss_weight", 0.0):
        raise ValueError("--perceiver_aux_loss_weight needs a DPA perceiver as --vision_tower")

    data_args.image_processor = tower.image_processor
    data_args.is_multimodal = True
    data_args.tokens_per_image = tower.num_patches
    data_args.mm_use_im_start_end = model_args.mm_use_im_start_end
    if data_args.image_aspect_ratio == "anyres":
        model.config.image_grid_pinpoints = check_pinpoints(data_args.image_grid_pinpoints, tower.image_size,
                                                            model_args.vision_tower)
    elif data_args.image_grid_pinpoints:
        model.config.image_grid_pinpoints = parse_pinpoints(data_args.image_grid_pinpoints)
    model.config.image_aspect_ratio = data_args.image_aspect_ratio
    model.config.tokenizer_padding_side = tokenizer.padding_side
    model.config.tokenizer_model_max_length = tokenizer.model_max_length
    model.config.tune_mm_mlp_adapter = training_args.tune_mm_mlp_adapter = model_args.tune_mm_mlp_adapter
    model.config.freeze_mm_mlp_adapter = training_args.freeze_mm_mlp_adapter
    model.config.unfreeze_mm_vision_tower = model_args.unfreeze_mm_vision_tower
    model.config.mm_use_im_start_end = model_args.mm_use_im_start_end
    model.config.mm_projector_lr = training_args.mm_projector_lr
    model.config.mm_vision_tower_lr = training_args.mm_vision_tower_lr
    model.config.mm_use_im_patch_token = model_args.mm_use_im_patch_token
    training_args.use_im_start_end = model_args.mm_use_im_start_end
    if training_args.bits in (4, 8):
        inner.mm_projector.to(dtype=compute_dtype, device=training_args.device)
    model.initialize_vision_tokenizer(model_args, tokenizer=tokenizer)


def save_final(trainer, model, tokenizer, training_args) -> None:
    trainer.save_state()
    model.config.use_cache = True
    out = training_args.output_dir
    tower = model.get_vision_tower() if hasattr(model, "get_vision_tower") else None
    if training_args.should_save and hasattr(tower, "save_perceiver_tokenizer"):
        with saving.StagedOutput(out) as staging:
            tower.save_perceiver_tokenizer(staging)
    if training_args.lora_enable:
        lora = saving.lora_state(model, training_args.lora_bias)
        non_lora = saving.non_lora_trainables(model)
        if training_args.should_save:
            with saving.StagedOutput(out) as staging:
                model.config.save_pretrained(staging)
                model.save_pretrained(staging, state_dict=lora)
                torch.save(non_lora, os.path.join(staging, "non_lora_trainables.bin"))
                tokenizer.save_pretrained(staging)
    elif getattr(training_args, "tune_mm_mlp_adapter", False):
        if training_args.should_save:
            with saving.StagedOutput(out) as staging:
                saving.save_projector(model, staging, getattr(training_args, "use_im_start_end", False))
    else:
        if training_args.should_save:
            with saving.StagedOutput(out) as staging:
                trainer.save_model(staging)
        elif trainer.is_deepspeed_enabled:
            trainer.save_model(out)  # every rank takes part in gathering ZeRO-3 shards


def train(attn_implementation=None, argv=None):
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = cli_args.parse(parser, argv)
    attn = resolve_attn_implementation(attn_implementation)
    select_conversation(model_args.version)

    model = load_target(model_args, training_args, attn)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_args.model_name_or_path,
                                                           cache_dir=training_args.cache_dir,
                                                           model_max_length=training_args.model_max_length,
                                                           padding_side="right")
    if model_args.version == "v0" and tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        model.resize_token_embeddings(len(tokenizer))
    ensure_pad_token(tokenizer, model)
    model.config.conv_version = model_args.version

    if model_args.vision_tower is not None:
        setup_vision(model, model_args, data_args, training_args, tokenizer)
    if training_args.lora_enable:
        model = apply_lora(model, training_args)
    if model_args.vision_tower is not None:
        set_stage_trainability(model, model_args, training_args)
    if training_args.bits in (4, 8):
        cast_for_kbit(model, training_args)

    data_module = make_supervised_data_module(tokenizer=tokenizer, data_args=data_args)
    trainer = DPATrainer(model=model, processing_class=tokenizer, args=training_args, **data_module)
    trainer.add_callback(SkippedSamplesCallback(data_module["train_dataset"]))
    if training_args.mir_probe_images:
        from llava_dpa.analysis.mir_callback import MIRCallback

        trainer.add_callback(MIRCallback(tokenizer, model_args.version, training_args.mir_probe_images,
                                         training_args.mir_probe_texts, training_args.mir_probe_image_folder,
                                         training_args.mir_probe_count, training_args.seed))

    last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
    if last:
        print(f"[llava-dpa] resuming from {last}")
    trainer.train(resume_from_checkpoint=last)
    save_final(trainer, model, tokenizer, training_args)
    return trainer
