"""The scripts in scripts/train/ run as shipped, with tiny models and small overrides, so they cannot rot."""
import json
import os

import pytest
import torch

from conftest import PY, REPO, TINY_PINPOINTS, run

TINY = "--max_steps 1 --gradient_accumulation_steps 1 --per_device_train_batch_size 2 --dataloader_num_workers 0 " \
       "--warmup_steps 0 --save_steps 1000 --model_max_length 1024"


def recipe_env(zoo, checkpoints, **extra):
    env = {"LAUNCHER": "python", "PYTHON": PY, "PRECISION_ARGS": "", "VIT": zoo["qwen2_5_vl_vit"],
           "ANYRES_PINPOINTS": TINY_PINPOINTS, "STAGE1_DATA": zoo["stage1_data"], "STAGE1_IMAGES": zoo["images"],
           "STAGE2_DATA": zoo["stage2_data"], "STAGE2_IMAGES": zoo["images"], "CHECKPOINTS": str(checkpoints),
           "WSD_DECAY_STEPS": "1", "EXTRA_ARGS": TINY, "PATH": os.path.dirname(PY) + os.pathsep + os.environ["PATH"]}
    env.update(extra)
    return env


def recipe(name, env):
    return run(["bash", str(REPO / "scripts" / "train" / name)], env=env)


@pytest.mark.parametrize("family,lm", [("qwen3_4b", "qwen3_lm"), ("llama3_2_3b", "llama_lm")])
def test_baseline_stage1_then_stage2(zoo, tmp_path, family, lm):
    env = recipe_env(zoo, tmp_path, LLM=zoo[lm])
    recipe(f"baseline_{family}_stage1.sh", env)
    stage1 = next(tmp_path.glob("*-stage1"))
    assert (stage1 / "mm_projector.bin").is_file()
    recipe(f"baseline_{family}_stage2.sh", env)
    final = [p for p in tmp_path.iterdir() if p != stage1]
    assert len(final) == 1 and (final[0] / "model.safetensors").is_file()


def test_baseline_qwen3_32b_qlora(zoo, tmp_path):
    env = recipe_env(zoo, tmp_path, LLM=zoo["qwen3_lm"], EXTRA_ARGS=TINY + " --lora_r 8 --lora_alpha 16")
    recipe("baseline_qwen3_32b_stage1.sh", env)
    recipe("baseline_qwen3_32b_qlora_stage2.sh", env)
    out = tmp_path / "llava-next-qwen3-32b-qlora"
    assert (out / "adapter_config.json").is_file() and (out / "non_lora_trainables.bin").is_file()
    import json

    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert "model\\.layers\\.0\\.self_attn\\.q_proj" in targets and "vision_tower" not in targets
    assert json.loads((out / "config.json").read_text())["quantization_config"]["load_in_4bit"] is True


def test_perceiver_then_dpa_recipes(zoo, tmp_path):
    """perceiver stage 1+2 (the baseline pipeline on the small LM), then DPA stage 1+2 for both families and
    the 32B QLoRA row, each differing from its baseline recipe only in --vision_tower."""
    env = recipe_env(zoo, tmp_path, LLM=zoo["qwen3_lm_b"])
    recipe("perceiver_qwen3_0_6b_stage1.sh", env)
    recipe("perceiver_qwen3_0_6b_stage2.sh", env)
    perceiver = tmp_path / "llava-qwen3-0.6b"
    assert (perceiver / "model.safetensors").is_file()
    for family, lm in (("qwen3_4b", "qwen3_lm"), ("llama3_2_3b", "llama_lm")):
        env = recipe_env(zoo, tmp_path, LLM=zoo[lm], PERCEIVER_LR="3e-5")
        recipe(f"dpa_{family}_stage1.sh", env)
        recipe(f"dpa_{family}_stage2.sh", env)
    for slug in ("qwen3-4b", "llama3.2-3b"):
        config = json.loads((tmp_path / f"dpa-{slug}" / "config.json").read_text())
        assert config["mm_vision_tower"] == str(perceiver) and config["mm_hidden_size"] == 64
    env = recipe_env(zoo, tmp_path, LLM=zoo["qwen3_lm"], EXTRA_ARGS=TINY + " --lora_r 8 --lora_alpha 16")
    recipe("dpa_qwen3_32b_stage1.sh", env)
    recipe("dpa_qwen3_32b_qlora_stage2.sh", env)
    saved = torch.load(tmp_path / "dpa-qwen3-32b-qlora" / "non_lora_trainables.bin", weights_only=True)
    assert any(".perceiver.model.layers." in k for k in saved)


