"""The registry's runs train end to end on the tiny zoo, through the shipped launcher and `llava-dpa recipe
run`, with tiny-model overrides only (llava_dpa/zoo/recipes.py). The flags themselves are checked without
training in test_recipe_registry.py."""
import dataclasses
import json
import os

import pytest
import torch

from conftest import PY, REPO, run
from llava_dpa.recipes.paper import REGISTRY
from llava_dpa.recipes.render import stage_command
from llava_dpa.recipes.runner import run_entry
from llava_dpa.zoo.recipes import TINY_FLAGS, tiny_settings

TINY = TINY_FLAGS + ["--max_steps", "1", "--per_device_train_batch_size", "2"]


@pytest.fixture(scope="module")
def cluster(zoo, tmp_path_factory):
    """One checkpoints folder for the module: later runs reuse what earlier ones built (completed steps skip)."""
    return tiny_settings(zoo, tmp_path_factory.mktemp("checkpoints"))


def env_for(settings):
    env = {f"LLAVA_DPA_{k.upper()}": v for k, v in settings.paths.items()}
    env.update(LLAVA_DPA_LAUNCHER="python", LLAVA_DPA_PYTHON=PY, LLAVA_DPA_PRECISION="fp32",
               LLAVA_DPA_GPUS_PER_NODE="1", LLAVA_DPA_DATALOADER_WORKERS="0", PYTHON=PY,
               PATH=os.path.dirname(PY) + os.pathsep + os.environ["PATH"])
    return env


def launch(settings, *args):
    return run(["bash", str(REPO / "scripts/train/launch.sh"), *args, "--", *TINY], env=env_for(settings), timeout=900)


def test_baseline_and_dpa_train_through_the_launcher_and_differ_only_in_the_tower(cluster):
    ckpt = cluster.checkpoints
    launch(cluster, "llava-next-qwen3-4b")
    assert (ckpt / "llava-next-qwen3-4b-stage1" / "mm_projector.bin").is_file()
    assert (ckpt / "llava-next-qwen3-4b" / "model.safetensors").is_file()
    # DPA needs the perceiver VLM: refused, then built with its prerequisites
    refused = run(["bash", str(REPO / "scripts/train/launch.sh"), "dpa-qwen3-4b"], env=env_for(cluster), check=False)
    assert refused.returncode == 2 and "recipe run perceiver-qwen3-0.6b" in refused.stderr
    launch(cluster, "dpa-qwen3-4b", "--with-prerequisites")
    perceiver = ckpt / "perceiver-qwen3-0.6b"
    assert (ckpt / "perceiver-stage1-only-stage1" / "mm_projector.bin").is_file()  # the perceiver's shared stage 1
    dpa = json.loads((ckpt / "dpa-qwen3-4b" / "config.json").read_text())
    assert dpa["mm_vision_tower"] == str(perceiver) and dpa["mm_hidden_size"] == 64 and dpa["training_stage"] == 2
    # what ran is exactly the registry's command (plus the overrides), recorded in run_config.json
    recorded = json.loads((ckpt / "dpa-qwen3-4b" / "run_config.json").read_text())
    assert recorded["argv"] == stage_command("dpa-qwen3-4b", 2, cluster, TINY).argv and recorded["stage"] == 2
    stage1 = json.loads((ckpt / "dpa-qwen3-4b-stage1" / "run_config.json").read_text())
    assert stage1["stage"] == 1 and stage1["arguments"]["model"]["version"] == "qwen_3"
    assert stage1["arguments"]["training"]["adam_beta2"] == 0.98
    again = launch(cluster, "dpa-qwen3-4b")
    assert again.stdout.count("complete, skipped") == 2


def test_llama_target_recipes(cluster):
    run_entry("dpa-llama3.2-3b", cluster, extra=TINY, with_prerequisites=True)
    run_entry("llava-next-llama3.2-3b", cluster, extra=TINY)
    for name in ("dpa-llama3.2-3b", "llava-next-llama3.2-3b"):
        config = json.loads((cluster.checkpoints / name / "config.json").read_text())
        assert config["model_type"] == "llava_llama" and config["conv_version"] == "llama_3"


