"""The benches' paths at a tiny scale, on what they measure that is not a time: bench-frozen's activations kept for
the backward with and without the explicit no_grad, and bench-cache's cached rows running no tower."""
from __future__ import annotations

import json

import transformers

from llava_dpa.cli import main

TINY = ["--preset", "qwen3-4b", "--scale", "0.02", "--device", "cpu", "--dtype", "float32", "--repeats", "1",
        "--warmup", "0", "--text-tokens", "16"]


def test_bench_frozen_keeps_what_autograd_would_save_out_of_the_graph(tmp_path):
    out = tmp_path / "frozen.json"
    assert main(["bench-frozen", *TINY, "--output", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    extra = {name: rows[f"{name} before"]["saved_for_backward_mib"] - rows[f"{name} after"]["saved_for_backward_mib"]
             for name in ("DPA", "baseline")}
    if transformers.__version__.startswith("4."):  # 4.57 hooks the target's embeddings only: nothing reaches a tower
        # (up to the perceiver's prefix positions, which the "after" features keep as part of their storage: 768 B)
        assert all(abs(mib) < 0.01 for mib in extra.values()), extra
    else:  # 5.x hooks every sub-model's embeddings: the ViT's for both, the perceiver LM's (and its ViT's) for DPA
        assert 0 < extra["baseline"] < extra["DPA"]


def test_bench_cache_runs_no_tower_for_cached_features(tmp_path):
    out = tmp_path / "cache.json"
    assert main(["bench-cache", *TINY, "--output", str(out)]) == 0
    parts = json.loads(out.read_text())["components"]
    assert parts["DPA live"]["vit"] > 0 and parts["DPA live"]["perceiver_lm"] > 0 and parts["baseline live"]["vit"] > 0
    for row in ("DPA cached", "baseline cached"):
        assert parts[row]["vit"] == parts[row]["perceiver_lm"] == 0 and parts[row]["projector"] > 0
