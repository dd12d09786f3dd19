"""Every refusal of a nonsensical combination of training flags, each naming the flags, before anything loads."""
from __future__ import annotations

import importlib.util

from llava.conversation import conv_templates

from llava_dpa.templates import CHAT_TEMPLATE_VERSIONS
from llava_dpa.towers.qwen2_5_vl import Qwen2_5_VLTower
from llava_dpa.training.errors import RunConfigError
from llava_dpa.training.parts import PERCEIVER_PARTS, Part
from llava_dpa.training.run_config import RunConfig, TowerKind
from llava_dpa.training.stage import Stage
from llava_dpa.training.trainability import tower_trains as tower_trains_in
from llava_dpa.training.trainability import trainability_plan

# flag -> its default; any other value needs a perceiver tower
PERCEIVER_ONLY_FLAGS = {"freeze_perceiver": False, "dpa_select_layer": None, "perceiver_instruction_context": False,
                        "perceiver_aux_loss_weight": 0.0}


def validate(run: RunConfig) -> None:
    """Every refusal of a nonsensical combination, naming the flags."""
    check_template_and_perceiver_flags(run)
    check_projector(run)
    check_images(run)
    check_quantization_and_lora(run)
    check_packing_and_tower_use(run)


def check_template_and_perceiver_flags(run: RunConfig) -> None:
    """The template, and the flags only a perceiver reads."""
    m, t = run.model, run.training
    s1 = run.stage is Stage.ALIGNMENT
    if m.version not in conv_templates:
        raise RunConfigError(f"unknown --version {m.version!r}; choose one of {sorted(conv_templates)} (qwen_3 for "
                             f"Qwen3 targets, llama_3 for LLaMA 3.x, plain for LLaVA's caption-only stage 1)")
    if m.version in ("v0", "v0.5"):
        raise RunConfigError(f"--version {m.version} is LLaVA-1.0's format, which this project does not train; use "
                             f"plain, v1, llama_2, qwen_3 or llama_3")
    if run.tower_kind is not TowerKind.PERCEIVER:
        used = [f"--{k}" for k, default in PERCEIVER_ONLY_FLAGS.items() if getattr(m, k) != default]
        used += ["--perceiver_lr"] if t.perceiver_lr is not None else []
        if used:
            raise RunConfigError(f"{', '.join(used)} only apply to a DPA perceiver tower; --vision_tower "
                                 f"{m.vision_tower} is {'missing' if run.tower_kind is TowerKind.NONE else 'a plain ViT'}")
    if m.perceiver_instruction_context:
        if m.version not in CHAT_TEMPLATE_VERSIONS:
            raise RunConfigError(f"--perceiver_instruction_context reads the user turn of a chat template; use --version "
                                 f"{' or '.join(CHAT_TEMPLATE_VERSIONS)} (got {m.version!r})")
        if s1:
            raise RunConfigError("--perceiver_instruction_context True in stage 1: the text beside a stage-1 image is "
                                 "the caption the model must predict, so the perceiver would read the answer. Use the "
                                 "flag in stage 2 only.")
    if m.freeze_perceiver and run.aux_loss_weight:
        raise RunConfigError("--freeze_perceiver True with --perceiver_aux_loss_weight: the auxiliary loss trains the "
                             "perceiver; drop one of them")


def check_projector(run: RunConfig) -> None:
    """The large-MLP ablation's projector."""
    m = run.model
    if m.mm_projector_type == "large_mlp":
        if run.is_perceiver:
            raise RunConfigError("--mm_projector_type large_mlp is the plain-ViT ablation; use it with a ViT --vision_tower")
        if not (m.mm_projector_width and m.mm_projector_depth):
            raise RunConfigError("--mm_projector_type large_mlp needs --mm_projector_width and --mm_projector_depth "
                                 "(llava-dpa projector-budget computes them for a parameter budget)")


