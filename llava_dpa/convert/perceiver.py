"""`llava-dpa make-perceiver`: compose an untrained perceiver VLM from a pretrained ViT and LM.

The output is a LLaVA-format checkpoint like the ones the baseline pipeline trains (config with
`mm_vision_tower`, full weights, the LM's tokenizer): a pretrained ViT and LM joined by a randomly
initialised projector. `--random-lm-init` re-initialises the LM blocks with the model's own initialiser
(the "w/o perceiver LM pre-training" ablation); `--projector-weights` loads a stage-1 mm_projector.bin
(the "stage 1 only" perceiver level).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from llava_dpa.data.native_resolution import OFFICIAL_PIXEL_LIMITS
from llava_dpa.data.tokenization import load_tokenizer
from llava_dpa.language_models import target_class_for
from llava_dpa.llava_integration.assemble import initialize_vision_modules
from llava_dpa.loading import load_pretrained_model
from llava_dpa.perceiver.qwen_vl import SPEC_TYPE, QwenVLPerceiver
from llava_dpa.perceiver.qwen_vl_tower import DELIMITERS
from llava_dpa.projectors.official import adopt_pretrained_merger
from llava_dpa.templates import infer_conv_mode
from llava_dpa.towers import weights as W
from llava_dpa.towers.options import TowerOptions
from llava_dpa.towers.qwen2_5_vl import Qwen2_5_VLTower
from llava_dpa.training.parts import Part, part_of
from llava_dpa.training.saving import load_projector_state


def make_perceiver(vision: str, language_model: str, output: str, projector: str = "mlp2x_gelu",
                   version: str | None = None, select_layer: int = -1, seed: int = 0, random_lm_init: bool = False,
                   projector_weights: str | None = None) -> Path:
    from transformers import AutoConfig, AutoTokenizer


    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new --output")
    config = AutoConfig.from_pretrained(language_model)
    cls = target_class_for(config.model_type)
    torch.manual_seed(seed)
    model = cls.from_pretrained(language_model, torch_dtype=torch.float32)
    if random_lm_init:
        reinitialise_language_model(model, seed)

    options = TowerOptions(vision_tower=vision, mm_vision_select_layer=select_layer, mm_vision_select_feature="patch",
                           mm_projector_type=projector)
    torch.manual_seed(seed)
    initialize_vision_modules(model, options, projector=projector)
    if not projector_weights and projector == "qwen_merger":
        print(adopt_pretrained_merger(model))
    if projector_weights:
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

    torch.manual_seed(seed)
    fresh = type(model)(model.config)
    state = {k: v for k, v in fresh.state_dict().items() if part_of(k) is Part.LANGUAGE_MODEL}
    model.load_state_dict(state, strict=False)
    model.tie_weights()


def make_qwen_vl_perceiver(vision: str, language_model: str, output: str, seed: int = 0,
                           rope_theta: float | None = None, mrope_section: list[int] | None = None) -> Path:
    """An untrained Qwen-VL-native perceiver, built as the official release builds its perceiver (LB 548-570): a
    Qwen2.5-VL ViT whose merger MLP is rebuilt at the LM's width (random when that width differs from the
    pretrained merger's, pretrained otherwise) and a Qwen3 LM with sectioned M-RoPE."""
    from safetensors.torch import save_file


    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new --output")
    vit_config, lm_config = W.read_config_dict(vision), W.read_config_dict(language_model)
    if lm_config.get("model_type") != "qwen3":
        raise ValueError(f"--language-model {language_model}: the Qwen-VL perceiver's LM is a Qwen3 (got "
                         f"{lm_config.get('model_type')!r})")
    vision_config = dict(vit_config.get("vision_config", vit_config))
    vision_config.pop("model_type", None)
    pretrained_width = vision_config.get("out_hidden_size")
    vision_config["out_hidden_size"] = lm_config["hidden_size"]
    head_dim = lm_config.get("head_dim") or lm_config["hidden_size"] // lm_config["num_attention_heads"]
    text = vit_config.get("text_config") or vit_config
    rope = text.get("rope_scaling") or text.get("rope_parameters") or {}
    section = mrope_section or rope.get("mrope_section")
    if not section:
        raise ValueError(f"{vision} has no mrope_section (a vision-only config); pass --mrope-section, e.g. 16 24 24 "
                         f"for a head_dim of 128")
    tokenizer = load_tokenizer(language_model)
    missing = [t for t in DELIMITERS if t not in tokenizer.get_vocab()]
    if missing:  # Qwen3's tokenizer has them; a smaller LM's gets them, with embedding rows at the mean embedding
        tokenizer.add_tokens(missing, special_tokens=True)
        print(f"added {missing} to the LM's tokenizer (its embeddings grow to {len(tokenizer)} rows)")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in DELIMITERS}
    lm_config = {**lm_config, "vocab_size": max(lm_config["vocab_size"], len(tokenizer))}
    theta = float(rope_theta if rope_theta is not None else
                  lm_config.get("rope_theta") or (lm_config.get("rope_parameters") or {}).get("rope_theta"))
    spec = {"model_type": SPEC_TYPE, "source_format": "make-perceiver --native", "text_model": "qwen3_mrope",
            "vision_config": vision_config, "text_config": {k: v for k, v in lm_config.items() if k != "architectures"},
            "mrope_section": list(section), "rotary": {"head_dim": head_dim, "theta": theta},
            "image_token_id": ids["<|image_pad|>"], "vision_start_token_id": ids["<|vision_start|>"],
            "vision_end_token_id": ids["<|vision_end|>"],
            "origin": {"vision": vision, "language_model": language_model, "seed": seed}}
    torch.manual_seed(seed)
    model = QwenVLPerceiver(spec)

    visual = W.select_submodule_state(W.load_state_dict(vision), model.visual, Qwen2_5_VLTower.checkpoint_prefixes, vision)
    keep_mlp = pretrained_width == lm_config["hidden_size"]
    model.visual.load_state_dict({k: v for k, v in visual.items() if keep_mlp or "merger.mlp." not in k}, strict=keep_mlp)
    lm_state = {k[len("model."):]: v for k, v in W.load_state_dict(language_model).items() if k.startswith("model.")}
    embed = lm_state["embed_tokens.weight"]
    if embed.shape[0] < lm_config["vocab_size"]:
        extra = embed.mean(0, keepdim=True).expand(lm_config["vocab_size"] - embed.shape[0], -1)
        lm_state["embed_tokens.weight"] = torch.cat([embed, extra])
    model.language_model.load_state_dict(lm_state)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(spec, indent=1))
    (out / "preprocessor_config.json").write_text(json.dumps(OFFICIAL_PIXEL_LIMITS))
    tokenizer.save_pretrained(out)
    print(f"merger MLP: {'pretrained' if keep_mlp else 'randomly initialised'} (ViT merger width {pretrained_width}, "
          f"LM width {lm_config['hidden_size']}); rotary theta {theta:g}, mrope_section {list(section)}")
    return out
