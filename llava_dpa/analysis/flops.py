"""Analytic training FLOPs per sample (paper Table 5), from the presets' configs.

Forward FLOPs: 2 x (weights used per token) x tokens for every linear layer, plus attention
4 x T^2 x (heads x head_dim) per layer (scores and weighted sum, without the causal halving); the ViT's
windowed layers attend within a window. Training: a module whose weights train costs 3x its forward
(forward, activation gradients, weight gradients); a frozen module that gradients pass through costs 2x; a
frozen module before every trainable one costs 1x. Stage 1 trains the projector(s) only; stage 2 trains
everything. Embedding lookups are free; the target's LM head runs on every position in training.
"""
from __future__ import annotations

from llava_dpa.analysis.cost import PRESETS, mlp2x


def config_of(preset) -> dict:
    """A preset name, or a config dict of the same keys (the bench's scaled configurations)."""
    return PRESETS[preset] if isinstance(preset, str) else preset


def lm_forward(preset, tokens: int, head: bool) -> float:
    c = config_of(preset)
    d, layers, hd = c["hidden_size"], c["num_hidden_layers"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * c["intermediate_size"]
    flops = 2 * layers * per_layer * tokens + 4 * layers * tokens ** 2 * q
    if head:
        flops += 2 * d * c["vocab_size"] * tokens
    return float(flops)


def vit_forward(preset, image_size: int) -> tuple[float, int]:
    """(FLOPs, output tokens) of the Qwen2.5-VL ViT on one square image."""
    c = config_of(preset)
    d, merge, patch = c["hidden_size"], c["spatial_merge_size"], c["patch_size"]
    side = image_size // patch
    n = side * side
    window = (c["window_size"] // patch) ** 2
    per_layer = 4 * d * d + 3 * d * c["intermediate_size"]  # qkv + proj, gated MLP
    full = set(c["fullatt_block_indexes"])
    attention = sum(4 * n * (n if i in full else min(window, n)) * d for i in range(c["depth"]))
    embed = 2 * n * (3 * c["temporal_patch_size"] * patch * patch) * d
    merged_in = d * merge * merge
    merger = 2 * (n // (merge * merge)) * (merged_in * merged_in + merged_in * c["out_hidden_size"])
    return float(2 * c["depth"] * per_layer * n + attention + embed + merger), n // (merge * merge)


def training_flops(target, perceiver_lm="qwen3-0.6b", vit="qwen2.5-vl-vit",
                   image_size: int = 448, tiles: int = 1, text_tokens: int = 512, prefix_tokens: int = 8,
                   native: bool = False, delimiters: int = 2) -> dict:
    """Per-sample FLOPs by component, forward and per training stage, for DPA and its baseline.

    native: the Qwen-VL-native perceiver (the official release's form) instead of the LLaVA-format one: the
    ViT's merger projects straight to the perceiver LM's width (no perceiver projector), the perceiver LM also
    reads the image's `delimiters` (two; its features keep them unless --perceiver_visual_positions_only), and
    the target receives those N + delimiters features."""
    vit_f, visual = vit_forward(vit, image_size)
    vit_f, visual = vit_f * tiles, visual * tiles
    d_vit, d_p, d_t = (config_of(vit)["out_hidden_size"], config_of(perceiver_lm)["hidden_size"],
                       config_of(target)["hidden_size"])
    target_tokens = visual + text_tokens
    fwd = {
        "vit": vit_f,
        "perceiver_projector": 2.0 * mlp2x(d_vit, d_p) * visual,
        "perceiver_lm": lm_forward(perceiver_lm, visual // tiles + prefix_tokens, head=False) * tiles,
        "alignment_projector": 2.0 * mlp2x(d_p, d_t) * visual,
        "baseline_projector": 2.0 * mlp2x(d_vit, d_t) * visual,
        "target": lm_forward(target, target_tokens, head=True),
    }
    dpa_fwd = dict(fwd)
    if native:
        merged_at_lm, _ = vit_forward({**config_of(vit), "out_hidden_size": d_p}, image_size)
        dpa_fwd.update(vit=merged_at_lm * tiles, perceiver_projector=0.0,
                       perceiver_lm=lm_forward(perceiver_lm, visual // tiles + prefix_tokens + 2, head=False) * tiles,
                       alignment_projector=2.0 * mlp2x(d_p, d_t) * (visual + delimiters * tiles),
                       target=lm_forward(target, target_tokens + delimiters * tiles, head=True))
    dpa_parts = ["vit", "perceiver_projector", "perceiver_lm", "alignment_projector", "target"]
    base_parts = ["vit", "baseline_projector", "target"]
    # stage 1: projectors train; the target passes gradients back to them; everything before is frozen
    stage1 = {"vit": 1, "perceiver_projector": 1, "perceiver_lm": 1, "alignment_projector": 3,
              "baseline_projector": 3, "target": 2}
    result = {}
    for name, parts, f in (("dpa", dpa_parts, dpa_fwd), ("baseline", base_parts, fwd)):
        result[name] = {
            "forward": {p: f[p] for p in parts},
            "stage1": {p: f[p] * stage1[p] for p in parts},
            "stage2": {p: f[p] * 3 for p in parts},
        }
        for key in ("forward", "stage1", "stage2"):
            result[name][key]["total"] = sum(result[name][key].values())
    result["ratio_dpa_over_baseline"] = {k: result["dpa"][k]["total"] / result["baseline"][k]["total"]
                                         for k in ("forward", "stage1", "stage2")}
    result["tokens"] = {"visual": visual, "text": text_tokens, "perceiver_per_tile": visual // tiles + prefix_tokens + (2 if native else 0)}
    return result
