"""Running the study: every step one process, as many at once as the study has cores, in dependency order,
each skipped when its output is complete (a rerun of the same command resumes).

The steps:
- the world (in this process: drawing images is fast) and the pretrained parts (study/parts.py, one process
  each: the target LM, the perceiver LM, the ViT; the target's text answers before any multimodal training);
- per seed, every registry entry of the arms and their perceivers (study/arms.py), each stage through the
  recipe runner's steps (llava_dpa/recipes/runner.steps): `python -m llava.train.train_mem` with the flags
  `llava_dpa.recipes.render.stage_command` renders for the entry on the study's settings, plus the study's
  overrides, identical for every arm (`study_overrides`); `llava-dpa make-perceiver` and `extract-vit` where
  the entry is built rather than trained;
- per seed, the measures: LLaVA's `python -m llava.eval.model_vqa_loader` on the test questions for every
  arm and the standalone perceiver, the target LLM's text answers through `export-llm`'s text path,
  `llava-dpa analyze mir` and `llava-dpa analyze updates`.

Progress: a line per started and finished step (which seed, which arm, which stage, the time left, estimated
from the steps of each kind already done); every step's output is kept in OUT/logs/.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llava_dpa.recipes.paper import REGISTRY
from llava_dpa.recipes.render import entries_needed, output_dir, stage_flags
from llava_dpa.recipes.runner import steps
from llava_dpa.recipes.settings import Settings
from llava_dpa.study.arms import ARMS, PERCEIVERS, PREREQUISITES
from llava_dpa.study.parts import build_tokenizer
from llava_dpa.study.world import WorldSpec, write_world
from llava_dpa.zoo.recipes import tiny_flags


class StudyError(RuntimeError):
    pass


# ---- the configuration ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Parts:
    """Sizes of the parts the study pretrains (ignored for a part given as a folder)."""
    target_width: int = 128
    target_layers: int = 4
    perceiver_width: int = 64
    perceiver_layers: int = 3
    vit_width: int = 64
    vit_depth: int = 4
    vit_out_width: int = 64
    lm_steps: int = 800
    lm_batch: int = 32
    lm_lr: float = 3e-3
    vit_steps: int = 150
    vit_batch: int = 64
    vit_lr: float = 2e-3
    seed: int = 0


@dataclass(frozen=True)
class Schedule:
    """The multimodal training of every arm (and of the perceiver VLM, with the baseline's hyper-parameters)."""
    batch: int = 16
    stage1_epochs: float = 2            # §3.1: 2 epochs in both stages
    stage2_epochs: float = 2
    stage1_lr: float = 1e-3             # §3.1, Table 6: 1e-3 (projector)
    stage2_lr: float = 3e-4             # the target, projector and perceiver LM (the paper's 1e-5 is for 4B over 7.8K steps)
    vision_lr: float = 6e-5             # the ViT in stage 2: Table 6's ViT:LLM ratio, 2e-6 : 1e-5
    stage1_warmup: float = 440 / 2180   # Table 6 / official PT script: 440 warmup and 1,170 decay of 2,180 steps
    stage1_decay: float = 1170 / 2180
    stage2_warmup: float = 500 / 7812   # Table 6: 500 warmup steps of 1M x 2 epochs / 256


@dataclass(frozen=True)
class StudyConfig:
    out: Path
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    world: WorldSpec = WorldSpec()
    parts: Parts = Parts()
    schedule: Schedule = Schedule()
    target: str | None = None         # folders of given parts (not pretrained here)
    perceiver_lm: str | None = None
    vit: str | None = None
    jobs: int = 2
    mir_probes: int = 48
    quick: bool = False

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["out"] = str(self.out)
        return d


#: `--quick`: one seed, a smaller world, smaller parts (docs/study.md says why each differs from the default)
QUICK = {"seeds": (0,), "mir_probes": 16,
         "world": WorldSpec(vit_images=600, stage1_images=320, stage2_images=800, test_per_type=40),
         "parts": Parts(target_width=64, target_layers=2, perceiver_width=32, perceiver_layers=2, vit_width=32,
                        vit_depth=2, vit_out_width=32, lm_steps=400, vit_steps=60),
         "schedule": Schedule(stage2_epochs=4)}


# ---- where things are -----------------------------------------------------------------------------------------
def parts_dir(config: StudyConfig) -> Path:
    return config.out / "parts"


def part_paths(config: StudyConfig) -> dict[str, str]:
    p = parts_dir(config)
    return {"target": config.target or str(p / "target"), "perceiver_lm": config.perceiver_lm or str(p / "perceiver_lm"),
            "vit": config.vit or str(p / "vit"), "tokenizer": str(p / "tokenizer")}


def seed_dir(config: StudyConfig, seed: int) -> Path:
    return config.out / "seeds" / f"seed-{seed}"


def settings_for(config: StudyConfig, world: dict, seed: int) -> Settings:
    """The registry's settings for one seed: its paths pointed at the study's parts, world and seed folder; one
    CPU process in float32 (as llava_dpa/zoo/recipes.tiny_settings)."""
    parts = part_paths(config)
    return Settings(
        paths={"vit": parts["vit"], "qwen3_0_6b": parts["perceiver_lm"], "qwen3_4b": parts["target"],
               "stage1_data": world["stage1"], "stage1_images": world["images"], "stage2_data": world["stage2"],
               "stage2_images": world["images"], "checkpoints": str(seed_dir(config, seed))},
        launcher="python", gpus_per_node=1, per_device_batch=config.schedule.batch, precision="fp32",
        dataloader_workers=0, python=sys.executable)


def entry_for(name: str, seed: int):
    """The registry entry, with the seed of a perceiver that `make-perceiver` builds (its random projector)."""
    entry = REGISTRY[name]
    if name == "perceiver-untrained":
        entry = dataclasses.replace(entry, subset_seed=seed)
    return entry


def samples(path: str) -> int:
    return len(json.loads(Path(path).read_text()))


def stage_steps(config: StudyConfig, world: dict, stage: int) -> int:
    """Optimizer steps of one stage (one process, no gradient accumulation: HF's ceil(samples / batch) per epoch)."""
    n = samples(world["stage1" if stage == 1 else "stage2"])
    epochs = config.schedule.stage1_epochs if stage == 1 else config.schedule.stage2_epochs
    return math.ceil(math.ceil(n / config.schedule.batch) * epochs)


def study_overrides(config: StudyConfig, world: dict, stage: int, seed: int, rendered: list[str]) -> list[str]:
    """The flags the study puts over the registry's rendering, the same for every arm (the entries' own
    differences stay): the tiny models' run settings (llava_dpa/zoo/recipes.tiny_flags), one image tile per image
    (the images are one 32-pixel tile: anyres would add copies of it), the seed, and the schedule scaled to the
    study's step count with the paper's shape."""
    s, n = config.schedule, stage_steps(config, world, stage)
    flags = tiny_flags(stage) + ["--seed", str(seed), "--per_device_train_batch_size", str(s.batch),
                                 "--image_aspect_ratio", "square", "--mm_patch_merge_type", "flat"]
    if stage == 1:
        flags += ["--learning_rate", str(s.stage1_lr), "--num_train_epochs", str(s.stage1_epochs),
                  "--warmup_steps", str(round(s.stage1_warmup * n)),
                  "--lr_scheduler_kwargs", json.dumps({"num_decay_steps": max(1, round(s.stage1_decay * n))})]
    else:
        flags += ["--learning_rate", str(s.stage2_lr), "--mm_projector_lr", str(s.stage2_lr),
                  "--num_train_epochs", str(s.stage2_epochs), "--warmup_steps", str(round(s.stage2_warmup * n))]
        if "--mm_vision_tower_lr" in rendered:  # where the tower trains (every arm here)
            flags += ["--mm_vision_tower_lr", str(s.vision_lr)]
    return flags


# ---- steps as jobs --------------------------------------------------------------------------------------------
@dataclass
class Job:
    name: str                        # unique; what the progress lines say
    kind: str                        # jobs of one kind take about as long (the time-left estimate)
    command: list[str]
    done: Callable[[], bool]
    deps: tuple[str, ...] = ()
    finish: Callable[[], None] | None = None   # run here after the process succeeded (e.g. a rename)
    seed: int | None = None


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "llava_dpa.cli", *map(str, args)]


