"""The bench's models: DPA and its controlled baseline built from this project's own classes, with random
weights at the published sizes or scaled down.

`scaled_presets(target, scale)` shrinks every component's width, heads and depth by the same factor (head
widths and the vocabulary kept), so a CPU runs a compute-dominated configuration of the same shape.
`build_pair` writes the component folders (a Qwen2.5-VL ViT, the perceiver LM, the target) and assembles the
two LLaVA checkpoints exactly as training does: the perceiver VLM with `make-perceiver`, then each target
with its tower through llava's `initialize_vision_modules` (`llava_integration/assemble.py`). The bench
then runs them through the LLaVA model code (`PerceiverTower`, the towers, llava_arch and all).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from llava_dpa.analysis.cost import PRESETS
from llava_dpa.convert.perceiver import make_perceiver, make_qwen_vl_perceiver
from llava_dpa.llava_integration.assemble import assemble
from llava_dpa.perceiver.base import DPA_PREFIX
from llava_dpa.zoo.data import corpus_lines
from llava_dpa.zoo.tokenizers import qwen3_style_tokenizer


def _multiple(value: float, unit: int) -> int:
    return max(unit, int(round(value / unit)) * unit)


def scale_lm(config: dict, scale: float) -> dict:
    if scale == 1:
        return dict(config)
    c = dict(config)
    heads = max(1, round(c["num_attention_heads"] * scale))
    kv = max(1, round(c["num_key_value_heads"] * scale))
    while heads % kv:
        kv -= 1
    c.update(hidden_size=_multiple(c["hidden_size"] * scale, 64), intermediate_size=_multiple(c["intermediate_size"] * scale, 64),
             num_hidden_layers=max(1, round(c["num_hidden_layers"] * scale)), num_attention_heads=heads,
             num_key_value_heads=kv)
    return c


def scale_vit(config: dict, scale: float) -> dict:
    if scale == 1:
        return dict(config)
    c = dict(config)
    head_dim = c["hidden_size"] // c["num_heads"]
    heads = max(1, round(c["num_heads"] * scale))
    depth = max(1, round(c["depth"] * scale))
    every = max(1, round(depth / len(c["fullatt_block_indexes"])))
    c.update(hidden_size=heads * head_dim, num_heads=heads, depth=depth,
             intermediate_size=_multiple(c["intermediate_size"] * scale, 16),
             out_hidden_size=_multiple(c["out_hidden_size"] * scale, 64),
             fullatt_block_indexes=sorted({min(depth - 1, i) for i in range(every - 1, depth, every)} | {depth - 1}))
    return c


def scaled_presets(target: str, scale: float, perceiver_lm: str = "qwen3-0.6b", vit: str = "qwen2.5-vl-vit") -> dict:
    if not 0 < scale <= 1:
        raise ValueError(f"--scale {scale}: give a factor in (0, 1]")
    for name in (target, perceiver_lm, vit):
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return {"target": scale_lm(PRESETS[target], scale), "perceiver_lm": scale_lm(PRESETS[perceiver_lm], scale),
            "vit": scale_vit(PRESETS[vit], scale)}


def _save_lm(config: dict, folder: Path, tokenizer, dtype, seed: int, device: str = "cpu") -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    kw = dict(config)
    model_type = kw.pop("model_type")
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    cfg = AutoConfig.for_model(model_type, **kw, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    with torch.device(device):  # a GPU draws a 4B model's random weights in seconds, a CPU in minutes
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model


def _save_vit(config: dict, folder: Path, image_size: int, dtype, seed: int, device: str = "cpu") -> None:
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    kw = {k: v for k, v in config.items() if k != "model_type"}
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VisionTransformerPretrainedModel._from_config(Qwen2_5_VLVisionConfig(**kw)).to(dtype)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"tile_size": image_size}))


#: the perceiver forms the bench builds: the paper's LLaVA-format VLM on tiles, or the official release's
#: Qwen-VL-native one on whole images (its baseline then reads whole images too)
PERCEIVERS = ("llava", "qwen-vl")


def write_components(configs: dict, folder: str | Path, image_size: int = 448, dtype=torch.float32, seed: int = 0,
                     device: str = "cpu") -> dict:
    """The component folders with random weights: {"vit", "perceiver_lm", "target"} -> path. `configs` is
    `scaled_presets`' form; the target must be a Qwen3 (the tiny tokenizer is Qwen3's format)."""

    if configs["target"]["model_type"] != "qwen3":
        raise ValueError("the bench builds Qwen3 targets (its tiny tokenizer is Qwen3's format)")
    root = Path(folder)
    tokenizer = qwen3_style_tokenizer(corpus_lines())
    paths = {k: root / k for k in ("vit", "perceiver_lm", "target")}
    _save_vit(configs["vit"], paths["vit"], image_size, dtype, seed, device)
    _save_lm(configs["perceiver_lm"], paths["perceiver_lm"], tokenizer, dtype, seed + 1, device)
    _save_lm(configs["target"], paths["target"], tokenizer, dtype, seed + 2, device)
    return paths


def make_perceiver_of(components: dict, configs: dict, folder: str | Path, perceiver: str = "llava",
                      seed: int = 0) -> str:
    """The perceiver VLM of the components in `folder`, in the given form; returns the --vision_tower value."""

    if perceiver not in PERCEIVERS:
        raise ValueError(f"--perceiver {perceiver!r}: choose from {', '.join(PERCEIVERS)}")
    if perceiver == "llava":
        make_perceiver(str(components["vit"]), str(components["perceiver_lm"]), str(folder), seed=seed)
        return str(folder)
    # Qwen2.5-VL's M-RoPE sections for the kept head width (128: 16 + 24 + 24 rotary pairs)
    head_dim = configs["perceiver_lm"].get("head_dim", 128)
    make_qwen_vl_perceiver(str(components["vit"]), str(components["perceiver_lm"]), str(folder), seed=seed,
                           mrope_section=[head_dim // 8, head_dim * 3 // 16, head_dim * 3 // 16])

    return DPA_PREFIX + str(folder)


def assemble_pair(components: dict, configs: dict, folder: str | Path, dtype=torch.float32, seed: int = 0,
                  perceiver: str = "llava", tower: str | None = None) -> dict:
    """The perceiver (unless `tower`, an existing one's --vision_tower value, is given), then the DPA and
    baseline checkpoints of the components, assembled by llava's `initialize_vision_modules` as training does:
    {"DPA", "baseline", "tower"}."""
    from transformers import AutoTokenizer


    root = Path(folder)
    tower = tower or make_perceiver_of(components, configs, root / "perceiver", perceiver, seed)
    images = "square" if perceiver == "llava" else "native"
    tokenizer = AutoTokenizer.from_pretrained(components["target"])
    torch.manual_seed(seed)
    assemble(components["target"], tower, root / "dpa", tokenizer, projector="mlp2x_gelu", conv_version="qwen_3",
             image_aspect_ratio=images, dtype=dtype)
    torch.manual_seed(seed)
    assemble(components["target"], str(components["vit"]), root / "baseline", tokenizer, projector="mlp2x_gelu",
             conv_version="qwen_3", image_aspect_ratio=images, dtype=dtype)
    return {"DPA": str(root / "dpa"), "baseline": str(root / "baseline"), "tower": tower}


def build_pair(target: str, scale: float, folder: str | Path, image_size: int = 448, dtype=torch.float32,
               seed: int = 0, perceiver: str = "llava", device: str = "cpu") -> dict:
    """{"DPA": checkpoint, "baseline": checkpoint, "configs": the scaled component configs}."""
    if perceiver not in PERCEIVERS:
        raise ValueError(f"--perceiver {perceiver!r}: choose from {', '.join(PERCEIVERS)}")
    if PRESETS[target]["model_type"] != "qwen3":
        raise ValueError(f"--preset {target}: the bench builds Qwen3 targets (its tiny tokenizer is Qwen3's format)")
    configs = scaled_presets(target, scale)
    components = write_components(configs, folder, image_size, dtype, seed, device)
    pair = assemble_pair(components, configs, folder, dtype, seed, perceiver)
    return {"DPA": pair["DPA"], "baseline": pair["baseline"], "configs": configs, "perceiver": perceiver}


def describe(configs: dict) -> str:
    t, p, v = configs["target"], configs["perceiver_lm"], configs["vit"]
    return (f"target d={t['hidden_size']} L={t['num_hidden_layers']}, perceiver LM d={p['hidden_size']} "
            f"L={p['num_hidden_layers']}, ViT d={v['hidden_size']} L={v['depth']} (out {v['out_hidden_size']})")


def add_training_bench_arguments(p, image_size: int, batch_help: str = "--per_device_train_batch_size") -> None:
    """The arguments of a one-epoch training bench on the built pair (bench-packing)."""
    p.add_argument("--preset", default="qwen3-4b")
    p.add_argument("--scale", type=float, default=0.1)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8, help=batch_help)
    p.add_argument("--image-size", type=int, default=image_size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="show the training runs' output")
    p.add_argument("--output", default=None, help="also write the results as JSON here")


def add_step_bench_arguments(p, scale: float, text_tokens: int, repeats: int) -> None:
    """The arguments of the benches that time single steps of the built pair in one process (bench-cache,
    bench-frozen)."""
    p.add_argument("--preset", default="qwen3-4b")
    p.add_argument("--scale", type=float, default=scale)
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--text-tokens", type=int, default=text_tokens)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="also write the results as JSON here")


def run_environment(args, device: str) -> dict:
    """What a step bench's report records of where and how it ran."""
    import transformers

    return {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu", "dtype": args.dtype,
            "torch": torch.__version__, "transformers": transformers.__version__, "preset": args.preset,
            "scale": args.scale, "image_size": args.image_size, "text_tokens": args.text_tokens, "repeats": args.repeats}
