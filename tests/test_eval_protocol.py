"""The evaluation protocols (llava_dpa/recipes/evaluation.py) and `llava-dpa eval list|show|run`
(llava_dpa/commands/eval.py), which scripts/eval/run_paper_suite.sh launches.

- The commands are byte-identical to the bash script's before issue #19 (REFERENCE and EXECUTED at the end:
  its output, captured from commit 97afc97's scripts/eval/run_paper_suite.sh before it became a launcher).
- PROTOCOL=official: the release's generation settings and system prompt reach the command lines (read back
  with lmms-eval's own parser) and, through `--gen_kwargs` and `--model_args`, the llava_dpa model's generate
  and prompt."""
import argparse
import contextlib
import io
import json
import os
import shlex
import sys
import types
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from conftest import REPO, run

pytestmark = pytest.mark.fast  # dry runs print commands; the models below are stubs or a 2-layer toy

SCRIPT = str(REPO / "scripts/eval/run_paper_suite.sh")
MM_TASKS = ["mmstar", "seedbench_2_plus", "mmmu_val", "mathvista_testmini_format", "mathvision_test", "ocrbench", "ai2d"]
# The release (THUMAI-Lab/Deep-Pre-Alignment @1faf467): EVAL line 34 and 152; the OpenCompass model config
# vllm_qwen3_nothink_sft_reproduce.py lines 11-20. top_k=0: vLLM's SamplingParams default (no top-k).
OFFICIAL_MM = {"do_sample": True, "temperature": 0.01, "top_p": 0.9, "top_k": 0, "max_new_tokens": 4096}
OFFICIAL_TEXT = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "presence_penalty": 1.5,
                 "max_new_tokens": 32768}
SYSTEM = "You are a helpful assistant."  # EVAL line 41, given to the target at line 127
QWEN3_SYSTEM_TURN = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
# Every environment variable the script read before issue #19 (its header and its `${NAME...}` expansions)
SCRIPT_VARIABLES = {"PROTOCOL", "MODEL_BASE", "CONV_TEMPLATE", "DEVICE", "DTYPE", "BATCH_SIZE", "NUM_PROCESSES",
                    "LIMIT", "MM_TASKS", "TEXT_TASKS", "REDUX_TASK", "SKIP_MMLU_REDUX", "REDUX_BACKEND", "LLM_ONLY",
                    "JUDGE_MODEL", "MMVET_JUDGE_MODEL", "PYTHON", "DRY_RUN"}


def eval_cli(*argv):
    """`llava-dpa eval ...` in this process: (exit status, stdout, stderr)."""
    from llava_dpa.commands import eval as eval_command

    parser = argparse.ArgumentParser(prog="llava-dpa")
    eval_command.register(parser.add_subparsers(dest="command", required=True))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = parser.parse_args([str(a) for a in argv])
            code = args.func(args)
        except SystemExit as exc:  # argparse's refusals
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def environment(values, cwd=None):
    """The script's environment variables set as `values` (the others unset), in `cwd`."""
    saved, here = dict(os.environ), os.getcwd()
    for name in SCRIPT_VARIABLES | {"MODEL_VERSION"}:
        os.environ.pop(name, None)
    os.environ.update(values)
    if cwd:
        os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(saved)


def suite(*args, **env):
    """What run_paper_suite.sh with DRY_RUN=1 and PYTHON=py does, through `eval run --from-environment`."""
    with environment({"DRY_RUN": "1", "PYTHON": "py", **env}):
        code, stdout, stderr = eval_cli("eval", "run", "--from-environment", *args)
    commands = [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]
    return types.SimpleNamespace(returncode=code, stdout=stdout, stderr=stderr), commands


def option(cmd, name):
    return cmd[cmd.index(name) + 1] if name in cmd else None


def gen_kwargs(cmd):
    """`--gen_kwargs` as lmms-eval (and lm-evaluation-harness, which shares the parser) reads it."""
    from lmms_eval.utils import simple_parse_args_string

    value = option(cmd, "--gen_kwargs")
    return None if value is None else simple_parse_args_string(value)


def model_args(cmd):
    """`--model_args` as lmms-eval reads it (LlavaDPA.create_from_arg_string)."""
    from lmms_eval.utils import simple_parse_args_string

    return simple_parse_args_string(option(cmd, "--model_args"))


def judge(cmd):
    return next((c.split("=", 1)[1] for c in cmd[:2] if c.startswith("MODEL_VERSION=")), None) if cmd[0] == "env" else None


def test_official_protocol_command_lines():
    proc, cmds = suite("/ck/dpa", "/o", PROTOCOL="official")
    assert proc.returncode == 0, proc.stderr
    assert len(cmds) == 6
    multimodal, mmvet, text, export, redux, report = cmds
    # multimodal: the release's sampling, in two lmms-eval processes because MMVet has its own judge
    assert option(multimodal, "--tasks").split(",") == MM_TASKS and option(mmvet, "--tasks") == "mmvet"
    for cmd in (multimodal, mmvet):
        assert cmd[2:5] == ["py", "-m", "lmms_eval"] and option(cmd, "--model") == "llava_dpa"
        assert gen_kwargs(cmd) == OFFICIAL_MM
    assert judge(multimodal) == "gpt-4o" and judge(mmvet) == "gpt-4-1106-preview"  # the release's "gpt-4-turbo"
    assert option(multimodal, "--output_path") == "/o/lmms_eval/multimodal"
    assert option(mmvet, "--output_path") == "/o/lmms_eval/mmvet"
    # text through lmms-eval: non-thinking sampling with the presence penalty, 32K new tokens, no judge
    assert text[:3] == ["py", "-m", "lmms_eval"] and judge(text) is None
    assert option(text, "--tasks") == "openai_math,gpqa_diamond_openai" and gen_kwargs(text) == OFFICIAL_TEXT
    assert export == ["py", "-m", "llava_dpa.cli", "export-llm", "/ck/dpa", "/o/text_path"]
    # MMLU-Redux: lm-evaluation-harness's hf model has no presence penalty, and calls the length max_gen_toks
    assert option(redux, "--model") == "hf"
    assert option(redux, "--model_args") == "pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False"
    assert gen_kwargs(redux) == {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "max_gen_toks": 32768}
    assert "--apply_chat_template" in redux and report == ["py", "-m", "llava_dpa.cli", "report", "/o"]


def test_official_protocol_gives_the_target_the_releases_system_prompt():
    """The multimodal runs carry system_prompt in --model_args, intact through the shell and lmms-eval's parser
    (spaces, the period); the text runs have none (the release's OpenCompass prompts have no system turn)."""
    proc, cmds = suite("/ck/dpa", "/o", PROTOCOL="official", MODEL_BASE="/base/qwen3")
    multimodal, mmvet, text = cmds[:3]
    for cmd in (multimodal, mmvet):
        assert model_args(cmd) == {"pretrained": "/ck/dpa", "dtype": "bfloat16", "model_base": "/base/qwen3",
                                   "system_prompt": SYSTEM}
    assert model_args(text) == {"pretrained": "/ck/dpa", "dtype": "bfloat16", "model_base": "/base/qwen3"}
    # the printed line is the command as run: pasted back into a shell it gives the same words
    line = next(l for l in proc.stdout.splitlines() if "--tasks mmvet" in l)
    assert f"--model_args 'pretrained=/ck/dpa,dtype=bfloat16,model_base=/base/qwen3,system_prompt={SYSTEM}'" in line
    assert "system prompt" not in proc.stderr  # no notice left of a gap
    # the default protocol passes no system prompt
    _, cmds = suite("/ck/dpa", "/o")
    assert "system_prompt" not in model_args(cmds[0])


