"""The lmms-eval model `llava_dpa`, the local-task builder, the text-path export and run_paper_suite.sh."""
import json
import os
from types import SimpleNamespace

import pytest
import torch

from conftest import PY, REPO, answer_questions, assert_same_greedy, instruction_context_copy, run

TEXT_QUESTIONS = [
    {"question_id": "t0", "text": "What color is the shape?", "answer": "red", "type": "short"},
    {"question_id": "t1", "text": "What shape is it?\nA. circle\nB. square\nC. triangle", "answer": "A",
     "type": "mc", "choices": ["circle", "square", "triangle"]},
]


class Request(SimpleNamespace):
    """What lmms-eval hands a model: `.args` = (context, target or gen_kwargs, doc_to_visual, doc_id, task, split)."""


def _requests(plugin, docs, second, visual=True):
    plugin.task_dict = {"t": {"test": docs}}
    to_visual = (lambda doc: [doc["pil"]]) if visual else (lambda doc: [])
    return [Request(args=(doc["text"], second(doc), to_visual, i, "t", "test")) for i, doc in enumerate(docs)]


@pytest.fixture(scope="module")
def local_tasks(zoo, tmp_path_factory):
    from llava_dpa.eval.lmms_tasks import write_task

    folder = tmp_path_factory.mktemp("lmms_tasks")
    text = folder / "text.jsonl"
    text.write_text("\n".join(json.dumps(q) for q in TEXT_QUESTIONS) + "\n")
    names = write_task(zoo["benchmark"], zoo["images"], str(folder), "zoo")
    names += write_task(str(text), None, str(folder), "text")
    return folder, names


def test_local_task_folder(local_tasks, zoo):
    folder, names = local_tasks
    assert names == ["zoo_short", "zoo_mc", "zoo_mc_loglik", "text_short", "text_mc", "text_mc_loglik"]
    docs = json.loads((folder / "zoo_mc.json").read_text())
    assert len(docs) == 24 and all(d["image"].startswith("/") for d in docs)
    assert "output_type: multiple_choice" in (folder / "zoo_mc_loglik.yaml").read_text()
    from llava_dpa.eval.lmms_tasks import doc_to_target, process_mc, process_short, write_task

    assert doc_to_target(docs[0]) == "ABC".index(docs[0]["answer"])
    # exact match normalises punctuation away; ANLS (as defined for DocVQA) only case and outer spaces
    assert process_short({"answer": ["red"]}, ["Red."]) == {"exact_match": 1.0, "anls": 0.75}
    assert process_mc({"answer": "B", "choices": ["x", "y"]}, ["B. y"]) == {"accuracy": 1.0}
    with pytest.raises(ValueError, match="pass --images"):
        write_task(zoo["benchmark"], None, str(folder / "x"), "x")


