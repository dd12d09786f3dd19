"""The prepared GPU check (docs/gpu.md, llava_dpa/gpu_check): its CPU smoke end to end through
scripts/gpu/check.sh, the JSON's schema, and the runner's limits, skips and process isolation."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llava_dpa.gpu_check import runner
from llava_dpa.gpu_check.schema import SCHEMA, problems

REPO = Path(__file__).resolve().parents[1]
CHECK_SH = REPO / "scripts" / "gpu" / "check.sh"


def smoke(outdir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_WORKDIR=str(outdir.parent / "work"))
    return subprocess.run(["bash", str(CHECK_SH), "--cpu-smoke", "--no-install", *extra, str(outdir)],
                          capture_output=True, text=True, env=env, timeout=1200)


def test_the_cpu_smoke_runs_every_check_and_writes_the_json(tmp_path):
    out = tmp_path / "out"
    start = time.monotonic()
    proc = smoke(out)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((out / "gpu_check.json").read_text())
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
    print(f"cpu smoke through check.sh: {took:.1f} s (the checks {report['seconds']:.1f} s)")


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
    assert "bench-packing" in [u.name for u in runner.plan()] and "bench-packing" not in [u.name for u in runner.plan("smoke")]
    with pytest.raises(ValueError, match="unknown check"):
        runner.select(runner.plan(), ["nonsense"])


@pytest.mark.fast
def test_a_failing_or_hanging_check_does_not_stop_the_others(tmp_path, monkeypatch):
    def execute(name, size, workdir, device):
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
    monkeypatch.setattr(runner, "environment", lambda device, dtype: json.loads(json.dumps(ENV)))
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
    proc = subprocess.run(["bash", str(CHECK_SH)], capture_output=True, text=True)
    assert proc.returncode == 2 and "OUTDIR" in proc.stdout
    proc = subprocess.run(["bash", str(CHECK_SH), "--bogus", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr
    # without a bundle there is nothing to install from, and it says how to make one
    env = dict(os.environ, PYTHON=sys.executable, GPU_BUNDLE=str(tmp_path / "none"))
    proc = subprocess.run(["bash", str(CHECK_SH), "--cpu-smoke", str(tmp_path / "o")], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 2 and "make gpu-bundle" in proc.stdout + proc.stderr


def test_bench_times_decode_as_the_cached_steps_alone(tmp_path):
    """Issue 21 point 3: decode is the cached steps after an untimed prefill, each timed alone; they decode what
    `generate` decodes."""
    import torch

    from llava_dpa.benchmarks.throughput import Pipeline, measure
    from llava_dpa.benchmarks.models import build_pair

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