def test_official_protocol_variants():
    _, cmds = suite("/ck/dpa", "/o", PROTOCOL="official", REDUX_BACKEND="vllm", JUDGE_MODEL="j1",
                    MMVET_JUDGE_MODEL="j2", SKIP_MMLU_REDUX="")
    redux = cmds[4]
    assert option(redux, "--model") == "vllm" and gen_kwargs(redux)["presence_penalty"] == 1.5
    assert judge(cmds[0]) == "j1" and judge(cmds[1]) == "j2"
    # no mmvet among the tasks: no MMVet process; LLM_ONLY: only the text runs
    _, cmds = suite("/ck/dpa", "/o", PROTOCOL="official", MM_TASKS="mmstar,ai2d", SKIP_MMLU_REDUX="1")
    assert [option(c, "--tasks") for c in cmds[:2]] == ["mmstar,ai2d", "openai_math,gpqa_diamond_openai"]
    _, cmds = suite("/base/qwen3", "/o", PROTOCOL="official", LLM_ONLY="1")
    assert [c[c.index("-m") + 1] for c in cmds] == ["lmms_eval", "lm_eval", "llava_dpa.cli"]
    assert gen_kwargs(cmds[0]) == OFFICIAL_TEXT and option(cmds[1], "--model_args").startswith("pretrained=/base/qwen3,")
    # NUM_PROCESSES > 1: the judge's environment wraps the accelerate launcher
    _, cmds = suite("/ck/dpa", "/o", PROTOCOL="official", NUM_PROCESSES="2", SKIP_MMLU_REDUX="1")
    assert cmds[1][:5] == ["env", "MODEL_VERSION=gpt-4-1106-preview", "py", "-m", "accelerate.commands.launch"]


def test_default_protocol_is_unchanged_and_bad_values_fail():
    _, cmds = suite("/ck/dpa", "/o")
    assert len(cmds) == 4 and all(gen_kwargs(c) is None and c[0] != "env" for c in cmds)
    assert option(cmds[0], "--output_path") == "/o/lmms_eval" and option(cmds[2], "--model") == "hf"
    for env in ({"PROTOCOL": "vlmevalkit"}, {"REDUX_BACKEND": "sglang"}, {"NUM_PROCESSES": "0"}):
        proc, cmds = suite("/ck/dpa", "/o", **env)
        assert proc.returncode == 2 and not cmds and ("choose" in proc.stderr or "at least 1" in proc.stderr)


