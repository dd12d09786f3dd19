"""Cached features for stage 1: the loss with the cache equals the loss without it, for a baseline and a DPA
model; a cache built with another tower, preprocessing or perceiver template is refused."""
from __future__ import annotations

import pytest
from conftest import in_process_logged, losses, train_cmd

from llava_dpa.cli import main
from llava_dpa.training.errors import RunConfigError
from llava_dpa.training.train import train


def cache(zoo, tower, out, select_layer, capsys):
    code = main(["cache-features", "--vision_tower", tower, "--data_path", zoo["stage1_data"], "--image_folder",
                 zoo["images"], "--image_aspect_ratio", "square", "--mm_vision_select_layer", str(select_layer),
                 "--output", str(out), "--shard-size", "4"])
    assert code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("kind", ["baseline", "dpa"])
def test_stage1_loss_with_the_cache_equals_the_loss_without(zoo, perceiver, baseline_stage1, dpa_stage1, tmp_path,
                                                            capsys, kind):
    # the live run is the session's stage-1 fixture: the same command without --feature_cache
    tower, layer, live = (zoo["clip"], -2, baseline_stage1) if kind == "baseline" else (str(perceiver), -1, dpa_stage1)
    assert "images computed" in cache(zoo, tower, tmp_path / "cache", layer, capsys)
    again = cache(zoo, tower, tmp_path / "cache", layer, capsys)  # resumable: nothing left to compute
    assert "0 images computed" in again
    cached = tmp_path / "cached"
    printed = in_process_logged(train_cmd(zoo, cached, stage=1, tower=tower, extra=[
        "--feature_cache", str(tmp_path / "cache")]))
    assert "skipped_samples': 0" in printed
    a, b = losses(live), losses(cached)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    assert all(abs(a[s] - b[s]) <= 1e-5 * max(1.0, abs(a[s])) for s in a), (a, b)


def test_a_cache_of_another_tower_or_setting_is_refused(zoo, perceiver, tmp_path, capsys):
    cache(zoo, zoo["clip"], tmp_path / "clip_cache", -2, capsys)
    with pytest.raises(RunConfigError, match="does not match this run: it was built with a different tower"):
        train(argv=train_cmd(zoo, tmp_path / "o", stage=1, tower=zoo["siglip"], extra=[
            "--feature_cache", str(tmp_path / "clip_cache")])[3:])
    with pytest.raises(RunConfigError, match="--feature_cache with a tower that trains"):
        train(argv=train_cmd(zoo, tmp_path / "p", stage=2, tower=zoo["clip"], extra=[
            "--feature_cache", str(tmp_path / "clip_cache"), "--unfreeze_mm_vision_tower", "True"])[3:])
    assert main(["cache-features", "--vision_tower", "dpa:" + zoo["native_perceiver"], "--data_path",
                 zoo["stage1_data"], "--image_folder", zoo["images"], "--output", str(tmp_path / "q")]) == 2
    assert "reads each sample's text" in capsys.readouterr().err


def test_a_batch_of_tower_features_takes_the_pixels_path(baseline_stage2):
    """TowerFeatures (what a cache hands over) go through the same projector, tile merge and splice as the
    pixels they came from: one-tile images stacked, and a list mixing tiled and one-tile images."""
    import torch

    from llava_dpa.data.tower_features import TowerFeatures
    from llava_dpa.llava_integration.multimodal_inputs import image_features
    from llava_dpa.loading import load_pretrained_model

    _, model, processor, _ = load_pretrained_model(str(baseline_stage2), None, "x", device="cpu")
    model.eval()
    tower, side = model.get_vision_tower(), processor.crop_size["height"]
    torch.manual_seed(0)
    stacked = torch.randn(2, 3, side, side)
    mixed = [torch.randn(3, 3, side, side), torch.randn(3, side, side)]
    with torch.no_grad():
        for pixels in (stacked, mixed):
            # as cache-features stores them: each image encoded alone, a one-tile image without its tile axis
            features = TowerFeatures(tower.features(x[None])[0] if x.ndim == 3 else tower.features(x) for x in pixels)
            want, got = image_features(model, pixels), image_features(model, features)
            assert [w.shape for w in want] == [g.shape for g in got]
            for w, g in zip(want, got):
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