def test_dpa_recipes_differ_from_baselines_only_in_the_tower():
    scripts = REPO / "scripts" / "train"

    def stage_call(text):
        return next(line for line in text.splitlines() if line.startswith("stage"))

    for family in ("qwen3_4b", "llama3_2_3b"):
        for stage in (1, 2):
            base = stage_call((scripts / f"baseline_{family}_stage{stage}.sh").read_text())
            dpa = stage_call((scripts / f"dpa_{family}_stage{stage}.sh").read_text())
            assert '"$PERCEIVER"' in dpa and '"$VIT"' in base
            assert dpa.replace('"$PERCEIVER"', '"$VIT"').replace("/dpa-", "/llava-next-") == base


ROW_SCRIPTS = sorted((REPO / "scripts" / "train").glob("table[34]_*.sh"))


def row_call(path):
    return next(line for line in path.read_text().splitlines() if line.startswith("row "))


def test_each_table4_variant_differs_from_dpa_only_in_its_flags():
    dpa = row_call(REPO / "scripts/train/table4_dpa.sh").split()
    assert dpa[:4] == ["row", '"$PERCEIVER"', '"${OUTPUT:=$CHECKPOINTS/table4-dpa}"', "qwen_3"] and len(dpa) == 4
    for path in ROW_SCRIPTS:
        call = row_call(path).split()
        assert call[0] == "row" and call[3] == "qwen_3", path.name
        variant_flags = call[4:]
        if path.name in ("table4_instruction_context.sh", "table4_perceiver_frozen.sh", "table4_untrained_multitask.sh"):
            assert variant_flags and all(f.startswith(("--", '"$', "True", "2")) for f in variant_flags)
    assert len(ROW_SCRIPTS) == 14  # Table 3 (5 rows) + Table 4 (9 rows)


def test_ladder_and_runner_with_tiny_models(zoo, tmp_path):
    """The perceiver ladder builds its perceivers (untrained, stage-1 only, stage 2 on nested subsets), then
    the runner trains and evaluates rows of both tables on them. (Each variant's defining property is
    tested in-process in test_ablations.py; this runs the shipped scripts end to end.)"""
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 0, "image": "img_000.png", "text": "What color is the shape?"}))
    env = recipe_env(zoo, tmp_path, PERCEIVER_LM=zoo["qwen3_lm_b"], LLM=zoo["qwen3_lm"], LADDER_SIZES="10k:6 1m:14",
                     VIT_WIDTH="64", LLM_WIDTH="64", LARGE_MLP_DEPTH="3", LARGE_MLP_BUDGET="100000",
                     EVAL_QUESTIONS=str(questions), EVAL_IMAGES=zoo["images"])
    recipe("perceiver_ladder.sh", dict(env, SKIP_DPA="1"))
    small, large = ([r["id"] for r in json.loads((tmp_path / "data" / f"stage2-{n}.json").read_text())] for n in ("10k", "1m"))
    assert set(small) <= set(large) and (len(small), len(large)) == (6, 14)
    for perceiver in ("perceiver-untrained", "perceiver-stage1-only", "llava-qwen3-0.6b-10k", "llava-qwen3-0.6b-1m"):
        assert (tmp_path / perceiver / "model.safetensors").is_file(), perceiver
    rows = ["table3_stage2_10k", "table4_instruction_context", "table4_wo_perceiver_lm_blocks", "table4_large_mlp"]
    run(["bash", str(REPO / "scripts/train/run_ablations.sh"), *rows], env=env)
    configs = {row: json.loads((tmp_path / row / "config.json").read_text()) for row in rows}
    for row in rows:
        assert len((tmp_path / "eval" / f"{row}.jsonl").read_text().splitlines()) == 1, row
    assert configs["table3_stage2_10k"]["mm_vision_tower"] == str(tmp_path / "llava-qwen3-0.6b-10k")
    assert configs["table4_instruction_context"]["perceiver_instruction_context"] is True
    assert "mm_perceiver_prefix_ids" not in configs["table4_wo_perceiver_lm_blocks"]  # a plain ViT tower
    assert configs["table4_large_mlp"]["mm_projector_type"] == "large_mlp"
    bad = run(["bash", str(REPO / "scripts/train/run_ablations.sh"), "table9_nothing"], env=env, check=False)
    assert bad.returncode == 2 and "unknown row table9_nothing" in bad.stderr
