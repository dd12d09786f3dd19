"""`llava-dpa bench-cache`: stage-1 training time of DPA and its baseline, each with and without `--feature_cache`,
one epoch over the same synthetic LLaVA set, on the pair built from this project's classes.

With the features cached, stage 1 runs only the projector and the target, so DPA over baseline should come to
about 1 (the issue's goal: at most 1.01); without the cache it carries the perceiver's forward.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path


def run(args) -> int:
    from llava_dpa.analysis.bench_models import build_pair, describe
    from llava_dpa.analysis.bench_packing import synthetic_set

    with tempfile.TemporaryDirectory(prefix="llava-dpa-bench-cache-") as tmp:
        root = Path(tmp)
        pair = build_pair(args.preset, args.scale, root / "models", args.image_size)
        data = synthetic_set(root / "data", args.samples, args.image_size, 0.0, args.seed)
        images = root / "data" / "images"
        print(f"built from this project's classes at scale {args.scale}: {describe(pair['configs'])}")
        towers = {"DPA": str(root / "models" / "perceiver"), "baseline": str(root / "models" / "vit")}
        runtimes = {}
        for name, tower in towers.items():
            cache = root / f"cache-{name}"
            subprocess.run([sys.executable, "-m", "llava_dpa.cli", "cache-features", "--vision_tower", tower,
                            "--data_path", str(data), "--image_folder", str(images), "--mm_vision_select_layer", "-1",
                            "--output", str(cache)], check=True, capture_output=not args.verbose)
            for mode in ("live", "cached"):
                out = root / f"{name}-{mode}"
                flags = ["--model_name_or_path", str(root / "models" / "target"), "--vision_tower", tower,
                         "--version", "plain", "--data_path", str(data), "--image_folder", str(images), "--stage", "1",
                         "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-1",
                         "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
                         "--num_train_epochs", "1", "--per_device_train_batch_size", str(args.batch_size),
                         "--learning_rate", "1e-3", "--save_strategy", "no", "--report_to", "none",
                         "--logging_steps", "1000", "--dataloader_num_workers", "0", "--seed", str(args.seed),
                         "--group_by_modality_length", "False", "--output_dir", str(out)]
                if mode == "cached":
                    flags += ["--feature_cache", str(cache)]
                subprocess.run([sys.executable, "-m", "llava.train.train_mem", *flags], check=True,
                               capture_output=not args.verbose)
                state = json.loads((out / "trainer_state.json").read_text())
                runtimes[(name, mode)] = next(r["train_runtime"] for r in state["log_history"] if "train_runtime" in r)
    report = {"preset": args.preset, "scale": args.scale, "samples": args.samples,
              "train_runtime_s": {f"{n} {m}": t for (n, m), t in runtimes.items()},
              "dpa_over_baseline": {m: runtimes[("DPA", m)] / runtimes[("baseline", m)] for m in ("live", "cached")},
              "cache_speedup": {n: runtimes[(n, "live")] / runtimes[(n, "cached")] for n in towers}}
    for (name, mode), seconds in runtimes.items():
        print(f"{name:9s} {mode:7s} {seconds:8.1f} s")
    for mode, ratio in report["dpa_over_baseline"].items():
        print(f"stage-1 time, DPA / baseline, {mode}: {ratio:.3f}")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))
    return 0


def register(sub) -> None:
    from llava_dpa.analysis.bench_models import add_training_bench_arguments

    p = sub.add_parser("bench-cache", help="stage-1 time of DPA and its baseline with and without --feature_cache")
    add_training_bench_arguments(p, image_size=224)
    p.set_defaults(func=run)
