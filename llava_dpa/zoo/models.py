"""Tiny random-weight models built from configs: the same classes as the real checkpoints, small
enough for CPU tests (widths >= 64 so bitsandbytes' CPU 4-bit packing works)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from llava_dpa.perceiver.qwen_vl import SPEC_TYPE, QwenVLPerceiver

TILE = 32  # pixels per tile for every tiny tower
WIDTH = 64


def _save_lm(model, tokenizer, folder: Path, eos_id: int, pad_id: int | None):
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=tokenizer.bos_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def tiny_qwen3(tokenizer, folder: Path, seed: int = 0, layers: int = 2):
    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=2 * WIDTH,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=1_000_000.0,
                         bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id)
    model = Qwen3ForCausalLM(config)
    _save_lm(model, tokenizer, folder, config.eos_token_id, config.pad_token_id)


def tiny_llama(tokenizer, folder: Path, seed: int = 0, layers: int = 2):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=2 * WIDTH,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=131072, tie_word_embeddings=True, rope_theta=500_000.0,
                         rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.convert_tokens_to_ids("<|eot_id|>"))
    model = LlamaForCausalLM(config)
    _save_lm(model, tokenizer, folder, config.eos_token_id, None)


def tiny_clip(folder: Path, seed: int = 0):
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2,
                              num_attention_heads=4, image_size=TILE, patch_size=8, projection_dim=WIDTH)
    CLIPVisionModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE}).save_pretrained(folder)


def tiny_siglip(folder: Path, seed: int = 0):
    torch.manual_seed(seed)
    config = SiglipVisionConfig(hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2,
                                num_attention_heads=4, image_size=TILE, patch_size=8)
    SiglipVisionModel(config).save_pretrained(folder)
    SiglipImageProcessor(size={"height": TILE, "width": TILE}).save_pretrained(folder)


def tiny_qwen2_5_vl_vision(folder: Path, seed: int = 0, out_hidden_size: int = WIDTH):
    """A standalone Qwen2.5-VL vision folder: its vision config (model_type qwen2_5_vl), weights and
    the fixed tile size."""
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    torch.manual_seed(seed)
    config = Qwen2_5_VLVisionConfig(depth=2, hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_heads=4,
                                    in_channels=3, patch_size=4, spatial_merge_size=2, temporal_patch_size=2,
                                    window_size=16, fullatt_block_indexes=[1], out_hidden_size=out_hidden_size)
    model = Qwen2_5_VisionTransformerPretrainedModel._from_config(config)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"tile_size": TILE}))


QWEN_VL_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
NATIVE_PIXELS = {"min_pixels": 256, "max_pixels": 4096}  # 16x16 to 64x64: 4 to 64 visual tokens per image


def qwen_vl_tokenizer(tokenizer):
    """A Qwen3-style tiny tokenizer with Qwen2.5-VL's vision tokens added (as Qwen2.5-VL's has them)."""
    tokenizer.add_tokens(QWEN_VL_TOKENS, special_tokens=True)
    return tokenizer


def _tiny_vision_config(out_hidden_size: int) -> dict:
    return dict(depth=2, hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_heads=4, in_channels=3, patch_size=4,
                spatial_merge_size=2, temporal_patch_size=2, window_size=16, fullatt_block_indexes=[1],
                out_hidden_size=out_hidden_size)


def tiny_native_perceiver(tokenizer, folder: Path, seed: int = 0, rope_theta: float = 10_000.0):
    """The official DPA perceiver's architecture, tiny: a Qwen2.5-VL ViT whose merger outputs the LM's width and a
    Qwen3 LM with sectioned M-RoPE, in this project's perceiver format (what import-official writes)."""
    from safetensors.torch import save_file


    tokenizer = qwen_vl_tokenizer(tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_VL_TOKENS}
    text = dict(vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                tie_word_embeddings=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id)
    spec = {"model_type": SPEC_TYPE, "source_format": "tiny zoo", "text_model": "qwen3_mrope",
            "vision_config": _tiny_vision_config(WIDTH), "text_config": text, "mrope_section": [2, 3, 3],
            "rotary": {"head_dim": 16, "theta": rope_theta},
            "image_token_id": ids["<|image_pad|>"], "vision_start_token_id": ids["<|vision_start|>"],
            "vision_end_token_id": ids["<|vision_end|>"]}
    torch.manual_seed(seed)
    model = QwenVLPerceiver(spec)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(spec, indent=1))
    (folder / "preprocessor_config.json").write_text(json.dumps(NATIVE_PIXELS))
    tokenizer.save_pretrained(folder)


def tiny_qwen2_5_vl(tokenizer, folder: Path, seed: int = 0):
    """A stock Hugging Face Qwen2.5-VL checkpoint, tiny (both the baseline's ViT source and a perceiver)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = qwen_vl_tokenizer(tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_VL_TOKENS}
    text = dict(vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1_000_000.0,
                rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, tie_word_embeddings=True,
                bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(vision_config=_tiny_vision_config(WIDTH), text_config=text,
                              image_token_id=ids["<|image_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"], video_token_id=ids["<|video_pad|>"])
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(NATIVE_PIXELS))
    tokenizer.save_pretrained(folder)


def tiny_qwen3_vl(tokenizer, folder: Path, seed: int = 0):
    """A stock Hugging Face Qwen3-VL checkpoint, tiny (a Qwen-VL perceiver with deepstack features)."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    tokenizer = qwen_vl_tokenizer(tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_VL_TOKENS}
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, in_channels=3, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=WIDTH, num_position_embeddings=64,
                  deepstack_visual_indexes=[0])
    text = dict(vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                rope_theta=1_000_000.0, rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                      "mrope_interleaved": True},
                bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    torch.manual_seed(seed)
    config = Qwen3VLConfig(vision_config=vision, text_config=text, image_token_id=ids["<|image_pad|>"],
                           vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                           video_token_id=ids["<|video_pad|>"], tie_word_embeddings=True)
    Qwen3VLForConditionalGeneration(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({**NATIVE_PIXELS, "image_mean": [0.5] * 3,
                                                                 "image_std": [0.5] * 3}))
    tokenizer.save_pretrained(folder)
