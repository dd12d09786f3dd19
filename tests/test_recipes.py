"""The scripts in scripts/train/ run as shipped, with tiny models and small overrides, so they cannot rot."""
import os

import pytest

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
