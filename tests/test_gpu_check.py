"""The prepared GPU check (docs/gpu.md, llava_dpa/gpu_check): its CPU smoke end to end through
scripts/gpu/check.sh (the ZeRO-3 check's DeepSpeed launch included), the JSON's schema, the runner's limits, skips
and process isolation, the time limit of every process a check starts, and what check.sh installs for DeepSpeed."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from llava_dpa.gpu_check import runner
from llava_dpa.gpu_check.checks import ZERO3_MOVED_PARTS, moved
from llava_dpa.gpu_check.processes import run_command
from llava_dpa.gpu_check.schema import SCHEMA, problems

REPO = Path(__file__).resolve().parents[1]
CHECK_SH = REPO / "scripts" / "gpu" / "check.sh"


def smoke(outdir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_WORKDIR=str(outdir.parent / "work"))
    return subprocess.run(["bash", str(CHECK_SH), "--cpu-smoke", "--no-install", *extra, str(outdir)],
                          capture_output=True, text=True, env=env, timeout=1200, check=False)


def test_the_cpu_smoke_runs_every_check_and_writes_the_json(tmp_path):
    out = tmp_path / "out"
    start = time.monotonic()
    proc = smoke(out)
    took = time.monotonic() - start
    report = json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").is_file() else {}
    not_passed = [{k: c[k] for k in ("name", "status", "error")} | {"figures": str(c["figures"])[-3000:]}
                  for c in report.get("checks", []) if c["status"] != "passed"]
    assert proc.returncode == 0, (not_passed, proc.stdout[-4000:] + proc.stderr[-4000:])
    assert problems(report) == []
    assert report["mode"] == "cpu-smoke" and report["complete"] and report["environment"]["device"] == "cpu"
    assert [c["name"] for c in report["checks"]] == [u.name for u in runner.plan("smoke")]
    assert all(c["status"] == "passed" for c in report["checks"])
    log = (out / "gpu_check.log").read_text()
    assert "[gpu-check] done in" in log and "exit status 0" in log
    assert list((tmp_path / "work").iterdir()) == []  # the run's work folder, with the models, is removed
    checks = {c["name"]: c["figures"] for c in report["checks"]}
    for form in ("llava", "qwen-vl"):
        for model in ("DPA", "baseline"):
            forward = checks[f"forward/{form}"][model]
            assert max(forward["rel_l2_bf16_vs_fp32"]) <= checks[f"forward/{form}"]["tolerance_rel_l2"]
            assert forward["rows_apart_rel"] > 0  # the two rows' images both reached the logits
            assert checks[f"generate/{form}"][model]["equal"]
            assert checks[f"packing/{form}"][model]["grad_cosine"] >= 0.99
        train = checks[f"train/{form}"]
        assert set(train) == {"baseline stage 1", "baseline stage 2", "DPA stage 1", "DPA stage 2"}
        for run in train.values():
            assert run["exact"] and run["steps"] == 1 and run["gradient_checkpointing"]
        assert train["DPA stage 1"]["trained_parts"] == ["projector"]
        assert {"perceiver_lm", "language_model", "projector"} <= set(train["DPA stage 2"]["trained_parts"])
        assert "perceiver_lm_head" not in train["DPA stage 2"]["trained_parts"]
        rows = checks[f"bench/{form}"]["cost_ratio_dpa_over_baseline"]
        assert set(rows) == {"prefill", "decode", "train_stage2", "train_stage1"}
        assert checks[f"bench/{form}"]["paper"]["training_cost"] == 1.14
    qlora = checks["qlora"]
    assert qlora["quantized_4bit_params"] > 0 and qlora["perceiver_lora_params"] > 0 and qlora["exact"]
    # ZeRO-3: the registry's deepspeed command (DeepSpeed's launcher, LLaVA's entry point, zero3.json) trained one
    # step, and the gathered save holds weights moved from the loaded ones in every part with a loaded counterpart
    zero3 = checks["zero3"]
    assert "-m deepspeed.launcher.runner" in zero3["command"] and "--module llava.train.train_mem" in zero3["command"]
    assert zero3["launched_by_deepspeed"] and zero3["deepspeed_config"].endswith("zero3.json") and zero3["zero_stage"] == 3
    assert zero3["deepspeed_version"] == metadata.version("deepspeed")
    assert zero3["steps"] == 1 and zero3["loss"] > 0 and zero3["seconds"] > 0 and not zero3["timed_out"]
    for part in ZERO3_MOVED_PARTS:
        assert zero3["parts"][part]["tensors"] > 0 and zero3["parts"][part]["changed"] == zero3["parts"][part]["tensors"]
    seconds = {c["name"]: c["seconds"] for c in report["checks"]}
    print(f"cpu smoke through check.sh: {took:.1f} s (the checks {report['seconds']:.1f} s, zero3 {seconds['zero3']:.1f} s)")


@pytest.mark.fast
def test_the_schema_names_what_departs():
    good = {"schema": SCHEMA, "mode": "gpu", "size": "full", "started": "2026-01-01T00:00:00+00:00", "seconds": 1.0,
            "deadline_s": 440, "complete": True,
            "environment": {"device": "H200", "driver": "580", "cuda": "13.0", "gpu_memory_gib": 139.8,
                            "python": "3.12.3", "platform": "Linux", "commit": None, "bundle_commit": "abc",
                            "bundle_dirty": False, "dtype": "bfloat16",
                            "attn_implementation": "sdpa",
                            "versions": {p: None for p in __import__("llava_dpa.gpu_check.schema").gpu_check.schema.PACKAGES}},
            "checks": [{"name": "build", "status": "passed", "seconds": 1.0, "time_limit_s": 150, "figures": {},
                        "error": None}],
            "summary": {"passed": 1, "failed": 0, "error": 0, "timeout": 0, "skipped": 0}}
    assert problems(good) == []
    bad = json.loads(json.dumps(good))
    bad["checks"][0].update(status="timeout", seconds="1")
    bad["environment"].pop("driver")
    found = "\n".join(problems(bad))
    assert "without an error" in found and "checks[0].seconds" in found and "no 'driver'" in found
    assert "does not count" in found  # the summary still says passed


@pytest.mark.fast
def test_only_takes_what_a_check_needs():
    names = [u.name for u in runner.select(runner.plan(), ["generate/qwen-vl"])]
    assert names == ["build", "assemble/qwen-vl", "generate/qwen-vl"]
    assert [u.name for u in runner.select(runner.plan(), ["zero3"])] == ["build", "zero3"]
    assert "bench-packing" in [u.name for u in runner.plan()] and "bench-packing" not in [u.name for u in runner.plan("smoke")]
    with pytest.raises(ValueError, match="unknown check"):
        runner.select(runner.plan(), ["nonsense"])


@pytest.mark.fast
def test_a_failing_or_hanging_check_does_not_stop_the_others(tmp_path, monkeypatch):
    def execute(name, size, workdir, device, limit=None, attn="sdpa"):
        if name == "build":
            return {"passed": True, "figures": {}}
        if name == "qlora":
            time.sleep(5)
        if name == "assemble/llava":
            raise RuntimeError("out of memory")
        return {"passed": name != "train/llava", "figures": {"name": name}}

    monkeypatch.setattr(runner, "execute", execute)
    monkeypatch.setattr(runner, "SMOKE_LIMITS", {k: 0.5 for k in runner.LIMITS})
    monkeypatch.setattr(runner, "MIN_LIMIT_S", 0.1)
    monkeypatch.setattr(runner, "environment", lambda device, dtype, attn: json.loads(json.dumps(ENV)))
    assert runner.run(tmp_path / "out", "smoke", "cpu", "inline", tmp_path / "work") == 1
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert problems(report) == []
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status["qlora"] == "timeout" and status["assemble/llava"] == "error" and status["train/llava"] == "failed"
    assert status["forward/llava"] == "skipped" and status["forward/qwen-vl"] == "passed"
    errors = {c["name"]: c["error"] for c in report["checks"]}
    assert "out of memory" in errors["assemble/llava"] and "needs assemble/llava" in errors["forward/llava"]
    # a deadline that is spent skips what is left, and the report says so
    assert runner.run(tmp_path / "late", "smoke", "cpu", "inline", tmp_path / "work", deadline_s=0.05) == 1
    late = json.loads((tmp_path / "late" / "gpu_check.json").read_text())
    assert problems(late) == [] and all(c["status"] == "skipped" for c in late["checks"])
    assert "out of time" in late["checks"][0]["error"]
    # a report that departs from its schema is a 1 too (2 is check.sh's "could not start")
    monkeypatch.setattr(runner, "problems", lambda report: ["environment: no 'driver'"])
    assert runner.run(tmp_path / "odd", "smoke", "cpu", "inline", tmp_path / "work", only=["build"]) == 1


@pytest.mark.fast
def test_the_bundle_commit_is_reported_beside_the_trees(tmp_path, monkeypatch):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"commit": "0123abc", "dirty": True, "wheels": []}))
    monkeypatch.setenv("LLAVA_DPA_BUNDLE_MANIFEST", str(manifest))
    monkeypatch.setenv("LLAVA_DPA_COMMIT", "fedcba9")
    env = runner.environment("cpu", "float32")
    assert (env["commit"], env["bundle_commit"], env["bundle_dirty"]) == ("fedcba9", "0123abc", True)
    monkeypatch.delenv("LLAVA_DPA_BUNDLE_MANIFEST")
    assert runner._bundle() == (None, None)


ENV = {"device": "cpu", "driver": None, "cuda": None, "gpu_memory_gib": None, "python": "3", "platform": "x",
       "commit": None, "bundle_commit": None, "bundle_dirty": None, "dtype": "bfloat16", "attn_implementation": "sdpa",
       "versions": {p: None for p in __import__("llava_dpa.gpu_check.schema").gpu_check.schema.PACKAGES}}


def test_process_isolation_runs_a_check_in_its_own_process(tmp_path):
    """The GPU run's isolation: each check a child process (`python -m llava_dpa.gpu_check unit`)."""
    assert runner.run(tmp_path / "out", "smoke", "cpu", "process", tmp_path / "work", only=["build"]) == 0
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert problems(report) == [] and report["checks"][0]["status"] == "passed"
    assert (tmp_path / "work" / "results" / "build.log").is_file()


