"""The registry's runs train end to end on the tiny zoo with tiny-model overrides only (llava_dpa/zoo/recipes.py):
through `run_entry` in this process for every row the tests read (the session fixture `registry`), and one stage
through the shipped launcher in a process of its own. The flags themselves are checked without training in
test_recipe_registry.py."""
import json
import os
import shutil

import torch

from conftest import PY, REGISTRY_LORA, REGISTRY_TINY, REPO, answer_questions, run
from llava_dpa.recipes.render import stage_command
from llava_dpa.zoo.recipes import TINY_FLAGS, tiny_settings

TINY = TINY_FLAGS + REGISTRY_TINY


def env_for(settings):
    env = {f"LLAVA_DPA_{k.upper()}": v for k, v in settings.paths.items()}
    env.update(LLAVA_DPA_LAUNCHER="python", LLAVA_DPA_PYTHON=PY, LLAVA_DPA_PRECISION="fp32",
               LLAVA_DPA_GPUS_PER_NODE="1", LLAVA_DPA_DATALOADER_WORKERS="0", PYTHON=PY,
               PATH=os.path.dirname(PY) + os.pathsep + os.environ["PATH"])
    return env


def launch(settings, *args):
    return run(["bash", str(REPO / "scripts/train/launch.sh"), *args, "--", *TINY], env=env_for(settings), timeout=900)


def test_the_launcher_trains_one_stage_refuses_a_missing_prerequisite_and_skips_what_is_complete(zoo, registry, tmp_path,
                                                                                                  monkeypatch, capsys):
    """scripts/train/launch.sh NAME --stage 2 -> `llava-dpa recipe run` -> that stage in its own process, settings
    from the LLAVA_DPA_* environment. The row's stage 1 is the session's (the `registry` fixture trained it with these
    overrides): copied in and left untouched, so the launcher trains stage 2 only. Then the same `recipe run`, in this
    process, refuses and skips."""
    settings = tiny_settings(zoo, tmp_path / "checkpoints")
    ckpt = settings.checkpoints
    stage1 = ckpt / "llava-next-qwen3-4b-stage1"
    shutil.copytree(registry.checkpoints / stage1.name, stage1)
    stage1_files = {p.name: p.stat().st_mtime_ns for p in stage1.iterdir()}
    launched = launch(settings, "llava-next-qwen3-4b", "--stage", "2")
    assert "[recipe] stage 2 of llava-next-qwen3-4b" in launched.stdout and "[recipe] stage 1" not in launched.stdout
    assert {p.name: p.stat().st_mtime_ns for p in stage1.iterdir()} == stage1_files
    assert (ckpt / "llava-next-qwen3-4b" / "model.safetensors").is_file()
    recorded = json.loads((ckpt / "llava-next-qwen3-4b" / "run_config.json").read_text())
    assert recorded["argv"] == stage_command("llava-next-qwen3-4b", 2, settings, TINY).argv
    from llava_dpa.cli import main

    for name, value in env_for(settings).items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    # DPA needs the perceiver VLM: refused, naming the command that makes it
    assert main(["recipe", "run", "dpa-qwen3-4b", "--", *TINY]) == 2
    assert "recipe run perceiver-qwen3-0.6b" in capsys.readouterr().err
    assert main(["recipe", "run", "llava-next-qwen3-4b", "--", *TINY]) == 0
    assert capsys.readouterr().out.count("complete, skipped") == 2


def test_baseline_and_dpa_rows_differ_only_in_the_tower(registry):
    ckpt = registry.checkpoints
    assert (ckpt / "llava-next-qwen3-4b" / "model.safetensors").is_file()
    perceiver = ckpt / "perceiver-qwen3-0.6b"   # built with its prerequisites
    assert (ckpt / "perceiver-stage1-only-stage1" / "mm_projector.bin").is_file()  # the perceiver's shared stage 1
    dpa = json.loads((ckpt / "dpa-qwen3-4b" / "config.json").read_text())
    assert dpa["mm_vision_tower"] == str(perceiver) and dpa["mm_hidden_size"] == 64 and dpa["training_stage"] == 2
    # what ran is exactly the registry's command (plus the overrides), recorded in run_config.json
    recorded = json.loads((ckpt / "dpa-qwen3-4b" / "run_config.json").read_text())
    assert recorded["argv"] == stage_command("dpa-qwen3-4b", 2, registry, TINY).argv and recorded["stage"] == 2
    stage1 = json.loads((ckpt / "dpa-qwen3-4b-stage1" / "run_config.json").read_text())
    assert stage1["stage"] == 1 and stage1["arguments"]["model"]["version"] == "qwen_3"
    assert stage1["arguments"]["training"]["adam_beta2"] == 0.98
    baseline = json.loads((ckpt / "llava-next-qwen3-4b" / "config.json").read_text())
    differing = {k for k in set(dpa) | set(baseline) if dpa.get(k) != baseline.get(k)}
    tower_keys = ("mm_", "perceiver", "freeze_perceiver", "unfreeze_mm_vision_tower")
    assert differing and all(k.startswith(tower_keys) for k in differing), " ".join(sorted(differing))


