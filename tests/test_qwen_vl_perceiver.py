"""The Qwen-VL-native perceiver and native resolution, against Hugging Face's own Qwen2.5-VL classes."""
from __future__ import annotations

import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run, PY


def images(*sizes):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def tower_for(name, zoo, **args):
    from llava_dpa.data.tokenization import load_tokenizer
    from llava_dpa.llava_integration.tower_registry import build_vision_tower

    tower = build_vision_tower(SimpleNamespace(mm_vision_tower=name, mm_vision_select_layer=-1, **args))
    if tower.is_perceiver:
        tower.attach_tokenizers(load_tokenizer(zoo["qwen3_lm"]), perceiver_tokenizer_dir=name.split(":", 1)[-1])
    return tower


@pytest.mark.fast
def test_positions_equal_transformers_get_rope_index(zoo):
    from transformers import Qwen2_5_VLModel

    from llava_dpa.perceiver.mrope import image_positions

    model = Qwen2_5_VLModel.from_pretrained(zoo["qwen2_5_vl"])
    cfg = model.config
    pad, start, end = cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id
    grids = [(1, 4, 6), (1, 6, 2), (1, 2, 2)]
    rows = [[5, 6, start] + [pad] * 6 + [end, 7, start] + [pad] * 3 + [end, 8, 9],
            [5, start] + [pad] * 1 + [end, 7, 7, 7]]
    width = max(map(len, rows))
    ids = torch.zeros((2, width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):  # left padding, as the official processor pads
        ids[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
    kw = {"mm_token_type_ids": (ids == pad).int()} if "mm_token_type_ids" in inspect.signature(model.get_rope_index).parameters else {}
    want, _ = model.get_rope_index(ids, image_grid_thw=torch.tensor(grids), attention_mask=mask, **kw)
    got = image_positions(ids, mask, grids, pad, cfg.vision_config.spatial_merge_size)
    assert torch.equal(got[:, mask.bool()], want[:, mask.bool()])


@pytest.mark.fast
def test_native_processor_equals_qwen2_vl_image_processor():
    import transformers

    try:  # transformers 5 without torchvision keeps its PIL processor in its own module
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize
    except ImportError:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf_smart_resize

    from llava_dpa.data.native_resolution import NativeResolutionProcessor, patchify, smart_resize

    for h, w in ((56, 112), (300, 41), (1000, 1000), (20, 30)):
        assert smart_resize(h, w, 28, 3136, 262144) == tuple(hf_smart_resize(h, w, 28, 3136, 262144))
    cls = getattr(transformers, "Qwen2VLImageProcessorPil", None) or transformers.Qwen2VLImageProcessor
    hf = cls(min_pixels=3136, max_pixels=262144) if transformers.__version__.startswith("4.") else \
        cls(size={"shortest_edge": 3136, "longest_edge": 262144})
    ours = NativeResolutionProcessor(14, 2, 3136, 262144)
    for image in images((56, 112), (90, 61)):
        want = hf(images=[image], return_tensors="pt")
        mine = ours.preprocess(image)["pixel_values"][0]
        grid = want["image_grid_thw"][0].tolist()
        assert [1, mine.shape[1] // 14, mine.shape[2] // 14] == grid
        assert (patchify(mine, 14, 2, 2) - want["pixel_values"]).abs().max() < 1e-5
        assert ours.tokens_for(*image.size) == grid[1] * grid[2] // 4


def reference_states(reference, tower, pixels, features):
    """Hugging Face's own model on the sequence the tower built: prefix, then each image's delimiters and pads;
    the hidden states from the first image on."""
    from llava_dpa.data.native_resolution import patchify
    from llava_dpa.perceiver.mrope import image_positions

    spec = tower.spec
    counts = [f.shape[0] - 2 for f in features]
    ids = torch.tensor([tower.prefix_ids + sum(([spec["vision_start_token_id"]] + [spec["image_token_id"]] * n +
                                                [spec["vision_end_token_id"]] for n in counts), [])])
    grids = [(1, x.shape[1] // 4, x.shape[2] // 4) for x in pixels]
    with torch.no_grad():
        out = reference.eval()(input_ids=ids, attention_mask=torch.ones_like(ids), image_grid_thw=torch.tensor(grids),
                               pixel_values=torch.cat([patchify(x, 4, 2, 2) for x in pixels]),
                               position_ids=image_positions(ids, None, grids, spec["image_token_id"], 2))
    return out.last_hidden_state[0, len(tower.prefix_ids):]


@pytest.mark.fast
def test_stock_qwen2_5_vl_features_equal_its_own_model(zoo):
    from transformers import Qwen2_5_VLModel

    tower = tower_for("dpa:" + zoo["qwen2_5_vl"], zoo)
    assert type(tower).__name__ == "QwenVLPerceiverTower"
    pixels = tower.image_processor(images((24, 40), (40, 24)))["pixel_values"]
    features = tower(pixels, contexts=[[[], []]])
    counts = [f.shape[0] - 2 for f in features]
    assert counts == [15, 15] and all(f.shape[1] == tower.hidden_size for f in features)
    reference = Qwen2_5_VLModel.from_pretrained(zoo["qwen2_5_vl"], attn_implementation="sdpa")
    hidden = reference_states(reference, tower, pixels, features)
    assert (hidden - torch.cat(features)).abs().max() < 1e-5
    only = tower_for("dpa:" + zoo["qwen2_5_vl"], zoo, perceiver_visual_positions_only=True)(pixels, contexts=[[[], []]])
    assert (torch.cat(only) - torch.cat([f[1:-1] for f in features])).abs().max() < 1e-6


@pytest.mark.fast
def test_stock_qwen3_vl_features_equal_its_own_model(zoo):
    """Qwen3-VL: interleaved M-RoPE and the ViT's deepstack features added to the LM's first layers."""
    from transformers import Qwen3VLForConditionalGeneration

    tower = tower_for("dpa:" + zoo["qwen3_vl"], zoo)
    assert tower.spec["text_model"] == "qwen3_vl_text" and tower.image_processor.image_mean == [0.5] * 3
    pixels = tower.image_processor(images((24, 40), (40, 16)))["pixel_values"]
    features = tower(pixels, contexts=[[[], []]])
    # the whole model, then its inner one: 4.57's Qwen3VLModel.from_pretrained misses the saved `model.` prefix
    reference = Qwen3VLForConditionalGeneration.from_pretrained(zoo["qwen3_vl"], attn_implementation="sdpa").model
    hidden = reference_states(reference, tower, pixels, features)
    assert (hidden - torch.cat(features)).abs().max() < 1e-5


@pytest.mark.fast
def test_selection_and_bad_input(zoo, tmp_path):
    from llava_dpa.perceiver.qwen_vl import QwenVLPerceiverError
    from llava_dpa.llava_integration.tower_registry import tower_class_for
    from llava_dpa.data.native_resolution import NativeResolutionError, NativeResolutionProcessor

    assert tower_class_for(zoo["qwen2_5_vl"]).__name__ == "Qwen2_5_VLTower"        # bare: the baseline's ViT
    assert tower_class_for("dpa:" + zoo["qwen2_5_vl"]).__name__ == "QwenVLPerceiverTower"
    assert tower_class_for(zoo["native_perceiver"]).__name__ == "QwenVLPerceiverTower"
    with pytest.raises(NativeResolutionError, match="--max_pixels 100 is below the ViT's minimum"):
        NativeResolutionProcessor(14, 2, None, 100)
    tower = tower_for("dpa:" + zoo["native_perceiver"], zoo)
    from llava_dpa.data.tokenization import load_tokenizer
    with pytest.raises(QwenVLPerceiverError, match=r"lacks the vision tokens \['<\|vision_start\|>'"):
        tower.check_delimiters(load_tokenizer(zoo["qwen3_lm"]), zoo["qwen3_lm"])
    # a prompt that spells the image slots out (the release's data format) instead of <image>
    tower.target_tokenizer = load_tokenizer(zoo["native_perceiver"])
    spelled = tower.target_tokenizer("<|vision_start|><|image_pad|><|vision_end|>Describe it.").input_ids
    with pytest.raises(QwenVLPerceiverError, match="already holds image slots"):
        tower.sample_contexts(torch.tensor([spelled]), None)


@pytest.mark.fast
@pytest.mark.parametrize("flags, message", [
    (["--image_aspect_ratio", "anyres", "--image_grid_pinpoints", "[(32, 64)]"], "--image_aspect_ratio anyres with the Qwen-VL perceiver"),
    (["--image_grid_pinpoints", "[(32, 64)]"], "--image_grid_pinpoints"),
    (["--mm_patch_merge_type", "spatial_unpad"], "--mm_patch_merge_type spatial_unpad"),
    (["--perceiver_instruction_context", "True"], "--perceiver_instruction_context"),
])
def test_qwen_vl_perceiver_refuses_tiling_flags(zoo, tmp_path, flags, message):
    from llava_dpa.training.errors import RunConfigError
    from llava_dpa.training.resolution import parse_run_config

    argv = ["--model_name_or_path", zoo["qwen3_lm"], "--vision_tower", "dpa:" + zoo["native_perceiver"], "--version",
            "qwen_3", "--data_path", zoo["stage2_data"], "--output_dir", str(tmp_path / "o"), "--stage", "2"] + flags
    with pytest.raises(RunConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_run_config(argv)


@pytest.mark.fast
def test_official_projectors(zoo):
    from llava_dpa.projectors.official import adopt_pretrained_merger, build_aligner, build_merger

    aligner = build_aligner(SimpleNamespace(mm_hidden_size=256, hidden_size=512))
    assert [type(m).__name__ for m in aligner] == ["Linear", "ReLU", "Linear"]
    assert abs(aligner[0].weight.std().item() - 0.02) < 0.002 and aligner[2].bias.abs().max() == 0
    tower = tower_for(zoo["qwen2_5_vl_vit"], zoo, mm_projector_type="qwen_merger", image_aspect_ratio="native")
    assert tower.hidden_size == 4 * 64 and tower.pretrained_merger_mlp is not None
    feats = tower(tower.image_processor(images((16, 24)))["pixel_values"])
    assert feats[0].shape[1] == 256 and feats[0].shape[0] == tower.tokens_for(24, 16)
    for width, adopted in ((64, True), (96, False)):  # the pretrained merger outputs 64
        config = SimpleNamespace(mm_projector_type="qwen_merger", mm_hidden_size=256, hidden_size=width)
        projector = build_merger(config)
        model = SimpleNamespace(config=config, get_vision_tower=lambda: tower,
                                get_model=lambda: SimpleNamespace(mm_projector=projector))
        message = adopt_pretrained_merger(model)
        assert ("pretrained merger" in message and "randomly" not in message) is adopted
        if adopted:  # merger MLP as the projector reproduces the tower's own merged output
            full = tower_for(zoo["qwen2_5_vl_vit"], zoo, image_aspect_ratio="native")
            want = full(full.image_processor(images((16, 24)))["pixel_values"])[0]
            assert (projector(feats[0]) - want).abs().max() < 1e-5


@pytest.mark.fast
def test_make_perceiver_native_rebuilds_the_merger_at_the_lm_width(zoo, tmp_path):
    from safetensors.torch import load_file

    from llava_dpa.convert.perceiver import make_qwen_vl_perceiver
    from llava_dpa.zoo.models import tiny_qwen2_5_vl_vision

    for width, pretrained in ((64, True), (32, False)):  # the LM is 64 wide
        vit = tmp_path / f"vit{width}"
        tiny_qwen2_5_vl_vision(vit, out_hidden_size=width)
        out = make_qwen_vl_perceiver(str(vit), zoo["qwen3_lm"], str(tmp_path / f"p{width}"), mrope_section=[2, 3, 3])
        made, original = load_file(out / "model.safetensors"), load_file(vit / "model.safetensors")
        assert torch.equal(made["visual.merger.ln_q.weight"], original["merger.ln_q.weight"])
        assert torch.equal(made["visual.blocks.0.attn.qkv.weight"], original["blocks.0.attn.qkv.weight"])
        same = made["visual.merger.mlp.2.weight"].shape == original["merger.mlp.2.weight"].shape and \
            torch.equal(made["visual.merger.mlp.2.weight"], original["merger.mlp.2.weight"])
        assert same is pretrained and made["visual.merger.mlp.2.weight"].shape[0] == 64
        tower = tower_for("dpa:" + str(out), zoo)
        features = tower(tower.image_processor(images((16, 24)))["pixel_values"], contexts=[[[]]])
        assert features[0].shape == (tower.tokens_for(24, 16), 64)