def _parts_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "llava_dpa.study.parts", *map(str, args)]


def answers_path(config: StudyConfig, seed: int, name: str, what: str = "vqa") -> Path:
    return seed_dir(config, seed) / "answers" / f"{name}.{what}.jsonl"


def text_before_path(config: StudyConfig) -> Path:
    return parts_dir(config) / "target.text.jsonl"


def _renamed(tmp: Path, final: Path) -> Callable[[], None]:
    return lambda: tmp.rename(final)


def part_jobs(config: StudyConfig, world: dict) -> list[Job]:
    paths, parts = part_paths(config), config.parts
    jobs = []
    before = text_before_path(config)
    for key, width, layers, seed in (("target", parts.target_width, parts.target_layers, parts.seed),
                                     ("perceiver_lm", parts.perceiver_width, parts.perceiver_layers, parts.seed + 1)):
        if getattr(config, key) is None:
            out = Path(paths[key])
            # the target answers the text task as soon as it is pretrained: the forgetting reference
            text = ["--text-questions", world["text"], "--text-answers", before] if key == "target" else []
            jobs.append(Job(f"pretrain the {key.replace('_', ' ')}", f"lm-{key}", _parts_cmd(
                "lm", "--tokenizer", paths["tokenizer"], "--output", out, "--width", width, "--layers", layers,
                "--steps", parts.lm_steps, "--batch", parts.lm_batch, "--lr", parts.lm_lr, "--seed", seed, *text),
                lambda out=out: (out / "config.json").is_file() and before.is_file()))
    if config.vit is None:
        out = Path(paths["vit"])
        jobs.append(Job("pretrain the ViT", "vit", _parts_cmd(
            "vit", "--world", Path(world["spec_file"]), "--output", out, "--width", parts.vit_width, "--depth",
            parts.vit_depth, "--out-width", parts.vit_out_width, "--steps", parts.vit_steps, "--batch",
            parts.vit_batch, "--lr", parts.vit_lr, "--seed", parts.seed + 2), lambda out=out: (out / "config.json").is_file()))
    if config.target is not None:  # a given target: its text answers are a step of their own
        tmp = before.with_suffix(".partial")
        jobs.append(Job("text answers of the target before multimodal training", "text-before",
                        _parts_cmd("text-answers", "--questions", world["text"], "--model", f"{paths['target']}={tmp}"),
                        before.is_file, finish=_renamed(tmp, before)))
    return jobs