# ---- the reference: scripts/eval/run_paper_suite.sh at 97afc97 (before issue #19), run with DRY_RUN=1 and PYTHON=py
# (REFERENCE; in a temporary folder, 'export_done' with o/text_path/config.json there) and for real with a
# stub PYTHON that logs its calls (EXECUTED; in a folder with ck/config.json unless NO_CONFIG)
REFERENCE = {  # case: (arguments, environment, exit status, stdout)
    'default': (['/ck/dpa', '/o'], {}, 0,
        "+ py -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16 --tasks mmvet,mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d,openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval --log_samples\n+ py -m llava_dpa.cli export-llm /ck/dpa /o/text_path\n+ py -m lm_eval --model hf --model_args pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path /o/lm_eval --log_samples\n+ py -m llava_dpa.cli report /o\n"),
    'official': (['/ck/dpa', '/o'], {'PROTOCOL': 'official'}, 0,
        "+ env MODEL_VERSION=gpt-4o py -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=bfloat16,system_prompt=You are a helpful assistant.' --tasks mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/multimodal --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ env MODEL_VERSION=gpt-4-1106-preview py -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=bfloat16,system_prompt=You are a helpful assistant.' --tasks mmvet --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/mmvet --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ py -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16 --tasks openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/text --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,presence_penalty=1.5,max_new_tokens=32768\n+ py -m llava_dpa.cli export-llm /ck/dpa /o/text_path\n+ py -m lm_eval --model hf --model_args pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path /o/lm_eval --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,max_gen_toks=32768\n+ py -m llava_dpa.cli report /o\n"),
    'official_model_base': (['/ck/dpa', '/o'], {'PROTOCOL': 'official', 'MODEL_BASE': '/base/qwen3'}, 0,
        "+ env MODEL_VERSION=gpt-4o py -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=bfloat16,model_base=/base/qwen3,system_prompt=You are a helpful assistant.' --tasks mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/multimodal --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ env MODEL_VERSION=gpt-4-1106-preview py -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=bfloat16,model_base=/base/qwen3,system_prompt=You are a helpful assistant.' --tasks mmvet --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/mmvet --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ py -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16,model_base=/base/qwen3 --tasks openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/text --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,presence_penalty=1.5,max_new_tokens=32768\n+ py -m llava_dpa.cli export-llm /ck/dpa /o/text_path --model-base /base/qwen3\n+ py -m lm_eval --model hf --model_args pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path /o/lm_eval --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,max_gen_toks=32768\n+ py -m llava_dpa.cli report /o\n"),
    'default_model_base_template': (['/ck/dpa', '/o'], {'MODEL_BASE': '/base/qwen3', 'CONV_TEMPLATE': 'qwen_3'}, 0,
        "+ py -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16,model_base=/base/qwen3,conv_template=qwen_3 --tasks mmvet,mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d,openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval --log_samples\n+ py -m llava_dpa.cli export-llm /ck/dpa /o/text_path --model-base /base/qwen3\n+ py -m lm_eval --model hf --model_args pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path /o/lm_eval --log_samples\n+ py -m llava_dpa.cli report /o\n"),
    'default_llm_only': (['/base/qwen3', '/o'], {'LLM_ONLY': '1', 'MODEL_BASE': ''}, 0,
        "+ py -m lmms_eval --model llava_dpa --model_args pretrained=/base/qwen3,dtype=bfloat16 --tasks openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval --log_samples\n+ py -m lm_eval --model hf --model_args pretrained=/base/qwen3,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path /o/lm_eval --log_samples\n+ py -m llava_dpa.cli report /o\n"),
    'official_llm_only': (['/base/qwen3', '/o'], {'PROTOCOL': 'official', 'LLM_ONLY': '1'}, 0,
        "+ py -m lmms_eval --model llava_dpa --model_args pretrained=/base/qwen3,dtype=bfloat16 --tasks openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/text --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,presence_penalty=1.5,max_new_tokens=32768\n+ py -m lm_eval --model hf --model_args pretrained=/base/qwen3,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path /o/lm_eval --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,max_gen_toks=32768\n+ py -m llava_dpa.cli report /o\n"),
    'default_skip_redux': (['/ck/dpa', '/o'], {'SKIP_MMLU_REDUX': '1'}, 0,
        "+ py -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16 --tasks mmvet,mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d,openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval --log_samples\n+ py -m llava_dpa.cli report /o\n"),
    'official_skip_redux': (['/ck/dpa', '/o'], {'PROTOCOL': 'official', 'SKIP_MMLU_REDUX': '1'}, 0,
        "+ env MODEL_VERSION=gpt-4o py -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=bfloat16,system_prompt=You are a helpful assistant.' --tasks mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/multimodal --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ env MODEL_VERSION=gpt-4-1106-preview py -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=bfloat16,system_prompt=You are a helpful assistant.' --tasks mmvet --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/mmvet --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ py -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16 --tasks openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/text --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,presence_penalty=1.5,max_new_tokens=32768\n+ py -m llava_dpa.cli report /o\n"),
    'official_llm_only_skip_redux': (['/base/qwen3', '/o'], {'PROTOCOL': 'official', 'LLM_ONLY': 'yes', 'SKIP_MMLU_REDUX': '1'}, 0,
        "+ py -m lmms_eval --model llava_dpa --model_args pretrained=/base/qwen3,dtype=bfloat16 --tasks openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/text --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,presence_penalty=1.5,max_new_tokens=32768\n+ py -m llava_dpa.cli report /o\n"),
    'default_vllm': (['/ck/dpa', '/o'], {'REDUX_BACKEND': 'vllm'}, 0,
        "+ py -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16 --tasks mmvet,mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d,openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval --log_samples\n+ py -m llava_dpa.cli export-llm /ck/dpa /o/text_path\n+ py -m lm_eval --model vllm --model_args pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path /o/lm_eval --log_samples\n+ py -m llava_dpa.cli report /o\n"),
    'official_vllm': (['/ck/dpa', '/o'], {'PROTOCOL': 'official', 'REDUX_BACKEND': 'vllm'}, 0,
        "+ env MODEL_VERSION=gpt-4o py -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=bfloat16,system_prompt=You are a helpful assistant.' --tasks mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/multimodal --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ env MODEL_VERSION=gpt-4-1106-preview py -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=bfloat16,system_prompt=You are a helpful assistant.' --tasks mmvet --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/mmvet --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ py -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16 --tasks openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/text --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,presence_penalty=1.5,max_new_tokens=32768\n+ py -m llava_dpa.cli export-llm /ck/dpa /o/text_path\n+ py -m lm_eval --model vllm --model_args pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path /o/lm_eval --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,max_gen_toks=32768,presence_penalty=1.5\n+ py -m llava_dpa.cli report /o\n"),
    'default_num_processes': (['/ck/dpa', '/o'], {'NUM_PROCESSES': '2'}, 0,
        "+ py -m accelerate.commands.launch --num_processes 2 -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16 --tasks mmvet,mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d,openai_math,gpqa_diamond_openai --device cuda --batch_size 1 --output_path /o/lmms_eval --log_samples\n+ py -m llava_dpa.cli export-llm /ck/dpa /o/text_path\n+ py -m lm_eval --model hf --model_args pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda --batch_size 1 --output_path /o/lm_eval --log_samples\n+ py -m llava_dpa.cli report /o\n"),
    'official_num_processes': (['/ck/dpa', '/o'], {'PROTOCOL': 'official', 'NUM_PROCESSES': '4', 'DEVICE': 'cuda:3'}, 0,
        "+ env MODEL_VERSION=gpt-4o py -m accelerate.commands.launch --num_processes 4 -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=bfloat16,system_prompt=You are a helpful assistant.' --tasks mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d --device cuda --batch_size 1 --output_path /o/lmms_eval/multimodal --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ env MODEL_VERSION=gpt-4-1106-preview py -m accelerate.commands.launch --num_processes 4 -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=bfloat16,system_prompt=You are a helpful assistant.' --tasks mmvet --device cuda --batch_size 1 --output_path /o/lmms_eval/mmvet --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ py -m accelerate.commands.launch --num_processes 4 -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16 --tasks openai_math,gpqa_diamond_openai --device cuda --batch_size 1 --output_path /o/lmms_eval/text --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,presence_penalty=1.5,max_new_tokens=32768\n+ py -m llava_dpa.cli export-llm /ck/dpa /o/text_path\n+ py -m lm_eval --model hf --model_args pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda --batch_size 1 --output_path /o/lm_eval --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,max_gen_toks=32768\n+ py -m llava_dpa.cli report /o\n"),
    'default_limit': (['/ck/dpa', '/o'], {'LIMIT': '5'}, 0,
        "+ py -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16 --tasks mmvet,mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d,openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval --log_samples --limit 5\n+ py -m llava_dpa.cli export-llm /ck/dpa /o/text_path\n+ py -m lm_eval --model hf --model_args pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path /o/lm_eval --log_samples --limit 5\n+ py -m llava_dpa.cli report /o\n"),
    'official_limit_settings': (['/ck/dpa', '/o'], {'PROTOCOL': 'official', 'LIMIT': '0.1', 'DEVICE': 'cuda:1', 'DTYPE': 'float16', 'BATCH_SIZE': '4'}, 0,
        "+ env MODEL_VERSION=gpt-4o py -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=float16,system_prompt=You are a helpful assistant.' --tasks mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d --device cuda:1 --batch_size 4 --output_path /o/lmms_eval/multimodal --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096 --limit 0.1\n+ env MODEL_VERSION=gpt-4-1106-preview py -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=float16,system_prompt=You are a helpful assistant.' --tasks mmvet --device cuda:1 --batch_size 4 --output_path /o/lmms_eval/mmvet --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096 --limit 0.1\n+ py -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=float16 --tasks openai_math,gpqa_diamond_openai --device cuda:1 --batch_size 4 --output_path /o/lmms_eval/text --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,presence_penalty=1.5,max_new_tokens=32768 --limit 0.1\n+ py -m llava_dpa.cli export-llm /ck/dpa /o/text_path\n+ py -m lm_eval --model hf --model_args pretrained=/o/text_path,dtype=float16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:1 --batch_size 4 --output_path /o/lm_eval --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,max_gen_toks=32768 --limit 0.1\n+ py -m llava_dpa.cli report /o\n"),
    'official_judges': (['/ck/dpa', '/o'], {'PROTOCOL': 'official', 'JUDGE_MODEL': 'j1', 'MMVET_JUDGE_MODEL': 'gpt-4-turbo'}, 0,
        "+ env MODEL_VERSION=j1 py -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=bfloat16,system_prompt=You are a helpful assistant.' --tasks mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/multimodal --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ env MODEL_VERSION=gpt-4-turbo py -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=bfloat16,system_prompt=You are a helpful assistant.' --tasks mmvet --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/mmvet --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ py -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16 --tasks openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/text --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,presence_penalty=1.5,max_new_tokens=32768\n+ py -m llava_dpa.cli export-llm /ck/dpa /o/text_path\n+ py -m lm_eval --model hf --model_args pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path /o/lm_eval --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,max_gen_toks=32768\n+ py -m llava_dpa.cli report /o\n"),
    'default_judges_ignored': (['/ck/dpa', '/o'], {'JUDGE_MODEL': 'j1', 'MMVET_JUDGE_MODEL': 'j2'}, 0,
        "+ py -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16 --tasks mmvet,mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d,openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval --log_samples\n+ py -m llava_dpa.cli export-llm /ck/dpa /o/text_path\n+ py -m lm_eval --model hf --model_args pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path /o/lm_eval --log_samples\n+ py -m llava_dpa.cli report /o\n"),
    'official_no_mmvet': (['/ck/dpa', '/o'], {'PROTOCOL': 'official', 'MM_TASKS': 'mmstar,ai2d'}, 0,
        "+ env MODEL_VERSION=gpt-4o py -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=bfloat16,system_prompt=You are a helpful assistant.' --tasks mmstar,ai2d --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/multimodal --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ py -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16 --tasks openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/text --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,presence_penalty=1.5,max_new_tokens=32768\n+ py -m llava_dpa.cli export-llm /ck/dpa /o/text_path\n+ py -m lm_eval --model hf --model_args pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path /o/lm_eval --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,max_gen_toks=32768\n+ py -m llava_dpa.cli report /o\n"),
    'official_only_mmvet': (['/ck/dpa', '/o'], {'PROTOCOL': 'official', 'MM_TASKS': 'mmvet'}, 0,
        "+ env MODEL_VERSION=gpt-4-1106-preview py -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=bfloat16,system_prompt=You are a helpful assistant.' --tasks mmvet --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/mmvet --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ py -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16 --tasks openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/text --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,presence_penalty=1.5,max_new_tokens=32768\n+ py -m llava_dpa.cli export-llm /ck/dpa /o/text_path\n+ py -m lm_eval --model hf --model_args pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path /o/lm_eval --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,max_gen_toks=32768\n+ py -m llava_dpa.cli report /o\n"),
    'default_task_lists': (['/ck/dpa', '/o'], {'MM_TASKS': 'ai2d,mmvet', 'TEXT_TASKS': 'openai_math', 'REDUX_TASK': 'mmlu_redux'}, 0,
        "+ py -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16 --tasks ai2d,mmvet,openai_math --device cuda:0 --batch_size 1 --output_path /o/lmms_eval --log_samples\n+ py -m llava_dpa.cli export-llm /ck/dpa /o/text_path\n+ py -m lm_eval --model hf --model_args pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux --apply_chat_template --device cuda:0 --batch_size 1 --output_path /o/lm_eval --log_samples\n+ py -m llava_dpa.cli report /o\n"),
    'official_task_lists': (['/ck/dpa', '/o'], {'PROTOCOL': 'official', 'MM_TASKS': 'mmvet,ai2d', 'TEXT_TASKS': 'gpqa_diamond_openai', 'REDUX_TASK': 'mmlu_redux'}, 0,
        "+ env MODEL_VERSION=gpt-4o py -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=bfloat16,system_prompt=You are a helpful assistant.' --tasks ai2d --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/multimodal --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ env MODEL_VERSION=gpt-4-1106-preview py -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=bfloat16,system_prompt=You are a helpful assistant.' --tasks mmvet --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/mmvet --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ py -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16 --tasks gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval/text --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,presence_penalty=1.5,max_new_tokens=32768\n+ py -m llava_dpa.cli export-llm /ck/dpa /o/text_path\n+ py -m lm_eval --model hf --model_args pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux --apply_chat_template --device cuda:0 --batch_size 1 --output_path /o/lm_eval --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,max_gen_toks=32768\n+ py -m llava_dpa.cli report /o\n"),
    'default_output_folder': (['/ck/dpa/'], {}, 0,
        "+ py -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa/,dtype=bfloat16 --tasks mmvet,mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d,openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path eval_results/dpa/lmms_eval --log_samples\n+ py -m llava_dpa.cli export-llm /ck/dpa/ eval_results/dpa/text_path\n+ py -m lm_eval --model hf --model_args pretrained=eval_results/dpa/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path eval_results/dpa/lm_eval --log_samples\n+ py -m llava_dpa.cli report eval_results/dpa\n"),
    'official_quoting': (["/my ckpts/dpa's", '/o ut'], {'PROTOCOL': 'official', 'MODEL_BASE': '/base models/qwen3'}, 0,
        "+ env MODEL_VERSION=gpt-4o py -m lmms_eval --model llava_dpa --model_args 'pretrained=/my ckpts/dpa'\\''s,dtype=bfloat16,model_base=/base models/qwen3,system_prompt=You are a helpful assistant.' --tasks mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d --device cuda:0 --batch_size 1 --output_path '/o ut/lmms_eval/multimodal' --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ env MODEL_VERSION=gpt-4-1106-preview py -m lmms_eval --model llava_dpa --model_args 'pretrained=/my ckpts/dpa'\\''s,dtype=bfloat16,model_base=/base models/qwen3,system_prompt=You are a helpful assistant.' --tasks mmvet --device cuda:0 --batch_size 1 --output_path '/o ut/lmms_eval/mmvet' --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ py -m lmms_eval --model llava_dpa --model_args 'pretrained=/my ckpts/dpa'\\''s,dtype=bfloat16,model_base=/base models/qwen3' --tasks openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path '/o ut/lmms_eval/text' --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,presence_penalty=1.5,max_new_tokens=32768\n+ py -m llava_dpa.cli export-llm '/my ckpts/dpa'\\''s' '/o ut/text_path' --model-base '/base models/qwen3'\n+ py -m lm_eval --model hf --model_args 'pretrained=/o ut/text_path,dtype=bfloat16,enable_thinking=False' --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path '/o ut/lm_eval' --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,max_gen_toks=32768\n+ py -m llava_dpa.cli report '/o ut'\n"),
    'empty_values_are_defaults': (['/ck/dpa', '/o'], {'PROTOCOL': '', 'REDUX_BACKEND': '', 'JUDGE_MODEL': '', 'DEVICE': '', 'NUM_PROCESSES': '', 'SKIP_MMLU_REDUX': '', 'LLM_ONLY': '', 'LIMIT': ''}, 0,
        "+ py -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16 --tasks mmvet,mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d,openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval --log_samples\n+ py -m llava_dpa.cli export-llm /ck/dpa /o/text_path\n+ py -m lm_eval --model hf --model_args pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path /o/lm_eval --log_samples\n+ py -m llava_dpa.cli report /o\n"),
    'python_default': (['/ck/dpa', '/o'], {'PYTHON': ''}, 0,
        "+ python -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16 --tasks mmvet,mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d,openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval --log_samples\n+ python -m llava_dpa.cli export-llm /ck/dpa /o/text_path\n+ python -m lm_eval --model hf --model_args pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path /o/lm_eval --log_samples\n+ python -m llava_dpa.cli report /o\n"),
    'python_path': (['/ck/dpa', '/o'], {'PYTHON': '/opt/env/bin/python3'}, 0,
        "+ /opt/env/bin/python3 -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16 --tasks mmvet,mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d,openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path /o/lmms_eval --log_samples\n+ /opt/env/bin/python3 -m llava_dpa.cli export-llm /ck/dpa /o/text_path\n+ /opt/env/bin/python3 -m lm_eval --model hf --model_args pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path /o/lm_eval --log_samples\n+ /opt/env/bin/python3 -m llava_dpa.cli report /o\n"),
    'bad_protocol': (['/ck/dpa', '/o'], {'PROTOCOL': 'vlmevalkit'}, 2,
        ""),
    'bad_backend': (['/ck/dpa', '/o'], {'REDUX_BACKEND': 'sglang'}, 2,
        ""),
    'export_done': (['/ck/dpa', 'o'], {'PROTOCOL': 'official'}, 0,
        "+ env MODEL_VERSION=gpt-4o py -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=bfloat16,system_prompt=You are a helpful assistant.' --tasks mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d --device cuda:0 --batch_size 1 --output_path o/lmms_eval/multimodal --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ env MODEL_VERSION=gpt-4-1106-preview py -m lmms_eval --model llava_dpa --model_args 'pretrained=/ck/dpa,dtype=bfloat16,system_prompt=You are a helpful assistant.' --tasks mmvet --device cuda:0 --batch_size 1 --output_path o/lmms_eval/mmvet --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ py -m lmms_eval --model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16 --tasks openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path o/lmms_eval/text --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,presence_penalty=1.5,max_new_tokens=32768\n+ py -m lm_eval --model hf --model_args pretrained=o/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path o/lm_eval --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,max_gen_toks=32768\n+ py -m llava_dpa.cli report o\n"),
}
EXECUTED = {  # case: (environment, exit status, stdout, the stub's calls: MODEL_VERSION and its arguments)
    'execute_official': ({'PROTOCOL': 'official', 'MODEL_BASE': '/base'}, 0,
        "+ env MODEL_VERSION=gpt-4o STUB -m lmms_eval --model llava_dpa --model_args 'pretrained=ck,dtype=bfloat16,model_base=/base,system_prompt=You are a helpful assistant.' --tasks mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d --device cuda:0 --batch_size 1 --output_path out/lmms_eval/multimodal --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ env MODEL_VERSION=gpt-4-1106-preview STUB -m lmms_eval --model llava_dpa --model_args 'pretrained=ck,dtype=bfloat16,model_base=/base,system_prompt=You are a helpful assistant.' --tasks mmvet --device cuda:0 --batch_size 1 --output_path out/lmms_eval/mmvet --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\n+ STUB -m lmms_eval --model llava_dpa --model_args pretrained=ck,dtype=bfloat16,model_base=/base --tasks openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path out/lmms_eval/text --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,presence_penalty=1.5,max_new_tokens=32768\n+ STUB -m llava_dpa.cli export-llm ck out/text_path --model-base /base\n+ STUB -m lm_eval --model hf --model_args pretrained=out/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path out/lm_eval --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,max_gen_toks=32768\n+ STUB -m llava_dpa.cli report out\n",
        "MODEL_VERSION=gpt-4o -m lmms_eval --model llava_dpa --model_args pretrained=ck,dtype=bfloat16,model_base=/base,system_prompt=You are a helpful assistant. --tasks mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d --device cuda:0 --batch_size 1 --output_path out/lmms_eval/multimodal --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\nMODEL_VERSION=gpt-4-1106-preview -m lmms_eval --model llava_dpa --model_args pretrained=ck,dtype=bfloat16,model_base=/base,system_prompt=You are a helpful assistant. --tasks mmvet --device cuda:0 --batch_size 1 --output_path out/lmms_eval/mmvet --log_samples --gen_kwargs do_sample=True,temperature=0.01,top_p=0.9,top_k=0,max_new_tokens=4096\nMODEL_VERSION= -m lmms_eval --model llava_dpa --model_args pretrained=ck,dtype=bfloat16,model_base=/base --tasks openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path out/lmms_eval/text --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,presence_penalty=1.5,max_new_tokens=32768\nMODEL_VERSION= -c import lm_eval\nMODEL_VERSION= -m llava_dpa.cli export-llm ck out/text_path --model-base /base\nMODEL_VERSION= -m lm_eval --model hf --model_args pretrained=out/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path out/lm_eval --log_samples --gen_kwargs do_sample=True,temperature=0.7,top_p=0.8,top_k=20,max_gen_toks=32768\nMODEL_VERSION= -m llava_dpa.cli report out\n"),
    'execute_default_failure': ({'STUB_FAIL': 'lm_eval --model'}, 7,
        "+ STUB -m lmms_eval --model llava_dpa --model_args pretrained=ck,dtype=bfloat16 --tasks mmvet,mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d,openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path out/lmms_eval --log_samples\n+ STUB -m llava_dpa.cli export-llm ck out/text_path\n+ STUB -m lm_eval --model hf --model_args pretrained=out/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path out/lm_eval --log_samples\n",
        "MODEL_VERSION= -m lmms_eval --model llava_dpa --model_args pretrained=ck,dtype=bfloat16 --tasks mmvet,mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d,openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path out/lmms_eval --log_samples\nMODEL_VERSION= -c import lm_eval\nMODEL_VERSION= -m llava_dpa.cli export-llm ck out/text_path\nMODEL_VERSION= -m lm_eval --model hf --model_args pretrained=out/text_path,dtype=bfloat16,enable_thinking=False --tasks mmlu_redux_generative --apply_chat_template --device cuda:0 --batch_size 1 --output_path out/lm_eval --log_samples\n"),
    'execute_no_lm_eval': ({'STUB_FAIL': 'import lm_eval'}, 3,
        "+ STUB -m lmms_eval --model llava_dpa --model_args pretrained=ck,dtype=bfloat16 --tasks mmvet,mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d,openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path out/lmms_eval --log_samples\n",
        "MODEL_VERSION= -m lmms_eval --model llava_dpa --model_args pretrained=ck,dtype=bfloat16 --tasks mmvet,mmstar,seedbench_2_plus,mmmu_val,mathvista_testmini_format,mathvision_test,ocrbench,ai2d,openai_math,gpqa_diamond_openai --device cuda:0 --batch_size 1 --output_path out/lmms_eval --log_samples\nMODEL_VERSION= -c import lm_eval\n"),
    'execute_no_lmms_eval': ({'STUB_FAIL': 'import lmms_eval'}, 3, "", ""),  # not the script's: refused first
    'execute_no_checkpoint': ({'NO_CONFIG': '1'}, 2,
        "",
        ""),
}


