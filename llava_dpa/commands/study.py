"""`llava-dpa study OUT`: its arguments; the work is `llava_dpa.study`'s (docs/study.md)."""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from llava_dpa.analysis.plots import pyplot
from llava_dpa.study.pipeline import run
from llava_dpa.study.stats import require_scipy
from llava_dpa.study.runner import QUICK, Parts, Schedule, StudyConfig
from llava_dpa.study.world import WorldSpec

SIZE_OPTIONS = {  # option -> (the dataclass it sets, its field)
    "--image-size": ("world", "image_size"), "--vit-images": ("world", "vit_images"),
    "--stage1-images": ("world", "stage1_images"), "--stage2-images": ("world", "stage2_images"),
    "--test-per-type": ("world", "test_per_type"), "--world-seed": ("world", "seed"),
    "--target-width": ("parts", "target_width"), "--target-layers": ("parts", "target_layers"),
    "--perceiver-width": ("parts", "perceiver_width"), "--perceiver-layers": ("parts", "perceiver_layers"),
    "--vit-width": ("parts", "vit_width"), "--vit-depth": ("parts", "vit_depth"),
    "--vit-out-width": ("parts", "vit_out_width"), "--lm-steps": ("parts", "lm_steps"),
    "--vit-steps": ("parts", "vit_steps"),
    "--batch": ("schedule", "batch"), "--stage1-epochs": ("schedule", "stage1_epochs"),
    "--stage2-epochs": ("schedule", "stage2_epochs"), "--stage1-lr": ("schedule", "stage1_lr"),
    "--stage2-lr": ("schedule", "stage2_lr"), "--vision-lr": ("schedule", "vision_lr"),
}
DEFAULTS = {"world": WorldSpec(), "parts": Parts(), "schedule": Schedule()}


def config_from_args(args) -> StudyConfig:
    base = dict(QUICK) if args.quick else {}
    groups = {name: base.get(name, default) for name, default in DEFAULTS.items()}
    for option, (group, name) in SIZE_OPTIONS.items():
        value = getattr(args, option[2:].replace("-", "_"))
        if value is not None:
            if value <= 0:
                raise ValueError(f"{option} {value}: give a positive number")
            groups[group] = dataclasses.replace(groups[group], **{name: value})
    seeds = tuple(range(args.seeds)) if args.seeds is not None else base.get("seeds", StudyConfig.seeds)
    if len(seeds) < 1:
        raise ValueError("--seeds: at least 1")
    for option in ("target", "perceiver_lm", "vit"):
        folder = getattr(args, option)
        if folder is not None and not (Path(folder) / "config.json").is_file():
            raise ValueError(f"--{option.replace('_', '-')} {folder}: not a model folder (no config.json)")
    return StudyConfig(out=Path(args.out).resolve(), seeds=seeds, quick=args.quick, jobs=args.jobs,
                       mir_probes=base.get("mir_probes", StudyConfig.mir_probes),
                       target=args.target and str(Path(args.target).resolve()),
                       perceiver_lm=args.perceiver_lm and str(Path(args.perceiver_lm).resolve()),
                       vit=args.vit and str(Path(args.vit).resolve()), **groups)


def _study(args) -> int:
    config = config_from_args(args)
    # what the report needs, asked before half an hour of training rather than after it
    pyplot()
    require_scipy()
    run(config, ["llava-dpa", "study", *args.argv])
    print(f"read {config.out / 'report.md'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("study", help="the paper's controlled comparison in miniature: build a synthetic world and "
                                     "its pretrained parts, train every arm over seeds, measure, report (docs/study.md)")
    p.add_argument("out", help="the study's folder (a rerun of the same command resumes it)")
    p.add_argument("--quick", action="store_true", help="one seed, a smaller world: the plumbing in about 3 minutes")
    p.add_argument("--seeds", type=int, default=None, help="training seeds per arm (default 5; --quick: 1)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="steps run at once, one core each (default: 2, or 1 on one core)")
    p.add_argument("--target", default=None, help="a target LM folder to use instead of pretraining one (with --perceiver-lm)")
    p.add_argument("--perceiver-lm", default=None, help="a perceiver LM folder (with --target)")
    p.add_argument("--vit", default=None, help="a ViT folder the tower registry reads (e.g. a Qwen2.5-VL vision encoder)")
    sizes = p.add_argument_group("sizes (defaults: docs/study.md)")
    for option, (group, name) in SIZE_OPTIONS.items():
        kind = type(getattr(DEFAULTS[group], name))
        sizes.add_argument(option, type=kind, default=None, help=f"{group}.{name} (default {getattr(DEFAULTS[group], name)})")
    p.set_defaults(func=_study, argv=sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "study" else [])
