"""LLaVA's own, unmodified entry points train, chat and evaluate (through subprocesses)."""
import ast
import json
import re

import pytest

from conftest import PY, REPO, run, tower_folder_weights, train_cmd
from llava_dpa.zoo.data import COLORS, SHAPES

IMAGE = "img_000.png"


def chat(model_path, image, questions, extra=(), python=PY):
    proc = run([python, "-m", "llava.serve.cli", "--model-path", str(model_path), "--image-file", image, "--device", "cpu",
                "--temperature", "0", "--max-new-tokens", "6", "--debug", *extra], input="\n".join(questions) + "\n\n")
    turns = [ast.literal_eval(m) for m in re.findall(r"^ (\{'prompt'.*\}) $", proc.stdout, flags=re.M)]
    return proc, turns


def test_train_mem_falls_back_to_sdpa_with_a_warning(baseline_stage1):
    # the session fixture ran `python -m llava.train.train_mem`; check what it wrote
    assert (baseline_stage1 / "mm_projector.bin").is_file()
    import torch

    state = torch.load(baseline_stage1 / "mm_projector.bin", weights_only=True)
    assert state and all("mm_projector" in k for k in state)


def test_train_module_and_flash_attention_fallback(zoo, tmp_path):
    proc = run(train_cmd(zoo, tmp_path / "a", stage=1, module="llava.train.train_mem", extra=["--max_steps", "1"]))
    assert "flash-attn is not installed; training with attn_implementation='sdpa'" in proc.stderr
    run(train_cmd(zoo, tmp_path / "b", stage=1, module="llava.train.train", extra=["--max_steps", "1"]))
    assert (tmp_path / "b" / "mm_projector.bin").is_file()


def test_cli_two_turn_chat_keeps_history(zoo, baseline_stage2):
    proc, turns = chat(baseline_stage2, f"{zoo['images']}/{IMAGE}", ["What color is the shape?", "What shape is it?"])
    assert len(turns) == 2, proc.stdout
    first, second = turns
    assert first["outputs"], "the model answered nothing"
    assert first["prompt"].startswith("<|im_start|>user\n<image>\nWhat color is the shape?")
    # the second prompt holds the first answer as an assistant turn
    assert f"<|im_start|>assistant\n{first['outputs']}<|im_end|>" in second["prompt"]
    assert second["prompt"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # trained on these questions, it answers in their vocabulary (CPU training is not bit-reproducible,
    # so the exact word is not asserted)
    assert first["outputs"] in COLORS and second["outputs"] in SHAPES


def test_cli_conv_mode_override(zoo, baseline_stage2):
    _, turns = chat(baseline_stage2, f"{zoo['images']}/{IMAGE}", ["hi"], extra=["--conv-mode", "llava_v1"])
    assert turns[0]["prompt"].startswith("A chat between a curious human")


def test_run_llava_and_vqa_scripts(zoo, baseline_stage2, tmp_path):
    proc = run([PY, "-m", "llava.eval.run_llava", "--model-path", str(baseline_stage2), "--image-file",
                f"{zoo['images']}/{IMAGE}", "--query", "What color is the shape?", "--temperature", "0",
                "--max_new_tokens", "4"])
    assert proc.stdout.strip().splitlines()[-1] in COLORS
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps({"question_id": i, "image": f"img_00{i}.png", "text": "What color is the shape?"})
                                   for i in range(3)))
    for module in ("llava.eval.model_vqa", "llava.eval.model_vqa_loader"):
        answers = tmp_path / f"{module}.jsonl"
        run([PY, "-m", module, "--model-path", str(baseline_stage2), "--image-folder", zoo["images"],
             "--question-file", str(questions), "--answers-file", str(answers), "--temperature", "0"])
        rows = [json.loads(line) for line in answers.read_text().splitlines()]
        assert [r["question_id"] for r in rows] == [0, 1, 2] and all(r["text"] for r in rows)


@pytest.mark.parametrize("zero,tower", [("zero2", "clip"), ("zero2", "perceiver"), ("zero3", "perceiver")])
def test_deepspeed_on_cpu(zoo, perceiver, tmp_path, zero, tower):
    """Single-process DeepSpeed runs; under ZeRO-3 the tower's weights are loaded into partitioned parameters."""
    from safetensors.torch import load_file

    path = str(perceiver) if tower == "perceiver" else zoo["clip"]
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517"}
    out = tmp_path / zero
    run(train_cmd(zoo, out, stage=2, tower=path, extra=[
        "--max_steps", "2", "--learning_rate", "1e-5", "--deepspeed", str(REPO / f"scripts/train/deepspeed/{zero}.json")]),
        env=env, timeout=900)
    saved = load_file(out / "model.safetensors")
    original = load_file(f"{path}/model.safetensors") if tower == "perceiver" else tower_folder_weights(path)
    prefix = "model.vision_tower.perceiver." if tower == "perceiver" else "model.vision_tower.vision_tower."
    pairs = [(saved[prefix + k], v) for k, v in original.items() if prefix + k in saved]
    assert len(pairs) > 10
    # trained for two small steps from the pretrained tower, not from a random initialisation
    assert max((a - b).abs().max().item() for a, b in pairs) < 1e-2


def test_eval_script_answers_a_question_file(zoo, baseline_stage2, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps({"question_id": f"q{i}", "image": f"img_00{i}.png",
                                                "text": "What shape is it?"}) for i in range(2)))
    answers = tmp_path / "a.jsonl"
    run(["bash", str(REPO / "scripts/eval/llava_vqa.sh"), str(baseline_stage2), str(questions), zoo["images"], str(answers)],
        env={"PYTHON": PY})
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == ["q0", "q1"] and all(r["text"] for r in rows)
