"""Every tower implements the LLaVA-NeXT interface and is chosen from its checkpoint's config."""
import json
from types import SimpleNamespace

import pytest
import torch
from conftest import tower_folder_weights
from PIL import Image

import llava_dpa  # noqa: F401
from llava_dpa.llava_integration.tower_registry import UnknownVisionTowerError, build_vision_tower
from llava_dpa.towers.clip import CLIPTower
from llava_dpa.towers.qwen2_5_vl import Qwen2_5_VLTower
from llava_dpa.towers.siglip import SigLIPTower
from llava_dpa.towers.siglip2 import SigLIP2Tower

pytestmark = pytest.mark.fast  # pure logic: no training subprocess


def args(name, layer=-2, feature="patch", **more):
    return SimpleNamespace(mm_vision_tower=name, mm_vision_select_layer=layer, mm_vision_select_feature=feature, **more)


@pytest.mark.parametrize("key,cls,layer,patches,width", [
    ("clip", CLIPTower, -2, 16, 64), ("siglip", SigLIPTower, -2, 16, 64), ("qwen2_5_vl_vit", Qwen2_5_VLTower, -1, 16, 64)])
def test_interface_shapes_and_class_from_config(zoo, key, cls, layer, patches, width):
    tower = build_vision_tower(args(zoo[key], layer))
    assert type(tower) is cls and tower.is_loaded
    assert (tower.hidden_size, tower.num_patches, tower.num_patches_per_side, tower.image_size) == (width, patches, 4, 32)
    assert tower.config.image_size == 32
    image = Image.new("RGB", (50, 30), (200, 10, 10))
    pixels = tower.image_processor.preprocess(image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32) and tower.image_processor.crop_size["height"] == 32
    batch = torch.cat([pixels, pixels.flip(-1)])
    feats = tower(batch)
    assert feats.shape == (2, patches, width) and feats.dtype == tower.dtype
    listed = tower([pixels[0], pixels[0].flip(-1)])
    assert [f.shape for f in listed] == [(1, patches, width)] * 2
    assert torch.allclose(listed[1][0], feats[1], atol=1e-5)
    assert tower.dummy_feature.shape == (1, width) and tower.device.type == "cpu"


def test_clip_select_layer_and_feature_follow_llava(zoo):
    from transformers import CLIPVisionModel

    ref = CLIPVisionModel.from_pretrained(zoo["clip"])
    x = torch.randn(2, 3, 32, 32)
    hidden = ref(x, output_hidden_states=True).hidden_states
    patch = build_vision_tower(args(zoo["clip"], -2, "patch"))
    both = build_vision_tower(args(zoo["clip"], -1, "cls_patch"))
    assert torch.allclose(patch(x), hidden[-2][:, 1:], atol=1e-6)
    assert torch.allclose(both(x), hidden[-1], atol=1e-6)
    with pytest.raises(ValueError, match="mm_vision_select_feature"):
        build_vision_tower(args(zoo["clip"], -2, "bogus"))


def test_qwen2_5_vl_tower_equals_the_reference_patch_order(zoo):
    """Our patchify of a [N,3,H,W] tile gives exactly what Qwen2.5-VL computes from its own processor."""
    from transformers import Qwen2VLImageProcessor
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    tower = build_vision_tower(args(zoo["qwen2_5_vl_vit"], -1))
    image = Image.new("RGB", (32, 32))
    image.putdata([((7 * i) % 256, (13 * i) % 256, (29 * i) % 256) for i in range(32 * 32)])
    proc = Qwen2VLImageProcessor(do_resize=False, patch_size=4, merge_size=2, temporal_patch_size=2,
                                 image_mean=tower.image_processor.image_mean, image_std=tower.image_processor.image_std)
    ref_in = proc(images=image, return_tensors="pt")
    ref_model = Qwen2_5_VisionTransformerPretrainedModel.from_pretrained(zoo["qwen2_5_vl_vit"])
    expected = ref_model(ref_in["pixel_values"], grid_thw=ref_in["image_grid_thw"])
    expected = expected if torch.is_tensor(expected) else expected.pooler_output  # transformers 5 (independent of our helper)
    ours = tower(tower.image_processor.preprocess(image, return_tensors="pt")["pixel_values"])
    assert torch.allclose(ours[0], expected, atol=1e-4)
    with pytest.raises(ValueError, match="mm_vision_select_layer -1"):
        build_vision_tower(args(zoo["qwen2_5_vl_vit"], -2))


def test_siglip2_naflex_tower_at_a_fixed_tile(tmp_path):
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    config = Siglip2VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 patch_size=8, num_patches=16)
    Siglip2VisionModel(config).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"tile_size": 32}))
    tower = build_vision_tower(args(str(tmp_path), -1))
    assert type(tower) is SigLIP2Tower and tower.num_patches == 16 and tower.hidden_size == 64
    assert tower(torch.randn(3, 3, 32, 32)).shape == (3, 16, 64)


def test_delay_load_builds_from_config_and_loads_weights_exactly_once(zoo, weight_reads):
    tower = build_vision_tower(args(zoo["clip"]), delay_load=True)
    assert not tower.is_loaded and weight_reads == []
    tower.load_model()
    tower.load_model()
    assert tower.is_loaded and weight_reads == [zoo["clip"]]
    saved = tower_folder_weights(zoo["clip"])
    ours = tower.vision_tower.state_dict()
    assert set(ours) == set(saved) and all(torch.equal(ours[k], saved[k]) for k in ours)


def test_unknown_towers_fail_clearly(tmp_path):
    with pytest.raises(UnknownVisionTowerError, match="does not exist"):
        build_vision_tower(args(str(tmp_path / "missing")))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnknownVisionTowerError, match="neither a known ViT"):
        build_vision_tower(args(str(tmp_path)))


def test_attention_implementation_is_flash_attention_only_on_a_gpu_with_it_and_can_be_forced(zoo, monkeypatch):
    """Whatever this machine has: each combination of (flash-attn installed, CUDA present) is set here."""
    import importlib.util

    from llava_dpa.towers.base import attention_implementation

    real_find_spec = importlib.util.find_spec
    for installed, gpu, expected in ((False, False, "sdpa"), (True, False, "sdpa"), (False, True, "sdpa"),
                                     (True, True, "flash_attention_2")):
        def find_spec(name, *rest, installed=installed):
            if name == "flash_attn":
                return object() if installed else None
            return real_find_spec(name, *rest)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)
        monkeypatch.setattr(torch.cuda, "is_available", lambda gpu=gpu: gpu)
        assert attention_implementation() == expected, (installed, gpu)
        assert attention_implementation("eager") == "eager"
    monkeypatch.undo()
    tower = build_vision_tower(args(zoo["clip"], tower_attn_implementation="eager"))
    assert tower.vision_tower.config._attn_implementation == "eager"
