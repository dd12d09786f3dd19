"""`llava-dpa study` (docs/study.md): the world's splits, the statistics against scipy's paired t-test, and one
`--quick` study end to end (one process, as a user runs it): every arm trained both stages through LLaVA's
entry point with the registry's commands, identical but for what the arm compares, the report written with
every per-seed number, and every arm learning (docs/study.md, "The learning check")."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import PY, run

from llava_dpa.study import world as W
from llava_dpa.study.arms import ARMS, BASELINE, PERCEIVERS
from llava_dpa.study.stats import paired

#: docs/study.md, "The learning check": every arm's i.i.d. count answers this far above the count questions' own
#: chance (their most frequent answer)
COUNT_MARGIN = 25.0


# ---- the world and the statistics (no training) -------------------------------------------------------------
@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    spec = W.WorldSpec(vit_images=200, stage1_images=100, stage2_images=100, test_per_type=20)
    return W.write_world(tmp_path_factory.mktemp("world"), spec)


def _rows(path):
    text = Path(path).read_text()
    return json.loads(text) if path.endswith(".json") else [json.loads(x) for x in text.splitlines() if x]


@pytest.mark.fast
def test_world_holds_its_splits_apart(small_world):
    """No training image (ViT pretraining, captions, instructions) holds a held-out combination, and the test images
    are not training images; checked here from the files, by drawing each test scene's layout from its question
    and the training scenes' from their captions and labels."""
    training = set()
    for row in _rows(small_world["vit"]):
        objects = row["objects"]
        training.add(tuple(sorted((o["cell"], o["color"], o["shape"], o["size"]) for o in objects)))
        assert not {(o["color"], o["shape"]) for o in objects} & set(W.HELD_OUT)
    for row in _rows(small_world["stage1"]):
        text = row["conversations"][1]["value"]
        assert not [h for h in W.HELD_OUT if f"{h[0]} {h[1]}" in text], text
    names = {r["image"] for r in _rows(small_world["vit"])} | {r["image"] for r in _rows(small_world["stage1"])}
    for r in _rows(small_world["stage2"]):
        names |= set(r["image"] if isinstance(r["image"], list) else [r["image"]])
    comp = _rows(small_world["test_comp"])
    for q in _rows(small_world["test_iid"]) + comp:
        assert q["image"] not in names
        assert (Path(small_world["images"]) / q["image"]).is_file()
    # every compositional question is about a held-out combination: its answer or its question names one
    for q in comp:
        if q["question_type"] in ("color", "shape"):
            words = f"{q['text']} {q['answer']}"
            assert any(c in words and s in words for c, s in W.HELD_OUT), q
    # balanced: each type equally often; yes/no half and half
    for split in ("test_iid", "test_comp"):
        rows = _rows(small_world[split])
        assert {t: sum(q["question_type"] == t for q in rows) for t in W.QUESTION_TYPES} == dict.fromkeys(W.QUESTION_TYPES, 20)
        for t in ("exist", "spatial"):
            assert sum(q["answer"] == "yes" for q in rows if q["question_type"] == t) == 10


@pytest.mark.fast
def test_chance_is_the_most_frequent_answer_per_type():
    questions = [{"question_type": "count", "answer": a} for a in ("one", "two", "two", "three")] + \
                [{"question_type": "exist", "answer": a} for a in ("yes", "no")]
    assert W.chance(questions) == {"per_type": {"count": 0.5, "exist": 0.5}, "overall": 3 / 6}


@pytest.mark.fast
def test_paired_interval_is_scipys_and_covering_zero_is_no_difference():
    from scipy import stats

    rng = random.Random(0)
    base = [rng.gauss(50, 5) for _ in range(5)]
    for shift, expected in ((8.0, "better"), (-8.0, "worse"), (0.3, "no difference")):
        arm = [b + shift + rng.gauss(0, 1) for b in base]
        got = paired(arm, base, higher_is_better=True)
        ref = stats.ttest_rel(arm, base).confidence_interval(0.95)
        assert got["low"] == pytest.approx(ref.low) and got["high"] == pytest.approx(ref.high)
        assert got["verdict"] == expected, (shift, got)
    lower_is_better = paired([b - 8 for b in base], base, higher_is_better=False)
    assert lower_is_better["verdict"] == "better"
    assert paired([1.0], [2.0], True)["verdict"] == "one seed: no interval"


# ---- the quick study -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "quick"
    proc = run([PY, "-m", "llava_dpa.cli", "study", str(out), "--quick"], timeout=900)
    return out, proc.stdout, json.loads((out / "report.json").read_text())


def _flags(command: list[str]) -> dict:
    out, key = {}, None
    for token in command[3:]:
        if token.startswith("--"):
            key = token
            out[key] = []
        else:
            out[key].append(token)
    return out


