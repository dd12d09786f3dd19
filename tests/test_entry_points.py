"""LLaVA's own, unmodified entry points train, chat and evaluate (through subprocesses)."""
import ast
import json
import re

import torch
from conftest import PY, REPO, GreedyReference, entry_point, free_port, run, train_cmd

IMAGE = "img_000.png"


def chat(model_path, image, questions, extra=(), own_process=False):
    """llava.serve.cli, greedy, with --debug: what it printed and each turn's {'prompt', 'outputs'}. In this
    process unless `own_process` (this module's CLI tests start `python -m llava.serve.cli` itself)."""
    args = ["--model-path", model_path, "--image-file", image, "--device", "cpu", "--temperature", "0",
            "--max-new-tokens", "6", "--debug", *extra]
    typed = "\n".join(questions) + "\n\n"
    if own_process:
        printed = run([PY, "-m", "llava.serve.cli", *args], input=typed).stdout
    else:
        printed = entry_point("llava.serve.cli", *args, stdin=typed)
    turns = [ast.literal_eval(m) for m in re.findall(r"^ (\{'prompt'.*\}) $", printed, flags=re.M)]
    return printed, turns


FALLBACK = "flash-attn is not installed; training with attn_implementation='sdpa'"


def test_train_mem_falls_back_to_sdpa_with_a_warning(baseline_stage1):
    # the session fixture ran `python -m llava.train.train_mem` (which asks for flash-attention-2); its log
    log = (baseline_stage1 / "train.log").read_text()
    assert FALLBACK in log.split("--- stderr ---")[1]
    state = torch.load(baseline_stage1 / "mm_projector.bin", weights_only=True)
    assert state and all("mm_projector" in k for k in state)


def test_train_module_trains_without_asking_for_flash_attention(zoo, tmp_path):
    proc = run(train_cmd(zoo, tmp_path / "b", stage=1, module="llava.train.train", extra=["--max_steps", "1"]))
    assert (tmp_path / "b" / "mm_projector.bin").is_file() and FALLBACK not in proc.stderr


def check_chat(checkpoint, image, turns, max_new_tokens=6, model_base=None):
    """A llava.serve.cli chat (`chat`'s turns): each turn's prompt holds every earlier answer as its assistant turn,
    and each answer is the checkpoint's greedy answer to that turn's prompt, computed here with model.generate
    (conftest.GreedyReference: equal, or parting only at a near-tie), whatever the tiny model learned to say."""
    assert turns[0]["prompt"].startswith("<|im_start|>user\n<image>\n")  # the qwen_3 template, as recorded
    for n, turn in enumerate(turns[:-1]):
        # the answer, exactly, as the assistant turn closing the history (an empty answer too)
        assert f"<|im_start|>assistant\n{turn['outputs']}<|im_end|>\n<|im_start|>user\n" in turns[n + 1]["prompt"]
    reference = GreedyReference(checkpoint, model_base)
    for turn in turns:
        reference.check(image, turn["prompt"], turn["outputs"], max_new_tokens)


def test_cli_two_turn_chat_keeps_history(zoo, baseline_stage2):
    image = f"{zoo['images']}/{IMAGE}"
    printed, turns = chat(baseline_stage2, image, ["What color is the shape?", "What shape is it?"], own_process=True)
    assert len(turns) == 2, printed
    first, second = turns
    assert first["prompt"].startswith("<|im_start|>user\n<image>\nWhat color is the shape?")
    # the second prompt holds the first answer as an assistant turn
    assert f"<|im_start|>assistant\n{first['outputs']}<|im_end|>" in second["prompt"]
    assert second["prompt"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    check_chat(baseline_stage2, image, turns)


def test_cli_conv_mode_override(zoo, baseline_stage2):
    _, turns = chat(baseline_stage2, f"{zoo['images']}/{IMAGE}", ["hi"], extra=["--conv-mode", "llava_v1"], own_process=True)
    assert turns[0]["prompt"].startswith("A chat between a curious human")


def test_run_llava_and_vqa_scripts(zoo, baseline_stage2, tmp_path):
    """run_llava, model_vqa and model_vqa_loader answer as model.generate does here on the same prompt and image."""
    question = "What color is the shape?"
    proc = run([PY, "-m", "llava.eval.run_llava", "--model-path", str(baseline_stage2), "--image-file",
                f"{zoo['images']}/{IMAGE}", "--query", question, "--temperature", "0", "--max_new_tokens", "4"])
    reference = GreedyReference(baseline_stage2)
    prompt = reference.prompt(question)
    assert prompt.startswith("<|im_start|>user\n<image>\n")  # the template from the checkpoint's config
    # run_llava prints the answer last (an empty answer is an empty last line)
    reference.check(f"{zoo['images']}/{IMAGE}", prompt, proc.stdout.splitlines()[-1].strip(), 4)
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps({"question_id": i, "image": f"img_00{i}.png", "text": question})
                                   for i in range(3)))
    # model_vqa generates up to 1024 new tokens (fixed in its source), model_vqa_loader up to --max_new_tokens
    for module, extra, limit in (("llava.eval.model_vqa", [], 1024),
                                 ("llava.eval.model_vqa_loader", ["--max_new_tokens", "8"], 8)):
        answers = tmp_path / f"{module}.jsonl"
        run([PY, "-m", module, "--model-path", str(baseline_stage2), "--image-folder", zoo["images"],
             "--question-file", str(questions), "--answers-file", str(answers), "--temperature", "0", *extra])
        rows = [json.loads(line) for line in answers.read_text().splitlines()]
        assert [r["question_id"] for r in rows] == [0, 1, 2]
        for r in rows:
            reference.check(f"{zoo['images']}/img_00{r['question_id']}.png", prompt, r["text"], limit)


def test_deepspeed_zero2_on_cpu_without_a_launcher(zoo, perceiver, tmp_path):
    """A single-process ZeRO-2 DPA run started by plain `python -m llava.train.train_mem` with the rendezvous in
    the environment. (The ZeRO-2 baseline and the ZeRO-3 runs, under DeepSpeed's launcher with 1 and 2
    processes, are in test_multiprocess.py, which checks the same saved-weights property for each.)"""
    from test_multiprocess import assert_saved_tower_is_the_loaded_one_after_small_steps

    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    out = tmp_path / "zero2"
    run(train_cmd(zoo, out, stage=2, tower=str(perceiver), extra=[
        "--max_steps", "2", "--learning_rate", "1e-5", "--deepspeed", str(REPO / "scripts/train/deepspeed/zero2.json")]),
        env=env, timeout=900)
    assert_saved_tower_is_the_loaded_one_after_small_steps(out, str(perceiver), is_perceiver=True)


def test_eval_script_answers_a_question_file(zoo, baseline_stage2, tmp_path):
    """scripts/eval/llava_vqa.sh answers as model.generate does here (MAX_NEW_TOKENS reaches the script)."""
    question = "What shape is it?"
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps({"question_id": f"q{i}", "image": f"img_00{i}.png", "text": question})
                                   for i in range(2)))
    answers = tmp_path / "a.jsonl"
    run(["bash", str(REPO / "scripts/eval/llava_vqa.sh"), str(baseline_stage2), str(questions), zoo["images"], str(answers)],
        env={"PYTHON": PY, "MAX_NEW_TOKENS": "5"})
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == ["q0", "q1"]
    reference = GreedyReference(baseline_stage2)
    for i, r in enumerate(rows):
        reference.check(f"{zoo['images']}/img_00{i}.png", reference.prompt(question), r["text"], 5)
