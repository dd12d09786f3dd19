"""`llava-dpa make-perceiver`: compose an untrained perceiver VLM from a pretrained ViT and LM.

The output is a LLaVA-format checkpoint like the ones the baseline pipeline trains (config with
`mm_vision_tower`, full weights, the LM's tokenizer): a pretrained ViT and LM joined by a randomly
initialised projector. `--random-lm-init` re-initialises the LM blocks with the model's own initialiser
(the "w/o perceiver LM pre-training" ablation); `--projector-weights` loads a stage-1 mm_projector.bin
(the "stage 1 only" perceiver level).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch


def make_perceiver(vision: str, language_model: str, output: str, projector: str = "mlp2x_gelu",
                   version: str | None = None, select_layer: int = -1, seed: int = 0, random_lm_init: bool = False,
                   projector_weights: str | None = None) -> Path:
    from transformers import AutoConfig, AutoTokenizer

    from llava_dpa.language_models import target_class_for
    from llava_dpa.templates import infer_conv_mode

    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new --output")
    config = AutoConfig.from_pretrained(language_model)
    cls = target_class_for(config.model_type)
    torch.manual_seed(seed)
    model = cls.from_pretrained(language_model, torch_dtype=torch.float32)
    if random_lm_init:
        reinitialise_language_model(model, seed)

    model_args = SimpleNamespace(vision_tower=vision, mm_vision_select_layer=select_layer, mm_vision_select_feature="patch",
                                 pretrain_mm_mlp_adapter=None, mm_patch_merge_type="flat", mm_projector_type=projector)
    torch.manual_seed(seed)
    model.get_model().initialize_vision_modules(model_args)
    if projector_weights:
        from llava_dpa.training.saving import load_projector_state

        load_projector_state(model, projector_weights)
    tower = model.get_vision_tower()
    for key, value in tower.config_entries().items():
        setattr(model.config, key, value)
    from llava.conversation import conv_templates

    model.config.conv_version = version or infer_conv_mode(model.config, conv_templates.keys())
    model.config.image_aspect_ratio = "square"
    model.config.mm_use_im_start_end = False
    model.config.mm_use_im_patch_token = False
    model.config.tune_mm_mlp_adapter = False
    model.config.perceiver_origin = {"vision": vision, "language_model": language_model, "seed": seed,
                                     "random_lm_init": random_lm_init, "projector_weights": projector_weights}
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(language_model).save_pretrained(out)
    return out


def reinitialise_perceiver_lm(perceiver: str, output: str, seed: int = 0) -> Path:
    """A trained perceiver with its LM blocks re-initialised; its ViT and projector keep their trained weights
    (Table 4 "w/o perceiver LM pre-training", read as Section 4.2 states its ablations: from the 1M perceiver)."""
    from llava_dpa.loading import load_pretrained_model, load_tokenizer

    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new --output")
    _, model, _, _ = load_pretrained_model(perceiver, None, None, device="cpu", dtype=torch.float32)
    if model.get_vision_tower().is_perceiver:
        raise ValueError(f"{perceiver} is a DPA model, not a perceiver VLM; pass the perceiver's own folder")
    reinitialise_language_model(model, seed)
    model.config.perceiver_origin = {"reinitialised_lm_of": perceiver, "seed": seed}
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    load_tokenizer(perceiver).save_pretrained(out)
    return out


def reinitialise_language_model(model, seed: int) -> None:
    """Same architecture, fresh LM weights from the model's own initialiser (deterministic in `seed`): a model
    built from the config supplies them, and only the language-model part is copied, so the ViT and the
    projector keep theirs. (transformers 5's _init_weights skips parameters already loaded, so re-running it
    on the loaded model would change nothing.)"""
    from llava_dpa.training.parts import Part, part_of

    torch.manual_seed(seed)
    fresh = type(model)(model.config)
    state = {k: v for k, v in fresh.state_dict().items() if part_of(k) is Part.LANGUAGE_MODEL}
    model.load_state_dict(state, strict=False)
    model.tie_weights()


def register(sub) -> None:
    p = sub.add_parser("make-perceiver", help="compose an untrained perceiver VLM from a ViT and an LM")
    p.add_argument("--vision", required=True, help="ViT folder (CLIP, SigLIP, SigLIP2, Qwen2.5-VL vision)")
    p.add_argument("--language-model", required=True, help="LM folder, e.g. Qwen3-0.6B")
    p.add_argument("--output", required=True)
    p.add_argument("--projector", default="mlp2x_gelu", help="LLaVA projector type (default mlp2x_gelu)")
    p.add_argument("--version", default=None, help="the perceiver's template (default: its LM family's)")
    p.add_argument("--select-layer", type=int, default=-1, help="ViT feature layer (-1 for Qwen2.5-VL)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-lm-init", action="store_true", help="re-initialise the LM blocks (ablation)")
    p.add_argument("--projector-weights", default=None, help="a stage-1 mm_projector.bin to load into the projector")
    p.set_defaults(func=lambda a: print(make_perceiver(a.vision, a.language_model, a.output, a.projector, a.version,
                                                       a.select_layer, a.seed, a.random_lm_init, a.projector_weights)))

    p = sub.add_parser("reinit-perceiver-lm", help="a trained perceiver with its LM blocks re-initialised (ablation)")
    p.add_argument("perceiver", help="a trained perceiver VLM folder")
    p.add_argument("--output", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda a: print(reinitialise_perceiver_lm(a.perceiver, a.output, a.seed)))