def test_lmms_eval_runs_the_plugin_end_to_end(local_tasks, dpa_stage2, plugin, zoo, tmp_path, capsys):
    """lmms-eval finds `llava_dpa` through its entry point and runs generate_until (image and text-only) and
    loglikelihood tasks on CPU; its answers equal llava.eval.model_vqa_loader's (the same greedy decoding),
    although lmms-eval batches 4 left-padded prompts."""
    folder, _ = local_tasks
    out = tmp_path / "lmms"
    run([PY, "-m", "lmms_eval", "--model", "llava_dpa", "--model_args", f"pretrained={dpa_stage2}",
         "--tasks", "zoo_short,zoo_mc_loglik,text_short,text_mc", "--include_path", str(folder), "--device", "cpu",
         "--batch_size", "4", "--output_path", str(out), "--log_samples"])
    results = json.loads(next(out.rglob("*_results.json")).read_text())["results"]
    assert set(results) == {"zoo_short", "zoo_mc_loglik", "text_short", "text_mc"}
    samples = [json.loads(line) for line in next(out.rglob("*_samples_zoo_short.jsonl")).read_text().splitlines()]
    docs = json.loads((folder / "zoo_short.json").read_text())
    lmms_answers = {docs[s["doc_id"]]["question_id"]: s["filtered_resps"] for s in samples}
    assert len(lmms_answers) == 24
    loglik = [json.loads(line) for line in next(out.rglob("*_samples_zoo_mc_loglik.jsonl")).read_text().splitlines()]
    values = [float(nll) for nll, _ in loglik[0]["filtered_resps"]]  # (-log-likelihood, greedy) per choice letter
    assert len(values) == 3 and all(v > 0 for v in values)
    text = [json.loads(line) for line in next(out.rglob("*_samples_text_short.jsonl")).read_text().splitlines()]
    assert isinstance(text[0]["filtered_resps"], str) and text[0]["input"] == "What color is the shape?"

    # The scores are what the logged answers earn: exact match by the offline scorer on lmms-eval's own answers,
    # accuracy as the share of questions whose right letter has the highest log-likelihood (the smallest
    # negative log-likelihood: before that was so, lmms-eval's argmin chose the least likely letter).
    from llava_dpa.eval.offline import score

    answered = tmp_path / "lmms_answers.jsonl"
    answered.write_text("\n".join(json.dumps({"question_id": q, "text": a}) for q, a in lmms_answers.items()))
    short_questions = tmp_path / "short.jsonl"
    short_questions.write_text("\n".join(json.dumps(d) for d in docs))
    assert results["zoo_short"]["exact_match,none"] == pytest.approx(
        score(str(short_questions), str(answered))["short_answer"]["exact_match"])
    right = [min(range(3), key=lambda i: float(s["filtered_resps"][i][0])) == int(s["target"]) for s in loglik]
    assert len(right) == 24 and results["zoo_mc_loglik"]["acc,none"] == pytest.approx(sum(right) / len(right))

    # lmms-eval's answers (4 left-padded prompts a batch) are llava.eval.model_vqa_loader's (one at a time), or
    # part from them only at a near-tie
    vqa = {a["question_id"]: a["text"] for a in answer_questions(dpa_stage2, zoo["benchmark"], zoo["images"],
                                                                 tmp_path / "answers.jsonl", "--max_new_tokens", "16")}
    from PIL import Image

    by_id = {d["question_id"]: d for d in docs}
    for qid, answer in lmms_answers.items():
        if answer != vqa[qid]:
            image = Image.open(by_id[qid]["image"]).convert("RGB")
            images, sizes = plugin._images([image])
            assert_same_greedy(plugin.model, plugin.tokenizer, plugin._encode(plugin.prompt(by_id[qid]["text"], 1)),
                               answer, vqa[qid], images=images, image_sizes=sizes)

    from llava_dpa.cli import main

    capsys.readouterr()
    assert main(["report", str(out), "--format", "json"]) == 2
    assert "no paper benchmark" in capsys.readouterr().err


@pytest.fixture(scope="module")
def plugin(dpa_stage2):
    from llava_dpa.eval.lmms_model import LlavaDPA

    return LlavaDPA(pretrained=str(dpa_stage2), device="cpu")