def test_llama_target_recipes(registry):
    for name in ("dpa-llama3.2-3b", "llava-next-llama3.2-3b"):
        config = json.loads((registry.checkpoints / name / "config.json").read_text())
        assert config["model_type"] == "llava_llama" and config["conv_version"] == "llama_3"


def test_qwen3_32b_rows_train_with_qlora_and_lora_on_the_perceiver(registry, zoo):
    from llava.model.builder import load_pretrained_model
    from safetensors.torch import load_file

    from test_entry_points import chat

    base = registry.checkpoints / "llava-next-qwen3-32b"
    targets = json.loads((base / "adapter_config.json").read_text())["target_modules"]
    assert "model\\.layers\\.0\\.self_attn\\.q_proj" in targets and "vision_tower\\.vision_tower" in targets
    assert json.loads((base / "config.json").read_text())["quantization_config"]["load_in_4bit"] is True
    recorded = json.loads((base / "run_config.json").read_text())
    assert recorded["argv"] == stage_command("llava-next-qwen3-32b", 2, registry, TINY + REGISTRY_LORA).argv

    out = registry.checkpoints / "dpa-qwen3-32b"
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert "vision_tower\\.perceiver\\.model\\.layers\\.0\\.self_attn\\.q_proj" in targets
    assert "vision_tower\\.perceiver\\.model\\.vision_tower" in targets and "lm_head" not in targets
    saved = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    assert any(".perceiver.model.layers." in k for k in saved)  # the perceiver's base weights: self-contained
    _, merged, _, _ = load_pretrained_model(str(out), zoo["qwen3_lm"], "x", device="cpu")
    perceiver = load_file(registry.checkpoints / "perceiver-qwen3-0.6b" / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    merged_q = merged.get_vision_tower().perceiver.state_dict()[key]
    assert not torch.equal(merged_q, perceiver[key])  # the perceiver's LoRA delta is merged in
    _, turns = chat(out, f"{zoo['images']}/img_000.png", ["What color is the shape?"], extra=["--model-base", zoo["qwen3_lm"]])
    assert len(turns) == 1


def answer_one_question(settings, zoo, name, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 0, "image": "img_000.png", "text": "What color is the shape?"}))
    rows = answer_questions(settings.checkpoints / name, questions, zoo["images"], tmp_path / f"{name}.jsonl")
    assert len(rows) == 1 and rows[0]["question_id"] == 0, name


def test_perceiver_levels_and_table3_rows(registry, zoo, tmp_path):
    """Nested stage-2 subsets (the zoo has 34 samples, so the sizes shrink), the stage-1-only and untrained
    perceivers, and DPA on a perceiver level, answering a question file."""
    ckpt = registry.checkpoints
    small, large = ([r["id"] for r in json.loads((ckpt / "data" / f"stage2-{n}-seed0.json").read_text())]
                    for n in (6, 14))
    assert set(small) <= set(large) and (len(small), len(large)) == (6, 14)
    for name in ("perceiver-untrained", "perceiver-stage1-only", "perceiver-10k", "perceiver-250k"):
        assert (ckpt / name / "model.safetensors").is_file(), name
    origin = json.loads((ckpt / "perceiver-stage1-only" / "config.json").read_text())["perceiver_origin"]
    assert origin["projector_weights"].endswith("perceiver-stage1-only-stage1/mm_projector.bin")
    config = json.loads((ckpt / "dpa-qwen3-4b-10k-perceiver" / "config.json").read_text())
    assert config["mm_vision_tower"] == str(ckpt / "perceiver-10k")
    answer_one_question(registry, zoo, "dpa-qwen3-4b-10k-perceiver", tmp_path)


def test_table4_rows_train_and_answer(registry, zoo, tmp_path):
    ckpt = registry.checkpoints
    names = ("llava-next-qwen3-4b-large-mlp", "dpa-qwen3-4b-instruction-context", "llava-next-qwen3-4b-perceiver-vit",
             "dpa-qwen3-4b-random-perceiver-lm")
    configs = {name: json.loads((ckpt / name / "config.json").read_text()) for name in names}
    assert configs["dpa-qwen3-4b-instruction-context"]["perceiver_instruction_context"] is True
    # its stage 1 is DPA-Qwen3-4B's: the same projector file
    ctx = json.loads((ckpt / "dpa-qwen3-4b-instruction-context" / "run_config.json").read_text())
    assert ctx["arguments"]["model"]["pretrain_mm_mlp_adapter"].endswith("dpa-qwen3-4b-stage1/mm_projector.bin")
    assert "mm_perceiver_prefix_ids" not in configs["llava-next-qwen3-4b-perceiver-vit"]  # a plain ViT tower
    assert configs["llava-next-qwen3-4b-large-mlp"]["mm_projector_type"] == "large_mlp"
    reinit = json.loads((ckpt / "perceiver-random-lm" / "config.json").read_text())
    assert reinit["perceiver_origin"]["reinitialised_lm_of"] == str(ckpt / "perceiver-qwen3-0.6b")
    for name in names:
        answer_one_question(registry, zoo, name, tmp_path)
