"""`llava-dpa bench-cache`: the stage-1 step time of DPA and its baseline, each with its tower live and with its
features cached (`--feature_cache`), all four in one process, on the pair built from this project's classes.

A cached model's tower reads its own features, computed once, exactly as stage-1 training with
`--feature_cache` reads them from the cache (data/feature_cache.py): the step then runs only the projector and
the target. The four models alternate within every repeat (`bench.measure`), so that the two cached models,
which differ only in the projector's input width, are compared at the noise of one process rather than of
separate training runs. That the cached features give the live loss is tests/test_feature_cache.py's.

The issue's goal: DPA over baseline, both cached, at most 1.01.
"""
from __future__ import annotations

import json
import tempfile

import torch

from llava_dpa.benchmarks.models import build_pair, describe, run_environment
from llava_dpa.benchmarks.throughput import _DTYPES, Pipeline, measure


def run(args) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = _DTYPES[args.dtype]
    with tempfile.TemporaryDirectory(prefix="llava-dpa-bench-cache-") as tmp:
        built = build_pair(args.preset, args.scale, tmp, args.image_size, dtype, args.seed)
        print(f"built from this project's classes at scale {args.scale}: {describe(built['configs'])}")
        pipelines = {(name, mode): Pipeline(f"{name} {mode}", built[name], device, dtype, args.text_tokens,
                                            seed=args.seed, cached_features=mode == "cached")
                     for mode in ("live", "cached") for name in ("DPA", "baseline")}
        seconds = measure(list(pipelines.values()), args.repeats, args.warmup, only=("train_stage1",))
    step = {key: seconds[p.name]["train_stage1"]["seconds"] for key, p in pipelines.items()}
    report = {**run_environment(args, device),
              "median_step_s": {p.name: step[key] for key, p in pipelines.items()},
              "components": {p.name: seconds[p.name]["train_stage1"]["components"] for p in pipelines.values()},
              "dpa_over_baseline": {m: step[("DPA", m)] / step[("baseline", m)] for m in ("live", "cached")},
              "cache_speedup": {n: step[(n, "live")] / step[(n, "cached")] for n in ("DPA", "baseline")}}
    for name, t in report["median_step_s"].items():
        print(f"stage-1 step, {name:16s} {t:8.4f} s")
    for mode, ratio in report["dpa_over_baseline"].items():
        print(f"stage-1 step time, DPA / baseline, {mode}: {ratio:.3f}")
    for name, ratio in report["cache_speedup"].items():
        print(f"cache speedup, {name}: {ratio:.2f}x")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)
    return 0