def check_images(run: RunConfig) -> None:
    """How images are read: native resolution, anyres tiles."""
    d = run.data
    validate_native_resolution(run)
    if d.image_aspect_ratio not in ("square", "pad", "anyres", "native"):
        raise RunConfigError(f"unknown --image_aspect_ratio {d.image_aspect_ratio!r}; use square, pad, anyres or native")
    if d.image_aspect_ratio == "anyres" and run.image_grid_pinpoints is None:
        raise RunConfigError("--image_aspect_ratio anyres needs --image_grid_pinpoints, e.g. "
                             "\"[(448, 896), (896, 448), (896, 896)]\"")


def check_quantization_and_lora(run: RunConfig) -> None:
    """Quantization, LoRA and what stage 1 may train."""
    m, t = run.model, run.training
    s1 = run.stage is Stage.ALIGNMENT
    if t.bits not in (4, 8, 16):
        raise RunConfigError(f"--bits {t.bits}: use 4 (QLoRA), 8 or 16")
    if t.bits in (4, 8) and not t.lora_enable:
        raise RunConfigError(f"--bits {t.bits} quantizes the target, whose weights then cannot train: add "
                             f"--lora_enable True (QLoRA)")
    if t.bits in (4, 8) and importlib.util.find_spec("bitsandbytes") is None:
        raise RunConfigError(f"--bits {t.bits} quantizes the target with bitsandbytes, which is not installed: "
                             f"pip install 'llava-dpa[qlora]'")
    if s1:
        if t.lora_enable:
            raise RunConfigError("--lora_enable True in stage 1: stage 1 trains the alignment projector only; use "
                                 "LoRA in stage 2")
        if m.unfreeze_mm_vision_tower:
            raise RunConfigError("--unfreeze_mm_vision_tower True in stage 1: stage 1 trains the alignment projector "
                                 "only (Table 6); use it in stage 2")
    if t.lora_enable:
        absent = {TowerKind.PERCEIVER: (Part.VISION_TOWER,), TowerKind.VIT: PERCEIVER_PARTS,
                  TowerKind.NONE: (Part.VISION_TOWER,) + PERCEIVER_PARTS}[run.tower_kind]
        wrong = [p.value for p in run.lora_parts if p in absent or p is Part.PROJECTOR or p is Part.IMAGE_NEWLINE]
        if wrong:
            raise RunConfigError(f"--lora_parts {' '.join(wrong)}: not a LoRA part of this model (the projector and "
                                 f"image_newline train in full; tower parts need that tower)")
        if t.lora_bias not in ("none", "all", "lora_only"):
            raise RunConfigError(f"--lora_bias {t.lora_bias}: use none, all (every bias of the parts under LoRA "
                                 f"trains) or lora_only (the biases of the layers with adapters)")
    elif t.lora_parts != ["language_model"]:
        raise RunConfigError("--lora_parts without --lora_enable True: add --lora_enable True or drop --lora_parts")


def check_packing_and_tower_use(run: RunConfig) -> None:
    """Packing, the feature cache and the tower's learning rate, against what trains."""
    m, d, t, stage = run.model, run.data, run.training, run.stage
    tower_trains = tower_trains_in(trainability_plan(run.choices))
    if t.packing_budget is not None:
        if t.packing_budget < t.model_max_length:
            raise RunConfigError(f"--packing_budget {t.packing_budget} is below --model_max_length {t.model_max_length}: "
                                 f"a sample that fits the model would not fit a pack; raise the budget")
        if t.per_device_train_batch_size != 1:
            raise RunConfigError(f"--packing_budget with --per_device_train_batch_size {t.per_device_train_batch_size}: "
                                 f"a pack is the batch; pass --per_device_train_batch_size 1 and size the batch with "
                                 f"--packing_budget")
        if t.group_by_modality_length:
            raise RunConfigError("--packing_budget with --group_by_modality_length True: packing decides the batches; "
                                 "drop --group_by_modality_length")
        if run.aux_loss_weight:
            raise RunConfigError("--packing_budget with --perceiver_aux_loss_weight: the auxiliary loss reads padded "
                                 "rows of the perceiver's own tokenization; train it without packing")
    if d.feature_cache:
        if run.tower_kind is TowerKind.NONE:
            raise RunConfigError("--feature_cache without a --vision_tower: there are no image features to read")
        if tower_trains:
            raise RunConfigError(f"--feature_cache with a tower that trains in this stage {int(stage)} run: cached "
                                 f"features are those of the frozen tower; use the cache in stage 1 (or with the tower "
                                 f"frozen), not with --unfreeze_mm_vision_tower / a trainable perceiver")
        if run.qwen_vl_perceiver or m.perceiver_instruction_context:
            raise RunConfigError("--feature_cache: this perceiver reads the sample's text, so its features are not a "
                                 "function of the image alone; drop --feature_cache")
    if t.mm_vision_tower_lr is not None and not tower_trains:
        raise RunConfigError(f"--mm_vision_tower_lr is set but no vision tower trains in this stage {int(stage)} run "
                             f"(stage 2 with --unfreeze_mm_vision_tower True, or a trainable perceiver)")
    if t.load_best_model_at_end:
        raise RunConfigError("--load_best_model_at_end is not supported (checkpoints are rotated by step)")


