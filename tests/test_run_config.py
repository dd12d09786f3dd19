"""The one run configuration: parsing, the stage, every refusal, model.config entries, run_config.json and
the resume check. Pure logic: towers are config files on disk, nothing is trained or built."""
import json

import pytest

from llava_dpa.training import model_config, resolution, run_record
from llava_dpa.training.errors import RunConfigError
from llava_dpa.training.run_config import TowerKind
from llava_dpa.training.stage import Stage

pytestmark = pytest.mark.fast


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """A ViT and a perceiver, as far as the run configuration sees them: their config.json."""
    root = tmp_path_factory.mktemp("towers")
    (root / "vit").mkdir()
    (root / "vit" / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    (root / "perceiver").mkdir()
    (root / "perceiver" / "config.json").write_text(json.dumps({"model_type": "llava_qwen3", "mm_vision_tower": "x"}))
    return {"vit": str(root / "vit"), "perceiver": str(root / "perceiver")}


def parse(tmp_path, *flags, tower=None):
    argv = ["--model_name_or_path", "lm", "--output_dir", str(tmp_path / "out"), "--version", "qwen_3",
            "--data_path", "d.json", "--report_to", "none"]
    if tower:
        argv += ["--vision_tower", tower]
    return resolution.parse_run_config(argv + list(flags))


def test_the_stage_is_decided_once_and_llava_flags_keep_their_meaning(tmp_path, towers):
    assert parse(tmp_path, tower=towers["vit"]).stage is Stage.INSTRUCTION_TUNING
    run = parse(tmp_path, "--tune_mm_mlp_adapter", "True", tower=towers["vit"])
    assert run.stage is Stage.ALIGNMENT and run.model.stage == 1
    run = parse(tmp_path, "--stage", "1", tower=towers["vit"])
    # LLaVA's own code reads tune_mm_mlp_adapter: it follows the stage
    assert run.stage is Stage.ALIGNMENT and run.model.tune_mm_mlp_adapter and run.training.tune_mm_mlp_adapter
    assert parse(tmp_path, "--stage", "2", tower=towers["vit"]).model.tune_mm_mlp_adapter is False
    with pytest.raises(RunConfigError, match=r"--stage 2 with --tune_mm_mlp_adapter True"):
        parse(tmp_path, "--stage", "2", "--tune_mm_mlp_adapter", "True", tower=towers["vit"])
    with pytest.raises(RunConfigError, match=r"--stage 3: use 1"):
        parse(tmp_path, "--stage", "3", tower=towers["vit"])


def test_tower_kind_is_read_from_the_tower_config(tmp_path, towers):
    assert parse(tmp_path, tower=towers["vit"]).tower_kind is TowerKind.VIT
    assert parse(tmp_path, tower=towers["perceiver"]).tower_kind is TowerKind.PERCEIVER
    assert parse(tmp_path, tower="dpa:" + towers["perceiver"]).tower_kind is TowerKind.PERCEIVER
    assert parse(tmp_path).tower_kind is TowerKind.NONE


REFUSALS = [
    ("vit", ["--freeze_perceiver", "True"], "--freeze_perceiver only apply to a DPA perceiver"),
    ("vit", ["--dpa_select_layer", "0"], "--dpa_select_layer only apply to a DPA perceiver"),
    ("vit", ["--perceiver_lr", "1e-5"], "--perceiver_lr only apply to a DPA perceiver"),
    ("vit", ["--perceiver_aux_loss_weight", "0.5"], "--perceiver_aux_loss_weight only apply"),
    ("perceiver", ["--perceiver_instruction_context", "True", "--version", "llava_v1"], "reads the user turn"),
    ("perceiver", ["--perceiver_instruction_context", "True", "--stage", "1"], "in stage 1"),
    ("perceiver", ["--freeze_perceiver", "True", "--perceiver_aux_loss_weight", "1"], "--freeze_perceiver True with"),
    ("perceiver", ["--mm_projector_type", "large_mlp", "--mm_projector_width", "8", "--mm_projector_depth", "3"],
     "plain-ViT ablation"),
    ("vit", ["--mm_projector_type", "large_mlp"], "needs --mm_projector_width"),
    ("vit", ["--image_aspect_ratio", "anyres"], "needs --image_grid_pinpoints"),
    ("vit", ["--image_aspect_ratio", "tiles"], "unknown --image_aspect_ratio 'tiles'"),
    ("vit", ["--image_grid_pinpoints", "[(448,)]"], "give positive (height, width) pairs"),
    ("vit", ["--image_grid_pinpoints", "__import__('os').system('false')"], "is not a list of (height, width)"),
    ("vit", ["--bits", "4"], "add --lora_enable True"),
    ("vit", ["--bits", "3", "--lora_enable", "True"], "--bits 3: use 4"),
    ("vit", ["--lora_enable", "True", "--stage", "1"], "--lora_enable True in stage 1"),
    ("vit", ["--unfreeze_mm_vision_tower", "True", "--stage", "1"], "--unfreeze_mm_vision_tower True in stage 1"),
    ("vit", ["--lora_enable", "True", "--lora_parts", "perceiver_lm"], "--lora_parts perceiver_lm: not a LoRA part"),
    ("perceiver", ["--lora_enable", "True", "--lora_parts", "projector"], "--lora_parts projector: not a LoRA part"),
    ("vit", ["--lora_enable", "True", "--lora_parts", "retina"], "--lora_parts retina: unknown part"),
    ("vit", ["--lora_parts", "language_model", "vision_tower"], "--lora_parts without --lora_enable"),
    ("vit", ["--lora_enable", "True", "--lora_bias", "biases"], "--lora_bias biases: use none, all"),
    ("vit", ["--packing_budget", "512", "--model_max_length", "1024", "--per_device_train_batch_size", "1"],
     "--packing_budget 512 is below --model_max_length 1024: a sample that fits the model would not fit a pack"),
    ("vit", ["--mm_vision_tower_lr", "2e-6"], "--mm_vision_tower_lr is set but no vision tower trains"),
    ("perceiver", ["--mm_vision_tower_lr", "2e-6", "--freeze_perceiver", "True"], "no vision tower trains"),
    ("vit", ["--version", "nonsense"], "unknown --version 'nonsense'"),
    ("vit", ["--version", "v0"], "LLaVA-1.0's format"),
    ("perceiver", ["--perceiver_aux_loss_stages", "3", "--perceiver_aux_loss_weight", "1"], "--perceiver_aux_loss_stages 3"),
    ("perceiver", ["--perceiver_aux_loss_weight", "-1"], "use a weight >= 0"),
]


@pytest.mark.parametrize("tower,flags,message", REFUSALS, ids=[" ".join(f) for _, f, _ in REFUSALS])
def test_nonsensical_combinations_are_refused_naming_the_flags(tmp_path, towers, tower, flags, message):
    with pytest.raises(RunConfigError) as info:
        parse(tmp_path, *flags, tower=towers[tower])
    assert message in str(info.value)
    assert not (tmp_path / "out").exists()


def test_typed_values_are_parsed_once(tmp_path, towers):
    run = parse(tmp_path, "--image_aspect_ratio", "anyres", "--image_grid_pinpoints", "[(32, 64), (64, 32)]",
                "--perceiver_aux_loss_weight", "0.5", "--perceiver_aux_loss_stages", "1", "2", "--stage", "1",
                tower=towers["perceiver"])
    assert run.image_grid_pinpoints == [(32, 64), (64, 32)]
    assert run.aux_loss_weight == 0.5  # stages 1 and 2 include this stage-1 run
    # the default stages are [2]: a stage-1 run carries no auxiliary loss
    assert parse(tmp_path, "--perceiver_aux_loss_weight", "0.5", "--stage", "1", tower=towers["perceiver"]).aux_loss_weight == 0
    assert parse(tmp_path, "--perceiver_aux_loss_weight", "0.5", tower=towers["perceiver"]).aux_loss_weight == 0.5


def test_learning_rates_per_part_default_to_the_llm_rate(tmp_path, towers):
    from llava_dpa.training.parts import Part

    run = parse(tmp_path, "--learning_rate", "1e-5", "--mm_vision_tower_lr", "2e-6", "--mm_projector_lr", "5e-5",
                tower=towers["perceiver"])
    assert run.learning_rate_of(Part.PERCEIVER_VIT) == 2e-6 and run.learning_rate_of(Part.PROJECTOR) == 5e-5
    assert run.learning_rate_of(Part.PERCEIVER_LM) == run.learning_rate_of(Part.LANGUAGE_MODEL) == 1e-5
    run = parse(tmp_path, "--learning_rate", "1e-5", "--perceiver_lr", "3e-5", tower=towers["perceiver"])
    assert run.learning_rate_of(Part.PERCEIVER_PROJECTOR) == run.learning_rate_of(Part.PERCEIVER_LM_HEAD) == 3e-5


def test_model_config_entries_come_from_one_function(tmp_path, towers):
    class Tower:
        def config_entries(self):
            return {"mm_vision_tower_config": {"model_type": "x"}, "mm_perceiver_prefix_ids": [1, 2]}

    run = parse(tmp_path, "--stage", "1", "--image_aspect_ratio", "anyres", "--image_grid_pinpoints", "[(32, 64)]",
                tower=towers["perceiver"])
    before = model_config.model_config_entries(run)
    assert before["training_stage"] == 1 and before["tune_mm_mlp_adapter"] is True
    assert before["image_grid_pinpoints"] == [[32, 64]] and before["conv_version"] == "qwen_3"
    after = model_config.model_config_entries(run, Tower())
    assert after["mm_perceiver_prefix_ids"] == [1, 2] and after["perceiver_aux_loss_weight"] == 0.0
    assert set(before) < set(after)


def test_run_config_json_holds_arguments_stage_versions_and_patches(tmp_path, towers):
    run = parse(tmp_path, "--learning_rate", "1e-3", "--stage", "1", tower=towers["vit"])
    path = run_record.write_run_config(run)
    saved = json.loads(open(path).read())
    assert saved["stage"] == 1 and saved["stage_name"] == "alignment"
    assert saved["arguments"]["training"]["learning_rate"] == 1e-3
    assert saved["arguments"]["model"]["vision_tower"] == towers["vit"]
    assert set(saved["versions"]) >= {"python", "torch", "transformers", "peft", "deepspeed", "llava-torch", "llava-dpa"}
    assert saved["versions"]["llava-torch"] == "1.2.2.post1"
    assert saved["patches"] and set(saved["patches"].values()) == {"applied"}
    assert saved["argv"] == run.argv


def test_resume_refuses_a_changed_model_or_data_setting_and_allows_batch_and_paths(tmp_path, towers):
    base = ["--learning_rate", "1e-3", "--per_device_train_batch_size", "8"]
    first = parse(tmp_path, *base, tower=towers["vit"])
    checkpoint = tmp_path / "checkpoint-4"
    run_record.write_run_config(first, str(checkpoint))
    # batch size, accumulation, paths and logging may change
    run_record.check_resume(parse(tmp_path, "--learning_rate", "1e-3", "--per_device_train_batch_size", "2",
                          "--gradient_accumulation_steps", "4", "--data_path", "moved.json", "--logging_steps", "7",
                          tower=towers["vit"]), str(checkpoint))
    with pytest.raises(RunConfigError, match=r"--learning_rate: 0\.001 -> 0\.002"):
        run_record.check_resume(parse(tmp_path, "--learning_rate", "2e-3", tower=towers["vit"]), str(checkpoint))
    with pytest.raises(RunConfigError, match=r"stage: 2 -> 1"):
        run_record.check_resume(parse(tmp_path, *base, "--stage", "1", tower=towers["vit"]), str(checkpoint))
    with pytest.raises(RunConfigError, match=r"--model_max_length"):
        run_record.check_resume(parse(tmp_path, *base, "--model_max_length", "99", tower=towers["vit"]), str(checkpoint))
    # a setting only one transformers version has is not a difference
    saved = json.loads((checkpoint / "run_config.json").read_text())
    saved["arguments"]["training"]["a_field_of_another_version"] = 1
    assert run_record.resume_differences(saved, first.to_json()) == []


def test_llava_script_flags_are_translated_without_rewriting_argv(tmp_path, towers):
    run = parse(tmp_path, "--evaluation_strategy", "no", tower=towers["vit"])
    assert run.training.eval_strategy == "no" and "--evaluation_strategy" in run.argv