def seed_jobs(config: StudyConfig, world: dict, seed: int, after: tuple[str, ...]) -> list[Job]:
    """Every training of one seed, then its measures."""
    settings = settings_for(config, world, seed)
    jobs: dict[str, Job] = {}
    by_command: dict[tuple, str] = {}
    trained: dict[str, str] = {}       # entry -> the job that completes its output

    def label(entry_name: str) -> str:
        for a in ARMS:
            if a.entry == entry_name:
                return a.name
        return next(k for k, v in PERCEIVERS.items() if v == entry_name)

    def add_entry(name: str, deps: tuple[str, ...]):
        entry = entry_for(name, seed)
        previous = None
        plans = [(s, steps(entry, settings, s, study_overrides(config, world, s, seed, stage_flags(entry, s, settings))))
                 for s in entry.stages] or [(None, steps(entry, settings))]
        for stage, plan in plans:
            for step in plan:
                key = tuple(step.command)
                if key in by_command:  # the same step twice (an entry's ViT extraction, before each stage)
                    continue
                trains = "llava.train.train_mem" in step.command[:3]
                what = f"stage {stage}" if trains else step.description
                job = Job(f"seed {seed} | {label(name)} | {what}", f"{name}:{what}", step.command, step.done,
                          deps=deps + ((previous,) if previous else ()), seed=seed)
                jobs[job.name] = job
                by_command[key] = job.name
                previous = job.name
        trained[name] = previous

    for name in PREREQUISITES:
        add_entry(name, after)
    for a in ARMS:
        needs = tuple(trained[p] for p in PREREQUISITES if p in _reads(a.entry))
        add_entry(a.entry, after + needs)

    # measures
    questions = world["test"]
    for name, entry in [(a.name, a.entry) for a in ARMS] + [("perceiver", PERCEIVERS["perceiver"])]:
        final = answers_path(config, seed, name)
        tmp = final.with_name(final.name + ".partial")
        final.parent.mkdir(parents=True, exist_ok=True)
        job = Job(f"seed {seed} | {name} | answers", "vqa", [
            sys.executable, "-m", "llava.eval.model_vqa_loader", "--model-path", str(output_dir(REGISTRY[entry], settings)),
            "--question-file", questions, "--image-folder", world["images"], "--answers-file", str(tmp),
            "--temperature", "0", "--max_new_tokens", "8"], final.is_file, deps=(trained[entry],),
            finish=_renamed(tmp, final), seed=seed)
        jobs[job.name] = job
    text_final = {a.name: answers_path(config, seed, a.name, "text") for a in ARMS}
    pairs = [f"{output_dir(REGISTRY[a.entry], settings)}={seed_dir(config, seed) / 'llm' / a.name}="
             f"{text_final[a.name].with_name(text_final[a.name].name + '.partial')}" for a in ARMS]
    job = Job(f"seed {seed} | every arm | text answers", "text", _parts_cmd(
        "text-answers", "--questions", world["text"], *[x for pair in pairs for x in ("--checkpoint", pair)]),
        lambda: all(p.is_file() for p in text_final.values()), deps=tuple(trained[a.entry] for a in ARMS),
        finish=lambda: [p.with_name(p.name + ".partial").rename(p) for p in text_final.values()], seed=seed)
    jobs[job.name] = job
    mir = mir_job(config, world, seed, settings, trained)
    jobs[mir.name] = mir
    updates_out = seed_dir(config, seed) / "updates"
    job = Job(f"seed {seed} | every arm | update density and intrusion", "updates", _cli(
        "analyze", "updates", "--base", part_paths(config)["target"],
        *[x for a in ARMS for x in ("--tuned", output_dir(REGISTRY[a.entry], settings))],
        "--tau", "1e-5,1e-4,1e-3", "--output", updates_out), lambda: (updates_out / "updates.json").is_file(),
        deps=tuple(trained[a.entry] for a in ARMS), seed=seed)
    jobs[job.name] = job
    return list(jobs.values())