# ---- byte-identical to the script before issue #19 -----------------------------------------------------------
@pytest.mark.parametrize("case", sorted(set(REFERENCE) - {"export_done"}))
def test_eval_run_dry_run_gives_the_scripts_commands(case):
    """`eval run --from-environment` under each captured environment prints exactly what the script printed."""
    args, env, code, stdout = REFERENCE[case]
    proc, _ = suite(*args, **env)
    assert (proc.returncode, proc.stdout) == (code, stdout), proc.stderr
    if code:
        assert "choose" in proc.stderr


def test_an_exported_text_path_is_not_exported_again(tmp_path):
    args, env, code, stdout = REFERENCE["export_done"]
    (tmp_path / "o/text_path").mkdir(parents=True)
    (tmp_path / "o/text_path/config.json").write_text("{}")
    with environment({"DRY_RUN": "1", "PYTHON": "py", **env}, cwd=tmp_path):
        got = eval_cli("eval", "run", "--from-environment", *args)
    assert got[:2] == (code, stdout) and "already there, skipped" in got[2]


@pytest.mark.parametrize("case, flags", [
    ("official", ["--protocol", "official"]),
    ("official_vllm", ["--protocol", "official", "--redux-backend", "vllm"]),
    ("default_llm_only", ["--llm-only"]),
    ("official_llm_only_skip_redux", ["--protocol", "official", "--llm-only", "--skip-mmlu-redux"]),
    ("default_num_processes", ["--num-processes", "2"]),
    ("official_limit_settings", ["--protocol", "official", "--limit", "0.1", "--device", "cuda:1", "--dtype",
                                 "float16", "--batch-size", "4"]),
    ("default_limit", ["--limit", "5"]),
    ("official_judges", ["--protocol", "official", "--judge-model", "j1", "--mmvet-judge-model", "gpt-4-turbo"]),
    ("official_task_lists", ["--protocol", "official", "--mm-tasks", "mmvet,ai2d", "--text-tasks",
                             "gpqa_diamond_openai", "--redux-task", "mmlu_redux"]),
    ("official_quoting", ["--protocol", "official", "--model-base", "/base models/qwen3"]),
    ("default_model_base_template", ["--model-base", "/base/qwen3", "--conv-template", "qwen_3"]),
])
def test_eval_run_flags_give_the_scripts_commands(case, flags):
    """The typed flags, without the environment, give the same commands as the script's variables did."""
    args, _, code, stdout = REFERENCE[case]
    with environment({}):
        assert eval_cli("eval", "run", *args, "--python", "py", "--dry-run", *flags)[:2] == (code, stdout)