def test_template_comes_from_the_config(plugin, dpa_stage2, baseline_stage2, zoo):
    from PIL import Image

    from llava_dpa.eval.lmms_model import LlavaDPA

    baseline = LlavaDPA(pretrained=str(baseline_stage2), device="cpu")
    assert baseline.conv_mode == "qwen_3" and type(baseline.model.get_vision_tower()).__name__ != type(
        plugin.model.get_vision_tower()).__name__
    image = Image.open(f"{zoo['images']}/img_000.png").convert("RGB")
    reply = baseline.generate_until(_requests(baseline, [{"text": "What color is the shape?", "pil": image}],
                                              lambda d: {"max_new_tokens": 3}))
    assert len(reply) == 1 and isinstance(reply[0], str)

    assert plugin.conv_mode == json.loads((dpa_stage2 / "config.json").read_text())["conv_version"] == "qwen_3"
    assert plugin.prompt("Hi?", 1).startswith("<|im_start|>user\n<image>\nHi?<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="unknown --conv-mode"):
        LlavaDPA(pretrained=str(dpa_stage2), device="cpu", conv_template="vicuna_v9")


def test_loglikelihood_is_the_sum_of_continuation_log_probs(plugin, zoo):
    """continuation_logprob against the model's own forward (LLaVA's path, labels on the continuation): the summed
    log-probabilities of the continuation's tokens and whether each is the argmax there, for the plugin's own greedy
    reply, an arbitrary text, and two one-token continuations built from the forward's ranking (its first and second
    choice), so the greedy flag is seen both true and false whatever the tiny model learned."""
    from llava.mm_utils import process_images
    from PIL import Image

    image = Image.open(f"{zoo['images']}/img_000.png").convert("RGB")
    question = "What color is the shape?"
    tok, model = plugin.tokenizer, plugin.model
    prompt_ids = plugin._encode(plugin.prompt(question, 1))
    pixels = process_images([image], plugin._processor, model.config)

    def forward(cont_ids):
        ids = torch.cat([prompt_ids, cont_ids])[None]
        labels = ids.clone()
        labels[0, :len(prompt_ids)] = -100
        with torch.no_grad():
            out = model(input_ids=ids, labels=labels, images=pixels, image_sizes=[image.size])
        # the image placeholder became the image's features: count the continuation's positions from the end
        return out.logits[0, -len(cont_ids) - 1:-1].float(), out.loss

    def reference(text):
        cont = torch.tensor(tok(text, add_special_tokens=False).input_ids)
        logits, loss = forward(cont)
        total = logits.log_softmax(-1).gather(-1, cont[:, None]).sum().item()
        assert total == pytest.approx(-loss.item() * len(cont), rel=1e-4)  # the model's mean cross-entropy
        return total, bool((logits.argmax(-1) == cont).all())

    reply = plugin.generate_until(_requests(plugin, [{"text": question, "pil": image}],
                                            lambda d: {"until": ["<|im_end|>"], "max_new_tokens": 4}))[0]
    with torch.no_grad():
        ranked = model(input_ids=prompt_ids[None], images=pixels, image_sizes=[image.size]).logits[0, -1].argsort(
            descending=True)
    # the model's first choice of a first token, and its best-ranked other choice, each as the text that encodes
    # back to that one token
    choices = [t for t in ranked[:50].tolist() if tok(tok.decode([t]), add_special_tokens=False).input_ids == [t]]
    assert choices[0] == ranked[0].item(), "the model's first choice does not encode back to itself"
    best, runner_up = tok.decode([choices[0]]), tok.decode([choices[1]])
    other = "zzz" if reply != "zzz" else "red"
    flags = {}
    for text in ([reply] if reply else []) + [other, best, runner_up]:
        expected_ll, expected_greedy = reference(text)
        ll, greedy = plugin.continuation_logprob(question, text, [image])
        assert ll == pytest.approx(expected_ll, rel=1e-4, abs=1e-4) and greedy is expected_greedy, text
        flags[text] = (ll, greedy)
    assert flags[best][1] is True and flags[runner_up][1] is False
    other_ll, other_greedy = flags[other]

    # lmms-eval's loglikelihood entry point returns the same pair, text-only requests included
    pair = plugin.loglikelihood(_requests(plugin, [{"text": question, "pil": image}], lambda d: other))[0]
    pair = getattr(pair, "text", pair)
    # ... as the negative log-likelihood, which lmms-eval's multiple_choice scoring minimises
    assert pair[0] == pytest.approx(-other_ll) and pair[1] is other_greedy
    text_only = plugin.loglikelihood(_requests(plugin, [{"text": question}], lambda d: other, visual=False))[0]
    assert getattr(text_only, "text", text_only)[0] != pytest.approx(-other_ll)


def test_batched_generation_equals_one_by_one(plugin, zoo):
    """A left-padded batch gives each prompt the logits it gets alone (within float noise), so greedy decoding
    gives the same answers, except at a near-tie."""
    from PIL import Image

    docs = [{"text": q, "pil": Image.open(f"{zoo['images']}/img_00{i}.png").convert("RGB")}
            for i, q in enumerate(["What color is the shape?", "What shape is it?\nA. circle\nB. square\nC. triangle",
                                   "Describe the image."])]
    prompts = [plugin._encode(plugin.prompt(d["text"], 1)) for d in docs]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), plugin.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):], mask[row, width - len(p):] = p, 1
    images, sizes = plugin._images([d["pil"] for d in docs])
    model = plugin.model
    previous = getattr(model.config, "tokenizer_padding_side", "right")
    model.config.tokenizer_padding_side = "left"   # as the plugin's batched generate sets it
    try:
        with torch.no_grad():
            batched = model(input_ids=ids, attention_mask=mask, images=images, image_sizes=sizes).logits[:, -1]
    finally:
        model.config.tokenizer_padding_side = previous
    for row, p in enumerate(prompts):
        one_images, one_sizes = plugin._images([docs[row]["pil"]])
        with torch.no_grad():
            alone = model(input_ids=p[None], images=one_images, image_sizes=one_sizes).logits[0, -1]
        assert (batched[row] - alone).abs().max().item() < 1e-4, row

    settings = lambda d: {"until": ["<|im_end|>"], "max_new_tokens": 6}  # noqa: E731
    plugin.batch_size_per_gpu = 3
    batched_answers = plugin.generate_until(_requests(plugin, docs, settings))
    plugin.batch_size_per_gpu = 1
    single = plugin.generate_until(_requests(plugin, docs, settings))
    assert all(isinstance(t, str) for t in batched_answers)
    for row, (a, b) in enumerate(zip(batched_answers, single)):
        one_images, one_sizes = plugin._images([docs[row]["pil"]])
        assert_same_greedy(model, plugin.tokenizer, prompts[row], a, b, images=one_images, image_sizes=one_sizes)


