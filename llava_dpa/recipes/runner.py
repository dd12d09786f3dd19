"""Running a registry entry: its steps in order, each skipped when its output is already complete.

The steps of an entry: its stage 1 (its own, or the identical one it shares), its stage 2, and, for a
perceiver that is built rather than trained, the build (`make-perceiver`, `reinit-perceiver-lm`); plus the
cheap inputs (a stage-2 data subset, a ViT extracted from a perceiver). Another entry's output that it
needs (a trained perceiver) is refused with the command that makes it, unless `with_prerequisites`.
A stage in progress resumes from its last checkpoint: the training command is simply run again.
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from llava_dpa.recipes.paper import Compose, Recipe, ReinitialiseLM, ViTOf, get
from llava_dpa.recipes.render import (
    RecipeError,
    entries_needed,
    output_dir,
    shared_stage1_owner,
    stage1_dir,
    stage_command,
    subset_file,
    tower_path,
)
from llava_dpa.recipes.settings import Settings


@dataclass
class Step:
    description: str
    done: Callable[[], bool]
    command: list[str]


def stage1_complete(folder: Path) -> bool:
    return (folder / "mm_projector.bin").is_file()


def model_complete(folder: Path) -> bool:
    weights = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin")
    return (folder / "config.json").is_file() and any((folder / w).is_file() for w in weights)


def entry_complete(entry: Recipe, settings: Settings) -> bool:
    return model_complete(output_dir(entry, settings))


def run_command(command: list[str]) -> None:
    """A step's command as its own process (how `llava-dpa recipe run` executes every step)."""
    print("+ " + " ".join(command), flush=True)
    proc = subprocess.run(command)
    if proc.returncode != 0:
        raise RecipeError(f"the command above exited with status {proc.returncode}")


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "llava_dpa.cli", *map(str, args)]


def steps(entry: Recipe, settings: Settings, stage: int | None = None, extra: list[str] = ()) -> list[Step]:
    """What running `entry` (or only its `stage`) does, in order."""
    out = []
    wanted = [s for s in entry.stages if stage is None or s == stage]
    if stage is not None and stage not in entry.stages:
        raise RecipeError(f"{entry.name} does not train stage {stage} (it trains {list(entry.stages) or 'no stage'})")
    if isinstance(entry.tower, ViTOf) and wanted:
        source, vit = output_dir(get(entry.tower.entry), settings), Path(tower_path(entry, settings))
        out.append(Step(f"extract the ViT of {entry.tower.entry}", lambda: (vit / "config.json").is_file(),
                        _cli("extract-vit", source, "--output", vit)))
    for s in wanted:
        command = stage_command(entry, s, settings, extra)
        if s == 1:
            owner = shared_stage1_owner(entry)
            label = f"stage 1 of {entry.name}" + (f" (the same training as {owner.name}'s)" if owner is not entry else "")
            out.append(Step(label, lambda d=command.output: stage1_complete(d), command.command))
        else:
            if entry.stage2_subset:
                subset = subset_file(entry, settings)
                args = ("subset-data", "--input", settings.path("stage2_data"), "--n", entry.stage2_subset,
                        "--seed", entry.subset_seed, "--output", subset)
                out.append(Step(f"a {entry.stage2_subset}-sample subset of the stage-2 data", subset.is_file,
                                _cli(*args)))
            out.append(Step(f"stage 2 of {entry.name}", lambda d=command.output: model_complete(d), command.command))
    if stage is None and entry.output_from is not None:
        out.append(_build_step(entry, settings))
    return out


def _build_step(entry: Recipe, settings: Settings) -> Step:
    target = output_dir(entry, settings)
    how = entry.output_from
    if isinstance(how, Compose):
        args = ["make-perceiver", "--vision", settings.path("vit"), "--language-model", settings.path(entry.llm),
                "--output", target, "--seed", entry.subset_seed]
        if how.projector_from_stage1:
            args += ["--projector-weights", stage1_dir(entry, settings) / "mm_projector.bin"]
        label = f"compose {entry.name}"
    elif isinstance(how, ReinitialiseLM):
        args = ["reinit-perceiver-lm", output_dir(get(how.entry), settings), "--output", target, "--seed", how.seed]
        label = f"re-initialise the LM of {how.entry}"
    else:
        raise RecipeError(f"{entry.name}: unknown output_from {how!r}")
    return Step(label, lambda: model_complete(target), _cli(*args))


def missing_prerequisites(entry: Recipe, settings: Settings, stage: int | None) -> list[Recipe]:
    """Entries whose output this run reads and that are not complete (a shared stage 1 is run, not needed)."""
    missing = []
    for needed in entries_needed(entry):
        if needed.name == entry.stage1_shared_with:
            continue
        if stage == 1 and isinstance(entry.output_from, ReinitialiseLM):
            continue
        if not entry_complete(needed, settings):
            missing.append(needed)
    return missing


def run_entry(entry: Recipe | str, settings: Settings, stage: int | None = None, extra: list[str] = (),
              with_prerequisites: bool = False, dry_run: bool = False, execute: Callable[[list[str]], None] = run_command,
              _seen: tuple = ()) -> None:
    """Run `entry`'s steps in order, each through `execute(command)` (its own process by default; the tests
    pass an executor that runs the same command in their process)."""
    entry = get(entry) if isinstance(entry, str) else entry
    if entry.name in _seen:  # each entry needs the next one's output: none can ever be made
        cycle = " -> ".join(_seen[_seen.index(entry.name):] + (entry.name,))
        raise RecipeError(f"the registry's prerequisites form a cycle: {cycle}; each needs the next one's output, so "
                          f"none can be made (fix the entries' tower, stage1_shared_with or output_from)")
    for needed in missing_prerequisites(entry, settings, stage):
        if not with_prerequisites:
            raise RecipeError(f"{entry.name} needs {needed.name}'s output at {output_dir(needed, settings)}, which is "
                              f"not there: run `llava-dpa recipe run {needed.name}` first (or add --with-prerequisites)")
        run_entry(needed, settings, extra=extra, with_prerequisites=True, dry_run=dry_run, execute=execute,
                  _seen=_seen + (entry.name,))
    plan = steps(entry, settings, stage, extra)
    if stage == 2 and not dry_run:
        first = stage1_dir(entry, settings)
        if not stage1_complete(first):
            raise RecipeError(f"stage 2 of {entry.name} reads {first}/mm_projector.bin, which is not there: run "
                              f"`llava-dpa recipe run {entry.name} --stage 1` first")
    for step in plan:
        if step.done():
            print(f"[recipe] {step.description}: complete, skipped", flush=True)
            continue
        print(f"[recipe] {step.description}", flush=True)
        if dry_run:
            print("  " + " ".join(map(str, step.command)), flush=True)
            continue
        execute(step.command)


__all__ = ["Step", "entry_complete", "missing_prerequisites", "model_complete", "run_command", "run_entry",
           "stage1_complete", "steps"]
