"""`llava-dpa bench-packing`: training samples/s with and without `--packing_budget`, one epoch each over the same
mixed-length synthetic LLaVA set, on a model built from this project's classes (`bench_models.build_pair`).

The set mixes image and text-only samples (`--text-only` of them) with answer lengths drawn log-normally,
spread like LLaVA-665K's: most answers short, a long tail of multi-turn ones. Both runs train stage 2 with the
same seed through `llava.train.train_mem`; samples/s is the set's size over the epoch's train_runtime.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from llava_dpa.benchmarks.models import build_pair, describe

WORDS = "the a red blue green square circle shape colour image shows there is on of and with in small large".split()


def synthetic_set(folder: Path, samples: int, image_side: int, text_only: float, seed: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    images = folder / "images"
    images.mkdir(parents=True)
    for i in range(8):
        array = np.random.default_rng(seed + i).integers(0, 256, (image_side, image_side, 3), dtype=np.uint8)
        Image.fromarray(array).save(images / f"img_{i}.png")
    records = []
    for i in range(samples):
        words = max(2, int(rng.lognormvariate(3.6, 0.9)))  # median ~37 words, a tail past 400
        answer = " ".join(rng.choice(WORDS) for _ in range(words))
        record = {"id": str(i), "conversations": [{"from": "human", "value": "Describe it."},
                                                 {"from": "gpt", "value": answer}]}
        if rng.random() >= text_only:
            record["image"] = f"img_{i % 8}.png"
            record["conversations"][0]["value"] = "<image>\nDescribe it."
        records.append(record)
    path = folder / "data.json"
    path.write_text(json.dumps(records))
    return path


def run(args) -> int:
    with tempfile.TemporaryDirectory(prefix="llava-dpa-bench-packing-") as tmp:
        root = Path(tmp)
        pair = build_pair(args.preset, args.scale, root / "models", args.image_size)
        data = synthetic_set(root / "data", args.samples, args.image_size, args.text_only, args.seed)
        print(f"built from this project's classes at scale {args.scale}: {describe(pair['configs'])}")
        results = {}
        for mode in ("padded", "packed"):
            out = root / mode
            flags = ["--model_name_or_path", str(root / "models" / "target"), "--vision_tower", str(root / "models" / "vit"),
                     "--version", "qwen_3", "--data_path", str(data), "--image_folder", str(root / "data" / "images"),
                     "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-1", "--mm_use_im_start_end",
                     "False", "--mm_use_im_patch_token", "False", "--stage", "2", "--num_train_epochs", "1",
                     "--learning_rate", "1e-5", "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1000",
                     "--dataloader_num_workers", "0", "--model_max_length", str(args.max_length), "--seed", str(args.seed),
                     "--output_dir", str(out), "--group_by_modality_length", "False", "--gradient_checkpointing", "False"]
            if mode == "packed":
                flags += ["--packing_budget", str(args.budget), "--per_device_train_batch_size", "1"]
            else:
                flags += ["--per_device_train_batch_size", str(args.batch_size)]
            subprocess.run([sys.executable, "-m", "llava.train.train_mem", *flags], check=True, capture_output=not args.verbose)
            state = json.loads((out / "trainer_state.json").read_text())
            runtime = next(r["train_runtime"] for r in state["log_history"] if "train_runtime" in r)
            results[mode] = {"train_runtime_s": runtime, "samples_per_second": args.samples / runtime,
                             "steps": state["global_step"]}
    speedup = results["packed"]["samples_per_second"] / results["padded"]["samples_per_second"]
    report = {"preset": args.preset, "scale": args.scale, "samples": args.samples, "budget": args.budget,
              "batch_size_padded": args.batch_size, "text_only": args.text_only, "results": results,
              "packing_speedup": speedup}
    for mode, r in results.items():
        print(f"{mode:8s} {r['samples_per_second']:8.2f} samples/s  ({r['steps']} steps, {r['train_runtime_s']:.1f} s)")
    print(f"packing speedup: {speedup:.2f}x")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))
    return 0