def test_flags_given_win_over_the_environment():
    with environment({"PROTOCOL": "official", "REDUX_BACKEND": "vllm", "PYTHON": "py"}):
        code, stdout, _ = eval_cli("eval", "run", "--from-environment", "/ck/dpa", "/o", "--protocol", "default",
                                   "--dry-run")
    assert (code, stdout) == (0, REFERENCE["default_vllm"][3])


def test_the_environment_is_data():
    """Every variable the script read is a row of ENVIRONMENT, every row a flag of `eval run`, every option one
    variable."""
    from llava_dpa.recipes.evaluation import ENVIRONMENT, EvalOptions, environment_arguments

    assert {var.name for var in ENVIRONMENT} == SCRIPT_VARIABLES
    flags = {var.flag for var in ENVIRONMENT}
    assert {"--" + f.name.replace("_", "-") for f in fields(EvalOptions)} | {"--protocol", "--dry-run"} == flags
    code, stdout, _ = eval_cli("eval", "run", "--help")
    assert code == 0 and all(var.flag in stdout and var.name in stdout for var in ENVIRONMENT)
    # empty values are unset; a switch is on for any other value (as `[ -n "$VAR" ]`)
    assert environment_arguments({"LLM_ONLY": "0", "SKIP_MMLU_REDUX": "", "LIMIT": "3", "MODEL_BASE": ""}) == [
        "--limit", "3", "--llm-only"]