def _reads(entry_name: str) -> set[str]:
    """The perceiver entries an arm's entry reads (its tower, or the ViT inside it)."""
    return {e.name for e in entries_needed(REGISTRY[entry_name])}


def mir_views(config: StudyConfig, settings: Settings) -> list[tuple[str, str, str]]:
    """(name, checkpoint, component) of every model MIR measures: each arm's target; the standalone perceiver VLMs
    (their LM is the perceiver LM: Figure 3); and the perceiver inside each DPA arm after its training."""
    views = [(a.name, str(output_dir(REGISTRY[a.entry], settings)), "target") for a in ARMS]
    views += [(name, str(output_dir(REGISTRY[entry], settings)), "target") for name, entry in PERCEIVERS.items()]
    views += [(f"{a.name}:perceiver", str(output_dir(REGISTRY[a.entry], settings)), "perceiver")
              for a in ARMS if a.perceiver]
    return views


def mir_job(config: StudyConfig, world: dict, seed: int, settings: Settings, trained: dict) -> Job:
    out = seed_dir(config, seed) / "mir"
    views = mir_views(config, settings)
    args = ["analyze", "mir", *[v[1] for v in views], *[x for v in views for x in ("--component", v[2])],
            "--images", world["test_iid"], "--image-folder", world["images"], "--texts", world["probe_texts"],
            "--num-probes", config.mir_probes, "--seed", seed, "--output", out]
    deps = tuple(trained[e] for e in {*(a.entry for a in ARMS), *PERCEIVERS.values()})
    return Job(f"seed {seed} | every model | MIR per layer", "mir", _cli(*args), lambda: (out / "mir.json").is_file(),
               deps=deps, seed=seed)


# ---- the scheduler --------------------------------------------------------------------------------------------
PRIOR_SECONDS = {"vqa": 25, "text": 25, "mir": 40, "updates": 15, "text-before": 12, "vit": 40}