def test_instruction_context_checkpoint_sees_the_question(dpa_stage2, perceiver, zoo, tmp_path):
    """An instruction-context checkpoint: the perceiver reads each request's question before the image."""
    from PIL import Image

    from llava_dpa.eval.lmms_model import LlavaDPA

    ckpt = instruction_context_copy(dpa_stage2, perceiver, tmp_path / "ctx")
    model = LlavaDPA(pretrained=str(ckpt), device="cpu")
    tower = model.model.get_vision_tower()
    seen = []
    original = tower.tower_inputs

    def spy(*args, **kwargs):
        inputs = original(*args, **kwargs)
        seen.extend(tower.perceiver_tokenizer.decode(ids) for ids in inputs["contexts"])
        return inputs

    tower.tower_inputs = spy
    image = Image.open(f"{zoo['images']}/img_000.png").convert("RGB")
    model.generate_until(_requests(model, [{"text": "What shape is it?", "pil": image}],
                                   lambda d: {"max_new_tokens": 2}))
    model.continuation_logprob("What color is the shape?", "red", [image])
    assert [s.strip() for s in seen] == ["<|im_start|>user\nWhat shape is it?",
                                         "<|im_start|>user\nWhat color is the shape?"]


def test_original_llm_mode_answers_text_and_refuses_images(zoo):
    from PIL import Image

    from llava_dpa.eval.lmms_model import LlavaDPA

    llm = LlavaDPA(pretrained=zoo["qwen3_lm"], device="cpu", max_new_tokens=3)
    assert not llm.is_multimodal and llm.conv_mode == "qwen_3"
    out = llm.generate_until(_requests(llm, [{"text": "Hello?"}], lambda d: {}, visual=False))
    assert isinstance(out[0], str)
    ll, _ = llm.continuation_logprob("Hello?", "red", [])
    assert ll < 0
    image = Image.open(f"{zoo['images']}/img_000.png")
    with pytest.raises(ValueError, match="text-only LLM"):
        llm.generate_until(_requests(llm, [{"text": "Hello?", "pil": image}], lambda d: {}))


def test_export_llm_text_path_equals_the_vlm_on_text(dpa_stage2, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from llava_dpa.loading import load_pretrained_model

    from llava_dpa.cli import main

    out = tmp_path / "llm"
    assert main(["export-llm", str(dpa_stage2), str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen3" and not any(k.startswith("mm_") for k in config)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "mm_projector" in k or "vision_tower" in k]
    tok, vlm, _, _ = load_pretrained_model(str(dpa_stage2), None, None, device="cpu")
    plain = AutoModelForCausalLM.from_pretrained(out)
    ids = tok("What color is the shape? red", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(vlm(input_ids=ids).logits, plain(input_ids=ids).logits)
    from llava_dpa.text_path import export_language_model

    with pytest.raises(FileExistsError, match="not empty"):
        export_language_model(str(dpa_stage2), str(out))


def test_paper_suite_commands():
    # the script runs `llava-dpa eval run` with PYTHON if that names an interpreter, else with python3: this one
    env = {"DRY_RUN": "1", "PYTHON": "py", "PATH": f"{os.path.dirname(PY)}{os.pathsep}{os.environ['PATH']}"}
    full = run(["bash", str(REPO / "scripts/eval/run_paper_suite.sh"), "/ck/dpa", "/o"], env=env).stdout.splitlines()
    tasks = full[0].split("--tasks ")[1].split()[0].split(",")
    assert tasks == ["mmvet", "mmstar", "seedbench_2_plus", "mmmu_val", "mathvista_testmini_format",
                     "mathvision_test", "ocrbench", "ai2d", "openai_math", "gpqa_diamond_openai"]
    assert "--model llava_dpa --model_args pretrained=/ck/dpa,dtype=bfloat16" in full[0]
    assert full[1] == "+ py -m llava_dpa.cli export-llm /ck/dpa /o/text_path"
    assert "lm_eval --model hf --model_args pretrained=/o/text_path,dtype=bfloat16,enable_thinking=False" in full[2]
    assert "--tasks mmlu_redux_generative --apply_chat_template" in full[2]
    assert full[3] == "+ py -m llava_dpa.cli report /o"
    llm = run(["bash", str(REPO / "scripts/eval/run_paper_suite.sh"), "/base/qwen3", "/o"],
              env=dict(env, LLM_ONLY="1", MODEL_BASE="")).stdout.splitlines()
    assert "--tasks openai_math,gpqa_diamond_openai " in llm[0] and "pretrained=/base/qwen3" in llm[1]
    assert len(llm) == 3
    lora = run(["bash", str(REPO / "scripts/eval/run_paper_suite.sh"), "/ck/lora", "/o"],
               env=dict(env, MODEL_BASE="/base/qwen3")).stdout.splitlines()
    assert "model_base=/base/qwen3" in lora[0] and lora[1].endswith("--model-base /base/qwen3")