def test_the_script_launches_eval_run():
    """The script itself (bash, then llava-dpa in the interpreter PYTHON names, else python3) prints the same.
    Once: each run imports the whole command line (about 10 s here); tests/test_lmms_eval.py runs the default."""
    args, env, code, stdout = REFERENCE["official_model_base"]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # python3: this interpreter
    proc = run(["bash", SCRIPT, *args], env={"DRY_RUN": "1", "PYTHON": "py", "PATH": path, **env}, check=False)
    assert (proc.returncode, proc.stdout) == (code, stdout), proc.stderr


def test_the_scripts_usage_is_unchanged():
    for args in ([], ["/ck/dpa", "/o", "x"]):
        proc = run(["bash", SCRIPT, *args], env={"DRY_RUN": "1"}, check=False)
        assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"usage: {SCRIPT} <checkpoint> [output folder]\n")


# ---- running, through the executor ------------------------------------------------------------------------
STUB = '#!/bin/bash\necho "MODEL_VERSION=${MODEL_VERSION:-} $*" >> "$STUB_LOG"\n' \
       'if [ -n "${STUB_FAIL:-}" ] && [[ "$*" == *"$STUB_FAIL"* ]]; then exit 7; fi\n'
LM_EVAL_PROBE = "MODEL_VERSION= -c import lm_eval\n"
#: what a real run checks before its first step: lmms-eval, then lm-evaluation-harness
PROBES = "MODEL_VERSION= -c import lmms_eval\n" + LM_EVAL_PROBE


@pytest.mark.parametrize("case", list(EXECUTED))
def test_eval_run_executes_what_the_script_executed(case, tmp_path):
    """For real, each step its own process (the default executor), with a stub interpreter that logs its calls:
    the same lines printed, the same processes in the same order with the same judge in their environment, the
    same exit status. One change: lm-evaluation-harness is checked before the first step, not after lmms-eval."""
    env, code, stdout, calls = EXECUTED[case]
    stub = tmp_path / "stub"
    stub.write_text(STUB)
    stub.chmod(0o755)
    (tmp_path / "ck").mkdir()
    if not env.get("NO_CONFIG"):
        (tmp_path / "ck/config.json").write_text("{}")
    script_env = {k: v for k, v in env.items() if k in SCRIPT_VARIABLES}
    stub_env = {k: v for k, v in env.items() if k.startswith("STUB_")}
    with environment({"PYTHON": str(stub), "STUB_LOG": str(tmp_path / "log"), **script_env, **stub_env}, cwd=tmp_path):
        got_code, got_stdout, stderr = eval_cli("eval", "run", "--from-environment", "ck", "out")
    log = (tmp_path / "log").read_text() if (tmp_path / "log").exists() else ""
    assert got_code == code, stderr
    if case == "execute_no_lm_eval":  # the change: refused before any step runs, with the script's message
        assert (got_stdout, log) == ("", PROBES) and "pip install 'lm-eval>=0.4.8'" in stderr
    elif case == "execute_no_lmms_eval":  # new: refused before any step runs, naming the extra
        assert (got_stdout, log) == ("", PROBES.replace(LM_EVAL_PROBE, ""))
        assert "pip install 'llava-dpa[eval]'" in stderr
    elif case == "execute_no_checkpoint":
        assert (got_stdout, log) == (stdout, calls) and "ck: no config.json; pass a checkpoint folder" in stderr
    else:
        assert got_stdout.replace(str(stub), "STUB") == stdout
        assert log == PROBES + calls.replace(LM_EVAL_PROBE, "")


