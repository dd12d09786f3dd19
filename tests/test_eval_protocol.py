"""PROTOCOL=official in scripts/eval/run_paper_suite.sh: the release's generation settings and system prompt reach
the command lines (read back with lmms-eval's own parser) and, through `--gen_kwargs` and `--model_args`, the
llava_dpa model's generate and prompt."""
import shlex
import types

import pytest
import torch

from conftest import REPO, run

pytestmark = pytest.mark.fast  # DRY_RUN prints commands; the models below are stubs or a 2-layer toy

SCRIPT = str(REPO / "scripts/eval/run_paper_suite.sh")
MM_TASKS = ["mmstar", "seedbench_2_plus", "mmmu_val", "mathvista_testmini_format", "mathvision_test", "ocrbench", "ai2d"]
# The release (THUMAI-Lab/Deep-Pre-Alignment @1faf467): EVAL line 34 and 152; the OpenCompass model config
# vllm_qwen3_nothink_sft_reproduce.py lines 11-20. top_k=0: vLLM's SamplingParams default (no top-k).
OFFICIAL_MM = {"do_sample": True, "temperature": 0.01, "top_p": 0.9, "top_k": 0, "max_new_tokens": 4096}
OFFICIAL_TEXT = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "presence_penalty": 1.5,
                 "max_new_tokens": 32768}
SYSTEM = "You are a helpful assistant."  # EVAL line 41, given to the target at line 127
QWEN3_SYSTEM_TURN = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"


def suite(*args, **env):
    proc = run(["bash", SCRIPT, *args], env={"DRY_RUN": "1", "PYTHON": "py", **env}, check=False)
    commands = [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]
    return proc, commands


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
    for env in ({"PROTOCOL": "vlmevalkit"}, {"REDUX_BACKEND": "sglang"}):
        proc, cmds = suite("/ck/dpa", "/o", **env)
        assert proc.returncode == 2 and not cmds and "choose" in proc.stderr


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