def _fmt(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def run_jobs(jobs: list[Job], workers: int, logs: Path, timings_file: Path, log=print) -> dict:
    """Run `jobs` (dependencies first, at most `workers` at once); returns {job name: timings}. A failed job
    stops the run once the others in flight finish, with its command and the end of its log."""
    logs.mkdir(parents=True, exist_ok=True)
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    names = {j.name for j in jobs}
    for j in jobs:
        unknown = [d for d in j.deps if d not in names]
        if unknown:
            raise StudyError(f"{j.name} depends on unknown steps {unknown}")
    pending = [j for j in jobs]
    finished: set[str] = set()
    running: dict[int, tuple[Job, subprocess.Popen, float, object]] = {}
    failed: list[str] = []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1")
    total = len(jobs)

    def estimate(job: Job) -> float:
        same = [t["wall"] for name, t in timings.items() if t.get("kind") == job.kind]
        if same:
            return sum(same) / len(same)
        if job.kind in PRIOR_SECONDS:
            return PRIOR_SECONDS[job.kind]
        return 90 if job.kind.startswith("lm") else 30

    def left() -> str:
        now = time.time()
        todo = sum(estimate(j) for j in pending)
        todo += sum(max(0.0, estimate(j) - (now - start)) for j, _, start, _ in running.values())
        return _fmt(todo / max(1, workers))

    while pending or running:
        for job in list(pending):
            if failed or len(running) >= workers:
                break
            if not all(d in finished for d in job.deps):
                continue
            pending.remove(job)
            if job.done():
                finished.add(job.name)
                log(f"[study] {len(finished)}/{total} {job.name}: complete, skipped")
                continue
            handle = open(logs / (job.name.replace(" | ", "__").replace(" ", "_").replace("/", "_") + ".log"), "w")
            handle.write("+ " + " ".join(map(str, job.command)) + "\n")
            handle.flush()
            proc = subprocess.Popen([str(c) for c in job.command], stdout=handle, stderr=subprocess.STDOUT, env=env)
            running[proc.pid] = (job, proc, time.time(), handle)
            log(f"[study] {len(finished)}/{total} {job.name}: started | about {left()} left")
        if not running:
            if pending and not failed:
                raise StudyError(f"no step can start: {[j.name for j in pending]} wait on steps that never finish")
            break
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        job, proc, started, handle = running.pop(pid)
        proc.returncode = os.waitstatus_to_exitcode(status)   # reaped here (os.wait4 gives its CPU time)
        handle.close()
        wall = time.time() - started
        if proc.returncode != 0:
            failed.append(job.name)
            tail = Path(handle.name).read_text()[-3000:]
            log(f"[study] {job.name}: FAILED (exit {proc.returncode}) after {_fmt(wall)}; its log, {handle.name}, ends:\n{tail}")
            continue
        if job.finish is not None:
            job.finish()
        timings[job.name] = {"kind": job.kind, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
                             "seed": job.seed, "command": [str(c) for c in job.command]}
        timings_file.write_text(json.dumps(timings, indent=1))
        finished.add(job.name)
        log(f"[study] {len(finished)}/{total} {job.name}: done in {_fmt(wall)} | about {left()} left")
    if failed:
        raise StudyError(f"{len(failed)} step(s) failed: {failed}; fix the cause and run the same command again "
                         "(completed steps are kept)")
    return timings


def prepare_world(config: StudyConfig) -> dict:
    """The world, plus the files the measures read (all test questions in one file; MIR's probe texts)."""
    folder = config.out / "world"
    world = write_world(folder, config.world)
    world["spec_file"] = str(folder / "world.json")
    test = folder / "test.jsonl"
    if not test.is_file():
        test.write_text(Path(world["test_iid"]).read_text() + Path(world["test_comp"]).read_text())
    world["test"] = str(test)
    probes = folder / "probe_texts.txt"
    if not probes.is_file():  # MIR pairs each test image with its own question (probes.read_probes, in order)
        probes.write_text("".join(json.loads(line)["text"] + "\n"
                                  for line in Path(world["test_iid"]).read_text().splitlines() if line))
    world["probe_texts"] = str(probes)
    return world


def prepare_tokenizer(config: StudyConfig) -> None:
    paths = part_paths(config)
    if config.target is not None or config.perceiver_lm is not None:
        if config.target is None or config.perceiver_lm is None:
            # a pretrained part of the study and a given one would not share a tokenizer
            raise StudyError("--target and --perceiver-lm come together: the study pretrains both LMs with one "
                             "tokenizer, or takes both as given")
        return
    if not (Path(paths["tokenizer"]) / "tokenizer_config.json").is_file():
        build_tokenizer(paths["tokenizer"])


def run_study(config: StudyConfig, log=print) -> dict:
    """Everything up to the measures' raw outputs; returns the world manifest and the timings."""
    config.out.mkdir(parents=True, exist_ok=True)
    study_file = config.out / "study.json"
    if study_file.is_file():
        before = json.loads(study_file.read_text())
        if before != json.loads(json.dumps(config.as_dict())):
            raise StudyError(f"{config.out} holds a study with another configuration ({study_file}); choose a new "
                             "folder, or run that study's own command to resume it")
    study_file.write_text(json.dumps(config.as_dict(), indent=1))
    log(f"[study] the world in {config.out / 'world'}")
    world = prepare_world(config)
    parts_dir(config).mkdir(parents=True, exist_ok=True)
    prepare_tokenizer(config)
    jobs = part_jobs(config, world)
    after = tuple(j.name for j in jobs)
    for seed in config.seeds:
        jobs += seed_jobs(config, world, seed, after)
    timings = run_jobs(jobs, config.jobs, config.out / "logs", config.out / "timings.json", log)
    return {"world": world, "timings": timings}