def test_run_takes_the_executor_as_an_argument(tmp_path):
    from llava_dpa.recipes.evaluation import CommandFailed, EvalOptions, render, run as run_protocol

    (tmp_path / "config.json").write_text("{}")
    options = EvalOptions(python=sys.executable, skip_mmlu_redux=True)  # it must import lmms_eval
    seen = []
    ran = run_protocol("official", str(tmp_path), "/o", options, execute=seen.append, stdout=io.StringIO())
    assert seen == [step.command for step in render("official", str(tmp_path), "/o", options)] == [s.command for s in ran]
    assert [c[c.index("--output_path") + 1] if "--output_path" in c else c[-2:] for c in seen] == [
        "/o/lmms_eval/multimodal", "/o/lmms_eval/mmvet", "/o/lmms_eval/text", ("report", "/o")]

    def fail(command):
        raise CommandFailed(list(command), 5)

    with pytest.raises(CommandFailed):
        run_protocol("default", str(tmp_path), "/o", options, execute=fail, stdout=io.StringIO())


# ---- eval list / show ---------------------------------------------------------------------------------------
def test_eval_list_lists_the_protocols():
    code, stdout, _ = eval_cli("eval", "list")
    assert code == 0
    names = [line.split()[0] for line in stdout.splitlines()[1:]]
    assert names == ["default", "official"]
    assert "the release" in stdout.splitlines()[2]


@pytest.mark.parametrize("name", ["default", "official"])
def test_eval_show_prints_each_setting_with_its_source(name):
    """Every field of every family (read from the dataclasses here, not from the command's table) is a line
    of `eval show` with its value and its source; then the commands, which are `eval run`'s."""
    from llava_dpa.recipes import evaluation

    protocol = evaluation.get(name)
    code, stdout, _ = eval_cli("eval", "show", name)
    assert code == 0
    lines = stdout.splitlines()
    n = 0
    for part in ("suite", "multimodal", "text", "mmlu_redux", "judges"):
        family = getattr(protocol, part)
        for f in fields(family):
            value = getattr(family, f.name)
            shown = ",".join(value) if isinstance(value, tuple) else repr(value)
            source = f.metadata["source"]
            assert source, f"{part}.{f.name} has no source"
            assert any(l.split()[:2] == [f"{part}.{f.name}", shown.split()[0]] and l.endswith(source) and shown in l
                       for l in lines), f"{part}.{f.name}"
            n += 1
    assert n == 3 + 7 + 7 + 8 + 3  # the suite's tasks, two lmms-eval families, MMLU-Redux, the judges
    # the commands shown are those `eval run` runs
    with environment({}):
        _, run_stdout, _ = eval_cli("eval", "run", "CHECKPOINT", "OUT", "--protocol", name, "--dry-run")
    shown = lines[next(i for i, l in enumerate(lines) if l.startswith("commands")) + 1:]
    assert [l[2:] for l in run_stdout.splitlines()] == [l[2:] for l in shown if not l.startswith("  #")]


def test_eval_show_cites_the_release():
    """The official values with the release's line each comes from (docs/evaluation_and_analysis.md's table)."""
    _, stdout, _ = eval_cli("eval", "show", "official")
    rows = {line.split()[0]: line for line in stdout.splitlines() if line.startswith("  ") and "." in line.split()[0]}
    assert "0.01" in rows["multimodal.temperature"] and "EVAL line 34" in rows["multimodal.temperature"]
    assert "4096" in rows["multimodal.max_new_tokens"] and "EVAL line 152" in rows["multimodal.max_new_tokens"]
    assert f"'{SYSTEM}'" in rows["multimodal.system_prompt"] and "EVAL line 41" in rows["multimodal.system_prompt"]
    assert "1.5" in rows["text.presence_penalty"] and "lines 13-18" in rows["text.presence_penalty"]
    assert "32768" in rows["mmlu_redux.max_gen_toks"] and "line 11" in rows["mmlu_redux.max_gen_toks"]
    assert "'gpt-4-1106-preview'" in rows["judges.mmvet_judge"] and "judge_util.py line 15" in rows["judges.mmvet_judge"]
    code, stdout, _ = eval_cli("eval", "show", "official", "--json")


    payload = json.loads(stdout)
    assert {s["setting"]: s["value"] for s in payload["settings"]}["text.top_k"] == 20
    assert payload["commands"][0][:2] == ["env", "MODEL_VERSION=gpt-4o"]


# ---- the settings inside the model ----------------------------------------------------------------------
def stub_model(new_tokens=(5, 6)):
    """An LlavaDPA whose checkpoint is a recorder of generate's arguments."""
    from llava_dpa.eval.lmms_model import LlavaDPA

    calls = []

    def generate(input_ids, **kwargs):
        calls.append(kwargs)
        return torch.tensor([list(new_tokens)] * input_ids.shape[0])

    model = object.__new__(LlavaDPA)
    model._model = types.SimpleNamespace(device=torch.device("cpu"), config=types.SimpleNamespace(), generate=generate)
    model._tokenizer = types.SimpleNamespace(decode=lambda row, skip_special_tokens: "reply")
    model._encode = lambda text: torch.tensor([1, 2, 3])
    model.pad_token_id, model.use_cache, model.max_new_tokens = 0, True, 1024
    return model, calls


@pytest.mark.parametrize("official", [OFFICIAL_MM, OFFICIAL_TEXT])
def test_gen_kwargs_reach_generate(official):
    from llava_dpa.eval.lmms_model import PresencePenalty

    model, calls = stub_model()
    # lmms-eval updates each task's generation_kwargs (greedy, short, stop strings) with --gen_kwargs
    task = {"max_new_tokens": 32, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False, "until": ["\n\n"]}
    assert model._generate(["q"], [[]], {**task, **official}) == ["reply"]
    got = calls[0]
    assert got["do_sample"] is True and got["temperature"] == official["temperature"]
    assert (got["top_p"], got["top_k"], got["max_new_tokens"]) == (official["top_p"], official["top_k"],
                                                                   official["max_new_tokens"])
    processors = got.get("logits_processor") or []
    assert [type(p) for p in processors] == ([PresencePenalty] if "presence_penalty" in official else [])
    assert all(p.penalty == 1.5 for p in processors) and "presence_penalty" not in got
    # greedy (a task's own settings): no sampling knobs reach generate
    model._generate(["q"], [[]], {**task, "top_k": 20})
    assert calls[1]["do_sample"] is False and "top_k" not in calls[1] and "top_p" not in calls[1]


def test_presence_penalty_is_vllms():
    from llava_dpa.eval.lmms_model import PresencePenalty

    penalty = PresencePenalty(1.5)
    prompt = torch.tensor([[3, 3, 4]])
    scores = torch.zeros(1, 8)
    assert torch.equal(penalty(prompt, scores), scores)  # the prompt's tokens are not penalised
    out = penalty(torch.tensor([[3, 3, 4, 6, 6, 2]]), scores)  # reply so far: 6, 6, 2
    assert out.tolist() == [[0, 0, -1.5, 0, 0, 0, -1.5, 0]]  # once per token, however often it occurs
    # generating from embeddings: the first call sees no tokens at all, everything after is the reply
    penalty = PresencePenalty(2.0)
    assert torch.equal(penalty(torch.zeros(2, 0, dtype=torch.long), scores[:1].repeat(2, 1)), torch.zeros(2, 8))
    assert penalty(torch.tensor([[1], [7]]), torch.zeros(2, 8))[:, [1, 7]].tolist() == [[-2.0, 0.0], [0.0, -2.0]]