def validate_native_resolution(run: RunConfig) -> None:
    """Whole images at native resolution: the Qwen-VL perceiver always, a Qwen2.5-VL ViT tower on request."""
    m, d = run.model, run.data
    native = d.image_aspect_ratio == "native"
    if run.qwen_vl_perceiver:
        if d.image_aspect_ratio != "native":
            raise RunConfigError(f"--image_aspect_ratio {d.image_aspect_ratio} with the Qwen-VL perceiver "
                                 f"{m.vision_tower}: it reads each image whole at native resolution; drop the flag "
                                 f"(or pass native)")
        used = [f for f, bad in (("--image_grid_pinpoints", d.image_grid_pinpoints is not None),
                                 ("--mm_patch_merge_type " + str(m.mm_patch_merge_type), m.mm_patch_merge_type != "flat"),
                                 ("--perceiver_instruction_context", m.perceiver_instruction_context),
                                 ("--dpa_select_layer", m.dpa_select_layer is not None),
                                 ("--perceiver_aux_loss_weight", bool(m.perceiver_aux_loss_weight))) if bad]
        if used:
            raise RunConfigError(
                f"{', '.join(used)}: not with the Qwen-VL perceiver {m.vision_tower}. Anyres tiles and spatial merges do "
                f"not apply to whole images; the perceiver already reads the sample's text before each image (put the "
                f"question before <image> to give it the instruction); its features are the last layer's; the "
                f"auxiliary loss is built for the LLaVA-format perceiver.")
    else:
        if m.perceiver_visual_positions_only or m.perceiver_system_prompt:
            raise RunConfigError("--perceiver_visual_positions_only and --perceiver_system_prompt apply to the Qwen-VL "
                                 "perceiver (--vision_tower dpa:<Qwen2.5-VL or imported folder>)")
        if native:
            if run.tower_kind is not TowerKind.VIT or run.tower_class is not Qwen2_5_VLTower:
                raise RunConfigError(f"--image_aspect_ratio native needs a Qwen2.5-VL ViT tower or the Qwen-VL perceiver; "
                                     f"{m.vision_tower} reads fixed-size tiles")
            if d.image_grid_pinpoints is not None or m.mm_patch_merge_type != "flat":
                raise RunConfigError("--image_aspect_ratio native reads whole images: drop --image_grid_pinpoints and "
                                     "--mm_patch_merge_type")
    if not native and (m.min_pixels or m.max_pixels):
        raise RunConfigError("--min_pixels/--max_pixels set the native resolution: add --image_aspect_ratio native")


def check_against_tower(run: RunConfig, tower) -> None:
    """The checks that need the built tower: anyres tiles are multiples of its input size."""
    points = run.image_grid_pinpoints
    if run.data.image_aspect_ratio == "anyres" and points:
        tile = tower.image_size
        bad = [p for p in points if p[0] % tile or p[1] % tile]
        if bad:
            raise RunConfigError(
                f"--image_grid_pinpoints {bad} are not multiples of {run.model.vision_tower}'s image size {tile}; use "
                f"resolutions made of {tile}-pixel tiles, e.g. [({tile}, {2 * tile}), ({2 * tile}, {tile})]")
