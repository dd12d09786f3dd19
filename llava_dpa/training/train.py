"""The body of `llava.train.train.train`, which delegates here (patches/02-train-delegate.patch).

Same flags and outputs as LLaVA. The run configuration is parsed and validated once
(`training/run_config.py`) and passed to every step below; what trains is decided by
`training/trainability.py` and printed before the first step.
"""
from __future__ import annotations

import logging
import os

import torch

from llava_dpa.data.dataset import DataSpec, make_supervised_data_module
from llava_dpa.data.feature_cache import FeatureCacheError, FeatureCacheReader, manifest_for, refuse_unsupported
from llava_dpa.data.tokenization import load_tokenizer
from llava_dpa.language_models.base import hook_hidden_states_from_the_top
from llava_dpa.perceiver.aux_loss import aux_data_for
from llava_dpa.projectors.official import adopt_pretrained_merger
from llava_dpa.training import saving
from llava_dpa.training.distributed import end_process_group
from llava_dpa.training.errors import RunConfigError
from llava_dpa.training.mir_callback import MIRCallback
from llava_dpa.training.model_config import apply_model_config
from llava_dpa.training.model_setup import apply_lora, cast_for_kbit, ensure_pad_token, load_target
from llava_dpa.training.resolution import parse_run_config
from llava_dpa.training.run_config import RunConfig
from llava_dpa.training.run_record import check_resume, write_run_config
from llava_dpa.training.stage import Stage
from llava_dpa.training.trainability import apply_trainability, trainability_table
from llava_dpa.training.trainer import DPATrainer, SkippedSamplesCallback, complete_checkpoints
from llava_dpa.training.validation import check_against_tower

logger = logging.getLogger("llava_dpa.train")


def setup_vision(model, run: RunConfig, tokenizer):
    """Build the tower and projector, record the run in model.config; returns the tower."""
    inner = model.get_model()
    apply_model_config(model.config, run)  # the projector builder reads its shape from the config
    inner.initialize_vision_modules(model_args=run.model, fsdp=run.training.fsdp)
    tower = model.get_vision_tower()
    if not run.model.pretrain_mm_mlp_adapter:
        logger.info(adopt_pretrained_merger(model))
    check_against_tower(run, tower)
    tower.to(dtype=run.compute_dtype, device=run.training.device)
    tower.attach_tokenizers(tokenizer, perceiver_tokenizer_needed=bool(run.aux_loss_weight))
    apply_model_config(model.config, run, tower, tokenizer)
    if run.training.bits in (4, 8):
        inner.mm_projector.to(dtype=run.compute_dtype, device=run.training.device)
    model.initialize_vision_tokenizer(run.model, tokenizer=tokenizer)
    hook_hidden_states_from_the_top(model)  # before the MIR callback asks the whole model for hidden states
    return tower


def open_feature_cache(run: RunConfig, tower, tokenizer):
    """--feature_cache: the reader, after checking the cache was built by this tower with this preprocessing."""

    try:
        refuse_unsupported(tower, run.model.perceiver_instruction_context)
        reader = FeatureCacheReader(run.data.feature_cache, manifest_for(tower, data_spec(run, tower, tokenizer)))
    except FeatureCacheError as exc:
        raise RunConfigError(str(exc)) from None
    return reader  # its features reach the model as data.tower_features.TowerFeatures; the tower is not switched


def data_spec(run: RunConfig, tower, tokenizer, feature_cache=None) -> DataSpec:
    from llava.conversation import conv_templates


    return DataSpec(conversation=conv_templates[run.model.version], image_folder=run.data.image_folder,
                    image_aspect_ratio=run.data.image_aspect_ratio, image_grid_pinpoints=run.image_grid_pinpoints,
                    image_processor=tower.image_processor if tower is not None else None,
                    tokens_per_image=tower.num_patches if tower is not None else 0,
                    tokens_for=getattr(tower, "tokens_for", None) if getattr(tower, "per_image_features", False) else None,
                    mm_use_im_start_end=run.model.mm_use_im_start_end, strict=run.data.strict_data,
                    perceiver_aux=aux_data_for(tower, run) if run.aux_loss_weight else None,
                    feature_cache=feature_cache)