def test_presence_penalty_inside_hf_generate():
    """Through HF generate on a toy Qwen3: a large penalty forbids every repeat, greedy or sampled."""
    from transformers import LogitsProcessorList, Qwen3Config, Qwen3ForCausalLM

    from llava_dpa.eval.lmms_model import PresencePenalty

    torch.manual_seed(0)
    lm = Qwen3ForCausalLM(Qwen3Config(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=8)).eval()
    prompt = torch.tensor([[1, 2, 3, 1, 2, 3]])
    common = {"max_new_tokens": 24, "min_new_tokens": 24, "pad_token_id": 0, "eos_token_id": None}
    plain = lm.generate(prompt, do_sample=False, **common)[0, 6:].tolist()
    assert len(set(plain)) < len(plain)  # the toy repeats itself without the penalty
    for sample in ({"do_sample": False}, {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.8}):
        out = lm.generate(prompt, logits_processor=LogitsProcessorList([PresencePenalty(1e4)]), **sample, **common)
        reply = out[0, 6:].tolist()
        assert len(set(reply)) == len(reply) == 24, reply


def test_qwen3_prompt_ends_with_the_releases_think_prefix():
    """The release appends CUSTOM_PREFIX "<think>\\n\\n</think>\\n\\n" (EVAL line 33, 132) to the chat template's
    generation prompt; the qwen_3 template's generation prompt already ends with it."""
    from llava_dpa.eval.lmms_model import LlavaDPA

    model = object.__new__(LlavaDPA)
    model.conv_mode, model._processor = "qwen_3", object()
    assert model.prompt("What is shown?", 1) == ("<|im_start|>user\n<image>\nWhat is shown?<|im_end|>\n"
                                                 "<|im_start|>assistant\n<think>\n\n</think>\n\n")


def prompt_model(conv_mode, system_prompt=None):
    from llava_dpa.eval.lmms_model import LlavaDPA, _system_text

    model = object.__new__(LlavaDPA)
    model.conv_mode, model._processor, model.system_prompt = conv_mode, object(), _system_text(system_prompt)
    return model


def test_system_prompt_sets_the_templates_system_turn():
    from llava.conversation import conv_templates

    user_and_reply = ("<|im_start|>user\n<image>\nWhat is shown?<|im_end|>\n"
                      "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # qwen_3: the system turn the release's apply_chat_template renders (EVAL lines 126-132), before the user turn
    assert prompt_model("qwen_3", SYSTEM).prompt("What is shown?", 1) == QWEN3_SYSTEM_TURN + user_and_reply
    assert prompt_model("qwen_3").prompt("What is shown?", 1) == user_and_reply  # default: the template's (none)
    assert conv_templates["qwen_3"].system == ""  # the registry's template is not changed
    # a comma needs quotes in model_args; lmms-eval keeps them and the model strips them
    assert prompt_model("qwen_3", '"Be brief, be right."').prompt("Hi", 0).startswith(
        "<|im_start|>system\nBe brief, be right.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")
    # llama_3: after the knowledge-date header, as Llama 3.1's chat template
    llama = prompt_model("llama_3", SYSTEM).prompt("Hi", 0)
    assert llama.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date")
    assert llama.endswith(f"{SYSTEM}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                          "<|start_header_id|>assistant<|end_header_id|>\n\n")
    # llava's own templates: plain-text system styles take it as it is, ChatML ones after their header
    assert prompt_model("vicuna_v1", SYSTEM).prompt("Hi", 0) == f"{SYSTEM} USER: Hi ASSISTANT:"
    assert prompt_model("chatml_direct", SYSTEM).prompt("Hi", 0) == (  # llava's ChatML: no newline after a turn
        f"<|im_start|>system\n{SYSTEM}<|im_end|><|im_start|>user\nHi<|im_end|><|im_start|>assistant\n")
    with pytest.raises(ValueError, match="does not fit the conversation template"):
        prompt_model("plain", SYSTEM).prompt("Hi", 0)


def test_system_prompt_through_lmms_eval_into_the_token_ids(zoo):
    """The zoo's Qwen3 LM built the way lmms-eval builds a model from --model_args: the prompt's token ids are
    the release's (its tokenizer's chat template with the system message, generation prompt, CUSTOM_PREFIX)."""
    from llava_dpa.eval.lmms_model import LlavaDPA

    llm = LlavaDPA.create_from_arg_string(f"pretrained={zoo['qwen3_lm']},dtype=float32,system_prompt={SYSTEM}",
                                          {"device": "cpu", "batch_size": 1})
    assert llm.system_prompt == SYSTEM
    question = "What is 2 + 3?"
    prompt = llm.prompt(question, 0)
    assert prompt.startswith(QWEN3_SYSTEM_TURN + "<|im_start|>user\n" + question)
    tok = llm.tokenizer
    release = tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                                      tokenize=False, add_generation_prompt=True) + "<think>\n\n</think>\n\n"
    assert prompt == release
    ids = llm._encode(prompt).tolist()
    assert ids == tok(release, add_special_tokens=False).input_ids
    im_start, system = tok.convert_tokens_to_ids("<|im_start|>"), tok("system", add_special_tokens=False).input_ids
    assert ids[:1 + len(system)] == [im_start, *system]  # the prompt opens with the system turn
    # without it: the template's own prompt, no system turn
    plain = LlavaDPA.create_from_arg_string(f"pretrained={zoo['qwen3_lm']},dtype=float32", {"device": "cpu"})
    assert plain.system_prompt is None and plain.prompt(question, 0) == prompt[len(QWEN3_SYSTEM_TURN):]


def test_official_settings_run_through_a_real_checkpoint(zoo):
    """The zoo's Qwen3 LM in the original-LLM mode: lmms-eval's requests with each preset's settings go through
    the real generate (sampling, top_k=0, the presence-penalty processor) and come back as text."""
    from llava_dpa.eval.lmms_model import LlavaDPA, PresencePenalty

    llm = LlavaDPA(pretrained=zoo["qwen3_lm"], device="cpu", batch_size=2)
    seen, real_generate = [], llm._model.generate

    def generate(*args, **kwargs):
        seen.append(kwargs)
        return real_generate(*args, **kwargs)

    llm._model.generate = generate
    for official in (OFFICIAL_MM, OFFICIAL_TEXT):
        settings = {"until": ["\n\n"], "do_sample": False, "temperature": 0, **official, "max_new_tokens": 4}
        # what lmms-eval hands a model: args = (context, gen_kwargs, doc_to_visual, doc_id, task, split)
        llm.task_dict = {"t": {"test": [{}, {}]}}
        requests = [types.SimpleNamespace(args=(text, dict(settings), lambda doc: [], i, "t", "test"))
                    for i, text in enumerate(["Hello?", "Hi"])]
        out = llm.generate_until(requests)
        assert len(out) == 2 and all(isinstance(text, str) for text in out)
    assert [(k["do_sample"], k["top_k"], k["temperature"]) for k in seen] == [(True, 0, 0.01), (True, 20, 0.7)]
    assert "logits_processor" not in seen[0] and isinstance(seen[1]["logits_processor"][0], PresencePenalty)