def test_qwen3_32b_rows_train_with_qlora_and_lora_on_the_perceiver(cluster, zoo):
    from llava.model.builder import load_pretrained_model
    from safetensors.torch import load_file

    from test_entry_points import chat

    tiny_lora = TINY + ["--lora_r", "8", "--lora_alpha", "16"]
    run_entry("llava-next-qwen3-32b", cluster, extra=tiny_lora)
    base = cluster.checkpoints / "llava-next-qwen3-32b"
    targets = json.loads((base / "adapter_config.json").read_text())["target_modules"]
    assert "model\\.layers\\.0\\.self_attn\\.q_proj" in targets and "vision_tower\\.vision_tower" in targets
    assert json.loads((base / "config.json").read_text())["quantization_config"]["load_in_4bit"] is True

    run_entry("dpa-qwen3-32b", cluster, extra=tiny_lora, with_prerequisites=True)
    out = cluster.checkpoints / "dpa-qwen3-32b"
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert "vision_tower\\.perceiver\\.model\\.layers\\.0\\.self_attn\\.q_proj" in targets
    assert "vision_tower\\.perceiver\\.model\\.vision_tower" in targets and "lm_head" not in targets
    saved = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    assert any(".perceiver.model.layers." in k for k in saved)  # the perceiver's base weights: self-contained
    _, merged, _, _ = load_pretrained_model(str(out), zoo["qwen3_lm"], "x", device="cpu")
    perceiver = load_file(cluster.checkpoints / "perceiver-qwen3-0.6b" / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    merged_q = merged.get_vision_tower().perceiver.state_dict()[key]
    assert not torch.equal(merged_q, perceiver[key])  # the perceiver's LoRA delta is merged in
    _, turns = chat(out, f"{zoo['images']}/img_000.png", ["What color is the shape?"], extra=["--model-base", zoo["qwen3_lm"]])
    assert len(turns) == 1


def test_perceiver_levels_and_table3_rows(cluster, zoo):
    """Nested stage-2 subsets (the zoo has 34 samples, so the sizes shrink), the stage-1-only and untrained
    perceivers, and DPA on a perceiver level, evaluated on a question file."""
    for name, n in (("perceiver-10k", 6), ("perceiver-250k", 14)):
        run_entry(dataclasses.replace(REGISTRY[name], stage2_subset=n), cluster, extra=TINY)
    small, large = ([r["id"] for r in json.loads((cluster.checkpoints / "data" / f"stage2-{n}-seed0.json").read_text())]
                    for n in (6, 14))
    assert set(small) <= set(large) and (len(small), len(large)) == (6, 14)
    run_entry("perceiver-stage1-only", cluster, extra=TINY)
    run_entry("perceiver-untrained", cluster)
    for name in ("perceiver-untrained", "perceiver-stage1-only", "perceiver-10k", "perceiver-250k"):
        assert (cluster.checkpoints / name / "model.safetensors").is_file(), name
    origin = json.loads((cluster.checkpoints / "perceiver-stage1-only" / "config.json").read_text())["perceiver_origin"]
    assert origin["projector_weights"].endswith("perceiver-stage1-only-stage1/mm_projector.bin")
    run_entry("dpa-qwen3-4b-10k-perceiver", cluster, extra=TINY)
    config = json.loads((cluster.checkpoints / "dpa-qwen3-4b-10k-perceiver" / "config.json").read_text())
    assert config["mm_vision_tower"] == str(cluster.checkpoints / "perceiver-10k")
    answer_one_question(cluster, zoo, "dpa-qwen3-4b-10k-perceiver")


def answer_one_question(settings, zoo, name):
    questions = settings.checkpoints / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 0, "image": "img_000.png", "text": "What color is the shape?"}))
    answers = settings.checkpoints / "eval" / f"{name}.jsonl"
    answers.parent.mkdir(exist_ok=True)
    run(["bash", str(REPO / "scripts/eval/llava_vqa.sh"), str(settings.checkpoints / name), str(questions), zoo["images"],
         str(answers)], env={"PYTHON": PY, "PATH": os.path.dirname(PY) + os.pathsep + os.environ["PATH"]})
    assert len(answers.read_text().splitlines()) == 1


def test_table4_rows_train_and_answer(cluster, zoo):
    large = dataclasses.replace(REGISTRY["llava-next-qwen3-4b-large-mlp"], projector_budget=100_000, projector_depth=3)
    run_entry(large, cluster, extra=TINY)
    for name in ("dpa-qwen3-4b-instruction-context", "llava-next-qwen3-4b-perceiver-vit",
                 "dpa-qwen3-4b-random-perceiver-lm"):
        run_entry(name, cluster, extra=TINY, with_prerequisites=True)
    configs = {name: json.loads((cluster.checkpoints / name / "config.json").read_text()) for name in (
        "llava-next-qwen3-4b-large-mlp", "dpa-qwen3-4b-instruction-context", "llava-next-qwen3-4b-perceiver-vit",
        "dpa-qwen3-4b-random-perceiver-lm")}
    assert configs["dpa-qwen3-4b-instruction-context"]["perceiver_instruction_context"] is True
    # its stage 1 is DPA-Qwen3-4B's: the same projector file
    ctx = json.loads((cluster.checkpoints / "dpa-qwen3-4b-instruction-context" / "run_config.json").read_text())
    assert ctx["arguments"]["model"]["pretrain_mm_mlp_adapter"].endswith("dpa-qwen3-4b-stage1/mm_projector.bin")
    assert "mm_perceiver_prefix_ids" not in configs["llava-next-qwen3-4b-perceiver-vit"]  # a plain ViT tower
    assert configs["llava-next-qwen3-4b-large-mlp"]["mm_projector_type"] == "large_mlp"
    reinit = json.loads((cluster.checkpoints / "perceiver-random-lm" / "config.json").read_text())
    assert reinit["perceiver_origin"]["reinitialised_lm_of"] == str(cluster.checkpoints / "perceiver-qwen3-0.6b")
    for name in configs:
        answer_one_question(cluster, zoo, name)