def save_final(trainer, model, tokenizer, run: RunConfig) -> None:
    trainer.save_state()
    model.config.use_cache = True
    out, args = run.training.output_dir, run.training
    tower = model.get_vision_tower() if run.tower_kind.value != "none" else None
    if args.lora_enable:
        lora = saving.lora_state(model, args.lora_bias)
        non_lora = saving.non_lora_trainables(model)
        if args.should_save:
            with saving.StagedOutput(out) as staging:
                model.config.save_pretrained(staging)
                model.save_pretrained(staging, state_dict=lora)
                torch.save(non_lora, os.path.join(staging, saving.NON_LORA_NAME))
                tokenizer.save_pretrained(staging)
                if tower is not None:
                    tower.save_extras(staging)
    elif run.stage is Stage.ALIGNMENT:
        if args.should_save:
            with saving.StagedOutput(out) as staging:
                saving.save_projector(model, staging, run.model.mm_use_im_start_end)
    else:
        if args.should_save:
            with saving.StagedOutput(out) as staging:
                trainer.save_model(staging)
                if tower is not None:
                    tower.save_extras(staging)
        elif trainer.is_deepspeed_enabled:
            trainer.save_model(out)  # every rank takes part in gathering ZeRO-3 shards


def prepare_output_dir(run: RunConfig) -> str | None:
    """The checkpoint to resume from (after checking it was trained with the same settings), and
    run_config.json written for this run."""
    checkpoints = complete_checkpoints(run.training.output_dir)
    last = checkpoints[-1] if checkpoints else None
    if last:
        check_resume(run, last)
    if run.training.should_save:
        write_run_config(run)
    return last


def train(attn_implementation=None, argv=None):
    """Parse, build, train and save one run. A distributed run's process group ends here
    (`end_process_group`), so a caller cannot use it afterwards."""
    run = parse_run_config(argv, attn_implementation)
    last = prepare_output_dir(run)

    # The parts a run creates (the projector, a random tower) are drawn from --seed; llava left them to whatever
    # state the process's generator was in, so two identical commands started from different projectors.
    import transformers

    transformers.set_seed(run.training.seed)
    model = load_target(run)
    tokenizer = load_tokenizer(run.model.model_name_or_path, cache_dir=run.training.cache_dir,
                               model_max_length=run.training.model_max_length, padding_side="right")
    ensure_pad_token(tokenizer, model)
    tower = setup_vision(model, run, tokenizer) if run.model.vision_tower else None
    if tower is None:
        apply_model_config(model.config, run, tokenizer=tokenizer)
    if run.training.lora_enable:
        model = apply_lora(model, run)
    rows = apply_trainability(model, run)
    if run.training.should_save:
        if tower is not None:
            print(f"vision tower: {tower.label} <- {run.model.vision_tower}", flush=True)
        print(trainability_table(rows, run.stage), flush=True)
    if run.training.bits in (4, 8):
        cast_for_kbit(model, run)

    cache = open_feature_cache(run, tower, tokenizer) if run.data.feature_cache else None
    data_module = make_supervised_data_module(tokenizer, run.data.data_path, data_spec(run, tower, tokenizer, cache))
    trainer = DPATrainer(run=run, model=model, processing_class=tokenizer, args=run.training, **data_module)
    trainer.add_callback(SkippedSamplesCallback(data_module["train_dataset"]))
    if run.training.mir_probe_images:
        t = run.training
        trainer.add_callback(MIRCallback(tokenizer, run.model.version, t.mir_probe_images, t.mir_probe_texts,
                                         t.mir_probe_image_folder, t.mir_probe_count, t.seed))
    if last:
        print(f"[llava-dpa] resuming from {last}")
    trainer.train(resume_from_checkpoint=last)
    save_final(trainer, model, tokenizer, run)
    end_process_group()
    return trainer