def test_quick_study_trains_every_arm_through_llava_with_the_registry_commands(quick):
    """Both stages of every arm and of the perceiver ran `python -m llava.train.train_mem` and finished (HF's
    trainer_state.json); each arm's commands differ from the baseline's only in the tower the registry gives it
    (and what follows from it: the folders named after the entry, the flag that makes a ViT train)."""
    out, printed, report = quick
    timings = json.loads((out / "timings.json").read_text())
    commands = {}
    for name in [a.name for a in ARMS] + ["perceiver"]:
        for stage in (1, 2):
            key = f"seed 0 | {name} | stage {stage}"
            assert key in timings, key
            command = timings[key]["command"]
            assert command[1:3] == ["-m", "llava.train.train_mem"], command
            flags = _flags(command)
            state = Path(flags["--output_dir"][0]) / "trainer_state.json"
            assert state.is_file(), state
            assert json.loads(state.read_text())["global_step"] > 0
            commands[name, stage] = flags
            assert f"seed 0 | {name} | stage {stage}: done" in printed  # the progress line
    tower = {a.name: commands[a.name, 2]["--vision_tower"][0] for a in ARMS}
    assert tower["dpa"].endswith("/perceiver-qwen3-0.6b")
    assert tower["dpa-untrained"].endswith("/perceiver-untrained")
    assert tower["baseline-perceiver-vit"].endswith("/perceiver-qwen3-0.6b-vit")
    # the folders follow from the entry's name; a ViT is told to train in stage 2 (--unfreeze_mm_vision_tower), a
    # perceiver trains by default (docs/design.md, "The DPA perceiver"): in stage 2 every arm trains its tower
    derived = {"--vision_tower", "--output_dir", "--pretrain_mm_mlp_adapter", "--unfreeze_mm_vision_tower"}
    for a in ARMS:
        for stage in (1, 2):
            mine, base = commands[a.name, stage], commands[BASELINE.name, stage]
            differ = {k for k in set(mine) | set(base) if mine.get(k) != base.get(k)}
            assert differ <= derived, (a.name, stage, {k: (mine.get(k), base.get(k)) for k in differ - derived})


def test_quick_study_writes_its_report_with_every_per_seed_number(quick):
    out, _, report = quick
    for name in ("report.md", "report.json", "loss_curves.png", "accuracy.png", "forgetting.png", "mir.png"):
        assert (out / name).is_file(), name
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["command"] == ["llava-dpa", "study", str(out), "--quick"]
    assert report["versions"]["torch"] and report["versions"]["transformers"] and "commit" in report["git"]
    assert report["configuration"]["quick"] is True
    seed = report["seeds"]["0"]
    layers = report["configuration"]["parts"]["target_layers"]
    for a in ARMS:
        m = seed["arms"][a.name]
        numbers = [m["vqa"]["test_iid"], m["vqa"]["test_comp"], m["text"]["accuracy"], m["forgetting"]["forgetting"],
                   m["mir"]["mir"], *m["mir"]["fd"], *m["updates"]["density"].values(), *m["updates"]["intrusion"].values()]
        numbers += [m["vqa"][f"{s}.by_type"][t] for s in ("test_iid", "test_comp") for t in W.QUESTION_TYPES]
        numbers += [m["stages"][s][k] for s in ("1", "2") for k in ("train_runtime", "wall", "cpu")]
        assert all(isinstance(x, (int, float)) for x in numbers), (a.name, numbers)
        assert len(m["mir"]["fd"]) == layers
        assert all(len(m["stages"][s]["curve"]) > 0 for s in ("1", "2"))
        if a.perceiver:
            assert len(m["mir_perceiver"]["fd"]) == report["configuration"]["parts"]["perceiver_layers"]
    for name in PERCEIVERS:
        assert len(seed["perceivers"][name]["mir"]["fd"]) == report["configuration"]["parts"]["perceiver_layers"]
    md = (out / "report.md").read_text()
    for heading in ("## Results per arm", "## Differences from the baseline", "## Forgetting", "## MIR per layer",
                    "## Weight updates", "## Cost"):
        assert heading in md
    assert "one seed: no interval" in md   # with one seed no difference is claimed either way


def test_quick_study_every_arm_learns(quick):
    """docs/study.md's learning check: the images are read, not only the answer format learnt."""
    _, _, report = quick
    world, seed = report["world"], report["seeds"]["0"]
    chance_count = 100 * world["chance_test_iid"]["per_type"]["count"]
    for a in ARMS:
        vqa = seed["arms"][a.name]["vqa"]
        assert vqa["test_iid.by_type"]["count"] >= chance_count + COUNT_MARGIN, (a.name, vqa, chance_count)
