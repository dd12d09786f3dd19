"""Model sizes for the cost table (paper Table 5), from configs alone (meta device, no weights).

Presets are the published configs of the paper's models. Sizes count every parameter once, except that
the perceiver's LM head is counted even when tied to its embeddings (the perceiver is a full VLM; the
paper's 5.5B and 34.2B DPA sizes include it: 4.70B + 0.60B + 0.16B + projectors; without it they read
5.30B and 34.04B).

Against the paper: 4B 4.70 / 5.46 (paper 4.7 / 5.5), 32B 33.47 / 34.22 (paper 33.4 / 34.2). The 32B
baseline differs by 0.07B: ViT + target alone is 33.43B, so the paper's figure leaves out (or truncates
away) the 37M-parameter alignment projector (2048 -> 5120 -> 5120). The paper's ratios (1.17, 1.02) are
those of its one-decimal sizes.
"""
from __future__ import annotations

import torch

PRESETS = {
    "qwen3-0.6b": dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                       tie_word_embeddings=True),
    "qwen3-4b": dict(model_type="qwen3", hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                     tie_word_embeddings=True),
    "qwen3-32b": dict(model_type="qwen3", hidden_size=5120, intermediate_size=25600, num_hidden_layers=64,
                      num_attention_heads=64, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                      tie_word_embeddings=False),
    "llama-3.2-3b": dict(model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                         tie_word_embeddings=True),
    "qwen2.5-vl-vit": dict(model_type="qwen2_5_vl", depth=32, hidden_size=1280, intermediate_size=3420,
                           num_heads=16, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           out_hidden_size=2048, window_size=112, fullatt_block_indexes=[7, 15, 23, 31]),
}


def _build(preset: dict):
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(preset)
    model_type = kw.pop("model_type")
    with torch.device("meta"):
        if model_type == "qwen2_5_vl":
            from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
            from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

            return Qwen2_5_VisionTransformerPretrainedModel._from_config(Qwen2_5_VLVisionConfig(**kw))
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kw))


def count(preset_name: str, count_tied_head: bool = False) -> int:
    model = _build(PRESETS[preset_name])
    total = sum(p.numel() for p in model.parameters())  # shared (tied) tensors appear once
    if count_tied_head and getattr(model.config, "tie_word_embeddings", False):
        total += model.get_output_embeddings().weight.numel()
    return total


def mlp2x(d_in: int, d_out: int) -> int:
    return d_in * d_out + d_out + d_out * d_out + d_out


def sizes(target: str, vit: str = "qwen2.5-vl-vit", perceiver_lm: str = "qwen3-0.6b") -> dict[str, int]:
    """Baseline (ViT + projector + target) and DPA (perceiver: ViT + projector + LM, then projector + target)."""
    d_vit = PRESETS[vit]["out_hidden_size"]
    d_p = PRESETS[perceiver_lm]["hidden_size"]
    d_t = PRESETS[target]["hidden_size"]
    target_n, vit_n = count(target), count(vit)
    baseline = vit_n + mlp2x(d_vit, d_t) + target_n
    perceiver = vit_n + mlp2x(d_vit, d_p) + count(perceiver_lm, count_tied_head=True)
    dpa = perceiver + mlp2x(d_p, d_t) + target_n
    return {"baseline": baseline, "dpa": dpa, "perceiver": perceiver, "target": target_n, "vit": vit_n}
