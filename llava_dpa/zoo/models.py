"""Tiny random-weight models built from configs: the same classes as the real checkpoints, small
enough for CPU tests (widths >= 64 so bitsandbytes' CPU 4-bit packing works)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, GenerationConfig, LlamaConfig,
                          LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM, SiglipImageProcessor, SiglipVisionConfig,
                          SiglipVisionModel)

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
