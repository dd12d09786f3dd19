"""The paper's measures, per seed and arm, read from what the runner's steps wrote:

- multimodal accuracy per question type and split: the answers of `llava.eval.model_vqa_loader` scored by
  `llava-dpa score` (llava_dpa/eval/offline.score, exact match after normalisation);
- the target's text accuracy before (the pretrained target) and after (each arm's target LLM), scored the same
  way, and the forgetting and its reduction as Table 1 computes them (llava_dpa/eval/report.forgetting_reduction:
  F = printed text accuracy of the LLM - printed text accuracy of the model; reduction F_baseline - F_arm);
- MIR per layer (`llava-dpa analyze mir`'s mir.json) of each arm's target, of the standalone perceivers and of the
  perceiver inside each DPA arm;
- update density and intrusion dimension of each arm's target against the pretrained target (`llava-dpa analyze
  updates`' updates.json);
- both stages' loss curves (trainer_state.json) and each training's cost: HF's train_runtime (the steps), and
  the process's wall and CPU seconds (the runner's timings).
"""
from __future__ import annotations

import json
from pathlib import Path

from llava_dpa.eval.offline import score
from llava_dpa.eval.report import GROUPS, forgetting_reduction
from llava_dpa.recipes.paper import REGISTRY
from llava_dpa.recipes.render import output_dir, stage1_dir
from llava_dpa.study.arms import ARMS, BASELINE, PERCEIVERS
from llava_dpa.study.runner import (
    StudyConfig,
    answers_path,
    mir_views,
    seed_dir,
    settings_for,
    text_before_path,
)
from llava_dpa.study.world import QUESTION_TYPES, TEXT_TYPES, chance

SPLITS = ("test_iid", "test_comp")


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def subsets(world: dict) -> dict[str, Path]:
    """Question files per split, per split and type, and per text type (for `score`), written once."""
    folder = Path(world["test"]).parent / "scoring"
    folder.mkdir(exist_ok=True)
    groups: dict[str, list[dict]] = {}
    for split in SPLITS:
        for q in read_jsonl(world[split]):
            groups.setdefault(split, []).append(q)
            groups.setdefault(f"{split}.{q['question_type']}", []).append(q)
    for q in read_jsonl(world["text"]):
        groups.setdefault("text", []).append(q)
        groups.setdefault(f"text.{q['question_type']}", []).append(q)
    out = {}
    for name, rows in groups.items():
        out[name] = folder / f"{name}.jsonl"
        if not out[name].is_file():
            out[name].write_text("".join(json.dumps(q) + "\n" for q in rows))
    return out


def accuracy(questions: Path, answers: Path) -> float:
    """Exact-match accuracy in percent (`llava-dpa score`'s short-answer exact match)."""
    return 100.0 * score(str(questions), str(answers))["short_answer"]["exact_match"]


def vqa_scores(files: dict, answers: Path) -> dict:
    out = {}
    for split in SPLITS:
        out[split] = accuracy(files[split], answers)
        out[f"{split}.by_type"] = {t: accuracy(files[f"{split}.{t}"], answers) for t in QUESTION_TYPES}
    return out


def text_scores(files: dict, answers: Path) -> dict:
    return {"accuracy": accuracy(files["text"], answers),
            "by_type": {t: accuracy(files[f"text.{t}"], answers) for t in TEXT_TYPES}}


def forgetting(before: float, after: dict[str, float]) -> dict:
    """Per arm: F = before - after (Table 1's printed-value convention), and, against the baseline, the
    reduction in points and relative to the baseline's forgetting (report.forgetting_reduction)."""
    llm = "target before multimodal training"
    rows = {llm: {"Text": before}, **{name: {"Text": value} for name, value in after.items()}}
    for row in rows.values():
        row.update(dict.fromkeys(GROUPS["Text"]))
    out = {}
    for name in after:
        r = forgetting_reduction(rows, name, BASELINE.name, llm)
        out[name] = {"forgetting": r["forgetting_dpa"], "reduction_points": r["points"],
                     "reduction_relative_pct": r["relative_reduction_pct"]}
    return out


def losses(folder: Path) -> dict:
    """A training's logged loss per step, and HF's train_runtime (the optimizer steps' time)."""
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    curve = [[h["step"], h["loss"]] for h in history if "loss" in h]
    runtime = next((h["train_runtime"] for h in history if "train_runtime" in h), None)
    return {"curve": curve, "train_runtime": runtime}


def _stage_timing(timings: dict, seed: int, label: str, stage: int) -> dict:
    t = timings.get(f"seed {seed} | {label} | stage {stage}")
    return {"wall": t["wall"], "cpu": t["cpu"]} if t else {"wall": None, "cpu": None}


def seed_measures(config: StudyConfig, world: dict, seed: int, timings: dict) -> dict:
    settings = settings_for(config, world, seed)
    files = subsets(world)
    m: dict = {"arms": {}, "perceivers": {}}
    after = {}
    for a in ARMS:
        entry = REGISTRY[a.entry]
        text = text_scores(files, answers_path(config, seed, a.name, "text"))
        after[a.name] = text["accuracy"]
        stages = {1: losses(stage1_dir(entry, settings)), 2: losses(output_dir(entry, settings))}
        for s in (1, 2):
            stages[s].update(_stage_timing(timings, seed, a.name, s))
        m["arms"][a.name] = {"vqa": vqa_scores(files, answers_path(config, seed, a.name)), "text": text,
                             "stages": {str(s): v for s, v in stages.items()}}
    before = text_scores(files, text_before_path(config))
    m["text_before"] = before
    for name, f in forgetting(before["accuracy"], after).items():
        m["arms"][name]["forgetting"] = f
    perceiver = REGISTRY[PERCEIVERS["perceiver"]]
    stages = {1: losses(stage1_dir(perceiver, settings)), 2: losses(output_dir(perceiver, settings))}
    for s in (1, 2):
        stages[s].update(_stage_timing(timings, seed, "perceiver", s))
    m["perceivers"]["perceiver"] = {"vqa": vqa_scores(files, answers_path(config, seed, "perceiver")),
                                    "stages": {str(s): v for s, v in stages.items()}}
    m["perceivers"]["perceiver-untrained"] = {}
    mir = json.loads((seed_dir(config, seed) / "mir" / "mir.json").read_text())
    for (name, _, component), result in zip(mir_views(config, settings), mir):
        target = m["arms"].get(name) or m["perceivers"].get(name)
        record = {"fd": result["fd"], "mir": result["mir"], "tokens": result["tokens"]}
        if target is None:   # the perceiver inside a DPA arm
            m["arms"][name.split(":")[0]]["mir_perceiver"] = record
        else:
            target["mir"] = record
    updates = json.loads((seed_dir(config, seed) / "updates" / "updates.json").read_text())
    for a, result in zip(ARMS, updates):
        m["arms"][a.name]["updates"] = {
            "density": {tau: row["total"] for tau, row in result["density"].items()},
            "intrusion": {eps: row["total"] for eps, row in result["intrusion"].items()},
            "parameters": result["parameters"], "top_k": result["top_k"]}
    return m


def world_facts(world: dict) -> dict:
    """Chance levels (the majority answer per question type) and sizes, from the world's own files."""
    facts = {"counts": world["counts"]}
    for split in (*SPLITS, "text"):
        facts[f"chance_{split}"] = chance(read_jsonl(world[split]))
    return facts
