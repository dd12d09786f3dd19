"""Cached features for stage 1: the loss with the cache equals the loss without it, for a baseline and a DPA
model; a cache built with another tower, preprocessing or perceiver template is refused."""
from __future__ import annotations

import json

import pytest

from conftest import PY, run, train_cmd


def cache(zoo, tower, out, select_layer):
    return run([PY, "-m", "llava_dpa.cli", "cache-features", "--vision_tower", tower, "--data_path", zoo["stage1_data"],
                "--image_folder", zoo["images"], "--image_aspect_ratio", "square", "--mm_vision_select_layer",
                str(select_layer), "--output", out, "--shard-size", "4"])


def losses(folder):
    state = json.loads((folder / "trainer_state.json").read_text())
    return [row["loss"] for row in state["log_history"] if "loss" in row]


@pytest.mark.parametrize("kind", ["baseline", "dpa"])
def test_stage1_loss_with_the_cache_equals_the_loss_without(zoo, perceiver, tmp_path, kind):
    tower, layer = (zoo["clip"], -2) if kind == "baseline" else (str(perceiver), -1)
    first = cache(zoo, tower, tmp_path / "cache", layer)
    assert "images computed" in first.stdout
    again = cache(zoo, tower, tmp_path / "cache", layer)  # resumable: nothing left to compute
    assert "0 images computed" in again.stdout
    live, cached = tmp_path / "live", tmp_path / "cached"
    run(train_cmd(zoo, live, stage=1, tower=tower))
    proc = run(train_cmd(zoo, cached, stage=1, tower=tower, extra=["--feature_cache", str(tmp_path / "cache")]))
    assert "skipped_samples': 0" in proc.stdout + proc.stderr
    a, b = losses(live), losses(cached)
    assert len(a) == len(b) == 3
    assert all(abs(x - y) <= 1e-5 * max(1.0, abs(x)) for x, y in zip(a, b)), (a, b)


def test_a_cache_of_another_tower_or_setting_is_refused(zoo, perceiver, tmp_path):
    cache(zoo, zoo["clip"], tmp_path / "clip_cache", -2)
    proc = run(train_cmd(zoo, tmp_path / "o", stage=1, tower=zoo["siglip"], extra=[
        "--feature_cache", str(tmp_path / "clip_cache")]), check=False)
    assert proc.returncode != 0 and "does not match this run: it was built with a different tower" in proc.stderr
    proc = run(train_cmd(zoo, tmp_path / "p", stage=2, tower=zoo["clip"], extra=[
        "--feature_cache", str(tmp_path / "clip_cache"), "--unfreeze_mm_vision_tower", "True"]), check=False)
    assert proc.returncode != 0 and "--feature_cache with a tower that trains" in proc.stderr
    proc = run([PY, "-m", "llava_dpa.cli", "cache-features", "--vision_tower", "dpa:" + zoo["native_perceiver"],
                "--data_path", zoo["stage1_data"], "--image_folder", zoo["images"], "--output", tmp_path / "q"],
               check=False)
    assert proc.returncode != 0 and "reads each sample's text" in proc.stderr
