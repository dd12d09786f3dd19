"""`llava-dpa bench-cache`: stage-1 training time of DPA and its baseline, each with and without `--feature_cache`,
epochs over the same synthetic LLaVA set, on the pair built from this project's classes. The four
configurations alternate `--repeats` times; the figure is the median seconds per optimizer step over every
step but each run's first (the log's samples/s, `--logging_steps 1`), so that start-up and run-to-run drift
weigh less than in one epoch's runtime.

With the features cached, stage 1 runs only the projector and the target, so DPA over baseline should come to
about 1 (the issue's goal: at most 1.01); without the cache it carries the perceiver's forward.
"""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path


def step_seconds(state: dict, batch_size: int) -> list[float]:
    """Seconds per optimizer step from a run's log lines (`--logging_steps 1`: each line's samples/s covers one
    step), the first step (warm-up) left out."""
    rates = [h["samples_per_second"] for h in state["log_history"] if "samples_per_second" in h]
    return [batch_size / r for r in rates[1:] if r > 0]


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
        for name, tower in towers.items():
            subprocess.run([sys.executable, "-m", "llava_dpa.cli", "cache-features", "--vision_tower", tower,
                            "--data_path", str(data), "--image_folder", str(images), "--mm_vision_select_layer", "-1",
                            "--output", str(root / f"cache-{name}")], check=True, capture_output=not args.verbose)
        steps, runtimes = defaultdict(list), defaultdict(list)
        for repeat in range(args.repeats):  # the four configurations alternate within every repeat
            for mode in ("live", "cached"):
                for name, tower in towers.items():
                    out = root / f"{name}-{mode}-{repeat}"
                    flags = ["--model_name_or_path", str(root / "models" / "target"), "--vision_tower", tower,
                             "--version", "plain", "--data_path", str(data), "--image_folder", str(images),
                             "--stage", "1", "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-1",
                             "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
                             "--num_train_epochs", "1", "--per_device_train_batch_size", str(args.batch_size),
                             "--learning_rate", "1e-3", "--save_strategy", "no", "--report_to", "none",
                             "--logging_steps", "1", "--dataloader_num_workers", "0", "--seed", str(args.seed),
                             "--group_by_modality_length", "False", "--output_dir", str(out)]
                    if mode == "cached":
                        flags += ["--feature_cache", str(root / f"cache-{name}")]
                    subprocess.run([sys.executable, "-m", "llava.train.train_mem", *flags], check=True,
                                   capture_output=not args.verbose)
                    state = json.loads((out / "trainer_state.json").read_text())
                    steps[(name, mode)] += step_seconds(state, args.batch_size)
                    runtimes[(name, mode)].append(
                        next(r["train_runtime"] for r in state["log_history"] if "train_runtime" in r))
                    shutil.rmtree(out)
    step = {key: statistics.median(v) for key, v in steps.items()}
    report = {"preset": args.preset, "scale": args.scale, "samples": args.samples, "batch_size": args.batch_size,
              "repeats": args.repeats, "steps_measured": {f"{n} {m}": len(v) for (n, m), v in steps.items()},
              "median_step_s": {f"{n} {m}": t for (n, m), t in step.items()},
              "train_runtime_s": {f"{n} {m}": t for (n, m), t in runtimes.items()},
              "dpa_over_baseline": {m: step[("DPA", m)] / step[("baseline", m)] for m in ("live", "cached")},
              "cache_speedup": {n: step[(n, "live")] / step[(n, "cached")] for n in towers}}
    for (name, mode), seconds in step.items():
        print(f"{name:9s} {mode:7s} median step {seconds:7.3f} s over {len(steps[(name, mode)])} steps; epochs "
              + ", ".join(f"{t:.1f}" for t in runtimes[(name, mode)]) + " s")
    for mode, ratio in report["dpa_over_baseline"].items():
        print(f"stage-1 step time, DPA / baseline, {mode}: {ratio:.3f}")
    for name, ratio in report["cache_speedup"].items():
        print(f"cache speedup, {name}: {ratio:.2f}x")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))
    return 0


def register(sub) -> None:
    from llava_dpa.analysis.bench_models import add_training_bench_arguments

    p = sub.add_parser("bench-cache", help="stage-1 time of DPA and its baseline with and without --feature_cache")
    add_training_bench_arguments(p, image_size=224)
    p.add_argument("--repeats", type=int, default=3, help="epochs per configuration, the four alternating")
    p.set_defaults(func=run)