@pytest.mark.fast
def test_check_sh_refuses_bad_arguments(tmp_path):
    proc = subprocess.run(["bash", str(CHECK_SH)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "OUTDIR" in proc.stdout
    proc = subprocess.run(["bash", str(CHECK_SH), "--bogus", str(tmp_path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr
    # without a bundle there is nothing to install from, and it says how to make one
    env = dict(os.environ, PYTHON=sys.executable, GPU_BUNDLE=str(tmp_path / "none"))
    proc = subprocess.run(["bash", str(CHECK_SH), "--cpu-smoke", str(tmp_path / "o")], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert proc.returncode == 2 and "make gpu-bundle" in proc.stdout + proc.stderr


def running(pid: int, wait_s: float = 10) -> bool:
    """Whether `pid` still runs after up to `wait_s` (killed, it may stay a zombie until its new parent reaps it)."""
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.1)
    return True


@pytest.mark.fast
def test_a_checks_command_is_killed_with_what_it_started_at_its_limit(tmp_path):
    """The ZeRO-3 check's launcher starts the ranks itself: at the limit the whole group goes, the rank included."""
    pidfile = tmp_path / "grandchild.pid"
    script = f"sleep 60 & echo $! > {pidfile}; echo started; wait"
    start = time.monotonic()
    finished = run_command(["bash", "-c", script], 1.5, tmp_path / "log")
    assert finished.timed_out and finished.returncode is None and time.monotonic() - start < 30
    assert "started" in finished.output
    assert not running(int(pidfile.read_text()))
    done = run_command(["bash", "-c", "echo one; echo two >&2; exit 3"], 60, tmp_path / "log2")
    assert (done.returncode, done.timed_out, done.output.splitlines()) == (3, False, ["one", "two"])


@pytest.mark.fast
def test_moved_compares_the_saved_weights_with_the_loaded_ones_per_part():
    import torch

    # the loaded weights as the components store them (bf16)
    base = {"model.layers.0.mlp.up_proj.weight": torch.full((4, 4), 0.02).bfloat16(),
            "model.norm.weight": torch.ones(4).bfloat16()}
    perceiver = {"model.layers.0.self_attn.q_proj.weight": torch.full((4, 4), 0.02).bfloat16()}
    step = 1e-5  # one Adam step of the registry's learning rate: below bf16's rounding at 0.02, not at 0.0001
    saved = {"model.layers.0.mlp.up_proj.weight": (base["model.layers.0.mlp.up_proj.weight"].float() + step).bfloat16(),
             "model.norm.weight": base["model.norm.weight"].clone(),
             "model.vision_tower.perceiver.model.layers.0.self_attn.q_proj.weight":
                 (torch.full((4, 4), 1e-4) + step).bfloat16(),
             "model.mm_projector.0.weight": torch.zeros(2, 2)}  # no loaded counterpart: not compared
    perceiver_low = {"model.layers.0.self_attn.q_proj.weight": torch.full((4, 4), 1e-4).bfloat16()}
    parts = moved(saved, {"model.vision_tower.perceiver.": perceiver_low, "": base})
    assert parts["language_model"]["tensors"] == 2 and parts["language_model"]["changed"] == 0  # rounded away
    assert parts["perceiver_lm"] == {"tensors": 1, "changed": 1, "other_shape": 0,
                                     "max_abs_change": pytest.approx(step, rel=0.1)}
    assert set(parts) == {"language_model", "perceiver_lm"}
    # trained in fp32 (the smoke), the same step is seen
    fp32 = moved({"model.layers.0.mlp.up_proj.weight": base["model.layers.0.mlp.up_proj.weight"].float() + step},
                 {"model.vision_tower.perceiver.": perceiver, "": base})
    assert fp32["language_model"]["changed"] == 1


@pytest.mark.fast
def test_flash_attention_is_refused_where_it_cannot_run(tmp_path, monkeypatch, capsys):
    """--attn flash_attention_2 (docs/gpu.md: the packed flash-attention path, for a machine with flash-attn)."""
    import importlib.util

    from llava_dpa.gpu_check.__main__ import main

    packing = runner.select(runner.plan(), ["packing/llava"])
    assert runner.attn_refusal("sdpa", "cpu", runner.plan()) is None
    assert "needs a CUDA device" in runner.attn_refusal("flash_attention_2", "cpu", packing)
    assert main(["run", str(tmp_path / "o"), "--size", "smoke", "--attn", "flash_attention_2"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err and not (tmp_path / "o").exists()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
    assert "flash-attn is not installed" in runner.attn_refusal("flash_attention_2", "cuda", packing)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else real(name, *a))
    assert runner.attn_refusal("flash_attention_2", "cuda", packing) is None
    refused = runner.attn_refusal("flash_attention_2", "cuda", runner.plan())
    assert "forward/llava, forward/qwen-vl compares with an fp32 run" in refused and "--only" in refused
    assert main(["run", str(tmp_path / "o"), "--size", "smoke", "--only", "nonsense"]) == 2
    assert "unknown check" in capsys.readouterr().err


def installed_by_check_sh() -> set[str]:
    text = CHECK_SH.read_text()
    loop = text[text.index("for pair in"):text.index("; do", text.index("for pair in"))]
    return {pair.split(":")[1] for pair in re.findall(r"[\w.]+:[\w-]+", loop)}


@pytest.mark.fast
def test_check_sh_installs_what_deepspeed_imports():
    """The GPU image has torch, transformers, peft and accelerate; check.sh brings the rest of what the installed
    DeepSpeed requires, whatever version constraints.txt moves to. ninja only builds ops just in time (the check
    asks for none; without nvcc none could be built) and nvidia-ml-py is optional (DeepSpeed imports it guarded)."""
    from packaging.requirements import Requirement

    def requires(dist):  # on Linux, without extras (the markers evaluated as pip does)
        found = (Requirement(r) for r in metadata.requires(dist) or [])
        return {re.sub(r"[-_.]+", "-", r.name).lower() for r in found
                if r.marker is None or r.marker.evaluate({"extra": ""})}

    image = {"torch", "numpy", "packaging"}  # torch's and transformers' own requirements
    needed, todo = set(), ["deepspeed"]
    while todo:  # what DeepSpeed requires, and what that requires, down to what the image has
        for dist in requires(todo.pop()) - image - {"ninja", "nvidia-ml-py"} - needed:
            needed.add(dist)
            todo.append(dist)
    assert "pydantic-core" in needed  # the closure reached pydantic's own requirements
    missing = needed - installed_by_check_sh()
    assert not missing and "deepspeed" in installed_by_check_sh(), missing


def test_bench_times_decode_as_the_cached_steps_alone(tmp_path):
    """Issue 21 point 3: decode is the cached steps after an untimed prefill, each timed alone; they decode what
    `generate` decodes."""
    import torch

    from llava_dpa.benchmarks.models import build_pair
    from llava_dpa.benchmarks.throughput import Pipeline, measure

    pair = build_pair("qwen3-4b", 0.02, tmp_path, image_size=56)
    pipe = Pipeline("DPA", pair["DPA"], "cpu", torch.float32, 8, image_side=56)
    with torch.no_grad():
        timed = pipe.decode_steps(3)
        assert len(timed) == 3 and all(parts["vit"] == 0 and parts["perceiver_lm"] == 0 for _, parts in timed)
        assert all(parts["target"] > 0 for _, parts in timed)  # each step runs the target alone, on one token
        state, mine = pipe.decode_state(), []
        mine.append(int(state[1]))
        for _ in range(3):
            state = pipe.decode_step(state)
            mine.append(int(state[1]))
        generated = pipe.model.generate(pipe.input_ids, images=pipe.images, image_sizes=pipe.sizes, do_sample=False,
                                        max_new_tokens=4, pad_token_id=pipe.tokenizer.pad_token_id)[0, -4:].tolist()
    assert generated == mine[:len(generated)]
    result = measure([pipe], repeats=2, warmup=0, decode_steps=3, only=("decode",))["DPA"]["decode"]
    assert result["steps"] == 3 and len(result["mean_per_token_by_repeat"]) == 2
    assert result["seconds_per_token"] == result["seconds"] > 0
