"""LLaVA's own, unmodified entry points train, chat and evaluate (through subprocesses)."""
import ast
import json
import re

import torch

from conftest import PY, REPO, assert_same_greedy, entry_point, free_port, run, train_cmd

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


def reference_answer(checkpoint, image_path, prompt, max_new_tokens, model_base=None):
    """The greedy answer to `prompt` computed here, as llava.serve.cli computes it, and a check that another
    answer equals it (or parts from it only at a near-tie)."""
    from PIL import Image
    from llava.mm_utils import KeywordsStoppingCriteria, process_images, tokenizer_image_token

    from llava_dpa.data.tokenization import IMAGE_TOKEN_INDEX
    from llava_dpa.llava_integration.inference import decode_reply
    from llava_dpa.loading import load_pretrained_model

    tok, model, processor, _ = load_pretrained_model(str(checkpoint), model_base, "x", device="cpu", dtype=torch.float32)
    image = Image.open(image_path).convert("RGB")
    inputs = {"images": process_images([image], processor, model.config), "image_sizes": [image.size]}
    ids = tokenizer_image_token(prompt, tok, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
    stop = "<|im_end|>" if "<|im_end|>" in prompt else "<|eot_id|>"
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                             stopping_criteria=[KeywordsStoppingCriteria([stop], tok, ids)], **inputs)
    text = decode_reply(tok, out, ids)
    return text, lambda other: assert_same_greedy(model, tok, ids, text, other, **inputs)


def test_cli_two_turn_chat_keeps_history(zoo, baseline_stage2):
    printed, turns = chat(baseline_stage2, f"{zoo['images']}/{IMAGE}", ["What color is the shape?", "What shape is it?"],
                          own_process=True)
    assert len(turns) == 2, printed
    first, second = turns
    assert first["outputs"], "the model answered nothing"
    assert first["prompt"].startswith("<|im_start|>user\n<image>\nWhat color is the shape?")
    # the second prompt holds the first answer as an assistant turn
    assert f"<|im_start|>assistant\n{first['outputs']}<|im_end|>" in second["prompt"]
    assert second["prompt"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # each turn's answer is the checkpoint's greedy answer to that turn's prompt, computed here
    for turn in turns:
        _, same_as = reference_answer(baseline_stage2, f"{zoo['images']}/{IMAGE}", turn["prompt"], 6)
        same_as(turn["outputs"])


def test_cli_conv_mode_override(zoo, baseline_stage2):
    _, turns = chat(baseline_stage2, f"{zoo['images']}/{IMAGE}", ["hi"], extra=["--conv-mode", "llava_v1"], own_process=True)
    assert turns[0]["prompt"].startswith("A chat between a curious human")


def test_run_llava_and_vqa_scripts(zoo, baseline_stage2, tmp_path):
    proc = run([PY, "-m", "llava.eval.run_llava", "--model-path", str(baseline_stage2), "--image-file",
                f"{zoo['images']}/{IMAGE}", "--query", "What color is the shape?", "--temperature", "0",
                "--max_new_tokens", "4"])
    from llava.conversation import conv_templates

    conv = conv_templates["qwen_3"].copy()
    conv.append_message(conv.roles[0], "<image>\nWhat color is the shape?")
    conv.append_message(conv.roles[1], None)
    answer, same_as = reference_answer(baseline_stage2, f"{zoo['images']}/{IMAGE}", conv.get_prompt(), 4)
    assert answer
    same_as(proc.stdout.strip().splitlines()[-1])
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps({"question_id": i, "image": f"img_00{i}.png", "text": "What color is the shape?"})
                                   for i in range(3)))
    for module in ("llava.eval.model_vqa", "llava.eval.model_vqa_loader"):
        answers = tmp_path / f"{module}.jsonl"
        run([PY, "-m", module, "--model-path", str(baseline_stage2), "--image-folder", zoo["images"],
             "--question-file", str(questions), "--answers-file", str(answers), "--temperature", "0"])
        rows = [json.loads(line) for line in answers.read_text().splitlines()]
        assert [r["question_id"] for r in rows] == [0, 1, 2] and all(r["text"] for r in rows)


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
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps({"question_id": f"q{i}", "image": f"img_00{i}.png",
                                                "text": "What shape is it?"}) for i in range(2)))
    answers = tmp_path / "a.jsonl"
    run(["bash", str(REPO / "scripts/eval/llava_vqa.sh"), str(baseline_stage2), str(questions), zoo["images"], str(answers)],
        env={"PYTHON": PY})
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == ["q0", "q1"] and all(r["text"] for r in rows)
