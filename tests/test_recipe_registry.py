"""The paper's runs as one typed registry: its tables, its sources, no duplicated training, the rendered
commands, the settings and the `llava-dpa recipe` commands. Pure logic: nothing is trained."""
import dataclasses
import json

import pytest

from llava_dpa.cli import main as cli_main
from llava_dpa.recipes import paper
from llava_dpa.recipes.paper import REGISTRY, Recipe
from llava_dpa.recipes.render import RecipeError, merge_flags, stage_command, stage_flags, trainings
from llava_dpa.recipes.runner import run_entry, steps
from llava_dpa.recipes.settings import Settings, SettingsError, load_settings

pytestmark = pytest.mark.fast

SETTINGS = Settings(paths={k: f"/c/{k}" for k in ("vit", "qwen3_0_6b", "qwen3_4b", "qwen3_32b", "llama3_2_3b",
                                                  "stage1_data", "stage1_images", "stage2_data", "stage2_images",
                                                  "official_perceiver")}
                    | {"checkpoints": "/c/ckpt"})


def flag(argv, name):
    i = argv.index(name)
    values = []
    for token in argv[i + 1:]:
        if token.startswith("--"):
            break
        values.append(token)
    return values[0] if len(values) == 1 else values


def test_every_table_the_paper_reports_is_in_the_registry():
    sizes = {t: len(paper.table(t)) for t in ("Table 1", "Table 2", "Table 3", "Table 4")}
    assert sizes == {"Table 1": 6, "Table 2": 5, "Table 3": 5, "Table 4": 9}
    rows = {t: {row for row, _ in paper.table(t)} for t in sizes}
    assert {"LLaVA-NeXT-Qwen3-4B", "DPA-Qwen3-4B", "LLaVA-NeXT-Qwen3-32B", "DPA-Qwen3-32B",
            "LLaVA-NeXT-LLaMA-3.2-3B", "DPA-LLaMA-3.2-3B"} == rows["Table 1"]
    assert {"LLaVA-NeXT-Qwen3-4B", "w/ large MLP", "DPA-Qwen3-4B", "w/o perceiver LM blocks",
            "w/o perceiver LM pre-training", "w/ instruction context", "w/ perceiver frozen", "w/ untrained perceiver",
            "w/ untrained perceiver + multi-task"} == rows["Table 4"]
    # a row two tables share is one entry referenced by both
    assert {t for t, _ in REGISTRY["dpa-qwen3-4b"].rows} == {"Table 1", "Table 3", "Table 4"}
    assert {t for t, _ in REGISTRY["dpa-qwen3-4b-untrained-perceiver"].rows} == {"Table 3", "Table 4"}
    assert {t for t, _ in REGISTRY["llava-next-qwen3-4b"].rows} == {"Table 1", "Table 4"}
    assert ("Table 2", "stage 1 + stage 2 (1M)") in REGISTRY["perceiver-qwen3-0.6b"].rows  # the perceiver VLM


def test_an_entry_declares_only_what_differs_from_the_entry_it_extends():
    for entry in paper.ENTRIES:
        cls = type(entry)
        if cls is Recipe:
            continue
        parent = cls.__mro__[1]()
        declared = set(cls.__dict__.get("__annotations__", {}))
        assert declared, cls.__name__
        for name in declared - {"name", "rows", "description"}:
            assert getattr(entry, name) != getattr(parent, name), f"{cls.__name__}.{name} repeats its parent's value"


STRUCTURAL = {"name", "rows", "description", "stages", "stage1_shared_with", "stage2_subset", "subset_seed",
              "output_from", "projector_budget", "projector_depth", "freeze_perceiver", "instruction_context",
              "aux_loss_weight", "lora"}


def test_every_hyperparameter_says_where_it_comes_from():
    for entry in paper.ENTRIES:
        cls = type(entry)
        for f in dataclasses.fields(cls):
            declared_here = f.name in cls.__dict__.get("__annotations__", {}) and cls is not Recipe
            if f.name in STRUCTURAL and not (declared_here and f.name not in {"name", "rows", "description",
                                                                                  "stages", "stage1_shared_with"}):
                continue
            assert f.metadata.get("source"), f"{cls.__name__}.{f.name} has no source"
    for f in dataclasses.fields(paper.LoRA):
        assert f.metadata.get("source"), f"LoRA.{f.name}"


def own_trainings():
    return [(entry.name, cmd) for entry in paper.ENTRIES for cmd in trainings(entry, SETTINGS)]


def without_output(argv):
    return tuple(merge_flags(argv, [], drop=("--output_dir",)))


def test_no_two_entries_resolve_to_the_same_training():
    seen = {}
    for name, cmd in own_trainings():
        key = (cmd.stage, without_output(cmd.argv))
        assert key not in seen, f"{name} stage {cmd.stage} is the same training as {seen[key]}"
        seen[key] = name
    assert len(seen) == 37  # 24 entries (22 LLaVA-NeXT-form, 2 official-pipeline): 6 shared stage 1s and 2 built
    # perceivers train nothing of their own


def test_a_shared_stage1_is_exactly_the_owners_training():
    shared = [e for e in paper.ENTRIES if e.stage1_shared_with]
    assert {e.name for e in shared} == {"perceiver-qwen3-0.6b", "perceiver-10k", "perceiver-250k",
                                        "dpa-qwen3-4b-instruction-context", "dpa-qwen3-4b-frozen-perceiver",
                                        "dpa-qwen3-4b-untrained-perceiver-multitask"}
    for entry in shared:
        owner = REGISTRY[entry.stage1_shared_with]
        assert stage_flags(entry, 1, SETTINGS) == stage_flags(owner, 1, SETTINGS), entry.name


def test_the_recipes_say_what_the_paper_and_the_official_scripts_say():
    s1 = stage_command("dpa-qwen3-4b", 1, SETTINGS).argv
    assert flag(s1, "--lr_scheduler_type") == "warmup_stable_decay" and flag(s1, "--warmup_steps") == "440"
    assert json.loads(flag(s1, "--lr_scheduler_kwargs")) == {"num_decay_steps": 1170}
    assert flag(s1, "--adam_beta2") == "0.98" and flag(s1, "--weight_decay") == "0.01"
    assert flag(s1, "--model_max_length") == "2048" and flag(s1, "--learning_rate") == "0.001"
    assert flag(s1, "--version") == "qwen_3"  # the caption instruction through the chat template
    assert flag(s1, "--gradient_accumulation_steps") == "8"  # 512 = 8 GPUs x 8 x 8
    s2 = stage_command("dpa-qwen3-4b", 2, SETTINGS).argv
    assert flag(s2, "--model_max_length") == "8192" and flag(s2, "--adam_beta2") == "0.98"
    assert (flag(s2, "--learning_rate"), flag(s2, "--mm_vision_tower_lr"), flag(s2, "--mm_projector_lr")) == \
        ("1e-05", "2e-06", "1e-05")
    assert flag(s2, "--gradient_accumulation_steps") == "4" and flag(s2, "--num_train_epochs") == "2"
    assert flag(s2, "--vision_tower") == "/c/ckpt/perceiver-qwen3-0.6b"
    assert flag(s2, "--pretrain_mm_mlp_adapter") == "/c/ckpt/dpa-qwen3-4b-stage1/mm_projector.bin"
    q = stage_command("dpa-qwen3-32b", 2, SETTINGS).argv
    assert (flag(q, "--bits"), flag(q, "--lora_r"), flag(q, "--lora_alpha"), flag(q, "--lora_dropout")) == \
        ("4", "32", "32", "0.0")
    assert flag(q, "--lora_parts") == ["language_model", "perceiver_vit", "perceiver_projector", "perceiver_lm"]
    assert (flag(q, "--learning_rate"), flag(q, "--mm_vision_tower_lr"), flag(q, "--num_train_epochs")) == \
        ("0.0002", "4e-05", "3")
    b = stage_command("llava-next-qwen3-32b", 2, SETTINGS).argv
    assert flag(b, "--lora_parts") == ["language_model", "vision_tower"] and flag(b, "--unfreeze_mm_vision_tower") == "True"
    llama = stage_command("dpa-llama3.2-3b", 1, SETTINGS).argv
    assert flag(llama, "--version") == "llama_3" and flag(llama, "--model_name_or_path") == "/c/llama3_2_3b"
    frozen = stage_command("dpa-qwen3-4b-frozen-perceiver", 2, SETTINGS).argv
    assert flag(frozen, "--freeze_perceiver") == "True" and "--mm_vision_tower_lr" not in frozen
    multitask = stage_command("dpa-qwen3-4b-untrained-perceiver-multitask", 2, SETTINGS).argv
    assert flag(multitask, "--perceiver_aux_loss_weight") == "1.0" and flag(multitask, "--perceiver_aux_loss_stages") == "2"
    assert "--perceiver_aux_loss_weight" not in stage_command("dpa-qwen3-4b-untrained-perceiver", 1, SETTINGS).argv
    ctx = stage_command("dpa-qwen3-4b-instruction-context", 2, SETTINGS).argv
    assert flag(ctx, "--perceiver_instruction_context") == "True"
    assert flag(stage_command("perceiver-10k", 2, SETTINGS).argv, "--data_path") == "/c/ckpt/data/stage2-10000-seed0.json"
    # LLaVA's plain stage 1 is one override away
    plain = stage_command("dpa-qwen3-4b", 1, SETTINGS, ["--version", "plain"]).argv
    assert flag(plain, "--version") == "plain" and plain.count("--version") == 1


def test_every_rendered_command_parses_as_llava_arguments():
    from llava_dpa.commands.recipe import resolved_arguments

    for name, cmd in own_trainings():
        resolved = resolved_arguments(cmd.argv)
        assert resolved["stage"] == cmd.stage, name


def test_the_steps_of_perceiver_levels_and_built_perceivers():
    untrained = steps(REGISTRY["perceiver-untrained"], SETTINGS)
    assert [s.description for s in untrained] == ["compose perceiver-untrained"]
    assert "--projector-weights" not in untrained[0].command
    stage1_only = steps(REGISTRY["perceiver-stage1-only"], SETTINGS)
    assert [s.description for s in stage1_only] == ["stage 1 of perceiver-stage1-only", "compose perceiver-stage1-only"]
    assert "/c/ckpt/perceiver-stage1-only-stage1/mm_projector.bin" in stage1_only[1].command
    ten_k = [s.description for s in steps(REGISTRY["perceiver-10k"], SETTINGS)]
    assert ten_k == ["stage 1 of perceiver-10k (the same training as perceiver-stage1-only's)",
                     "a 10000-sample subset of the stage-2 data", "stage 2 of perceiver-10k"]
    random_lm = steps(REGISTRY["perceiver-random-lm"], SETTINGS)
    assert random_lm[0].command[-6:] == ["reinit-perceiver-lm", "/c/ckpt/perceiver-qwen3-0.6b", "--output",
                                         "/c/ckpt/perceiver-random-lm", "--seed", "0"]
    wo_blocks = [s.description for s in steps(REGISTRY["llava-next-qwen3-4b-perceiver-vit"], SETTINGS)]
    assert wo_blocks[0] == "extract the ViT of perceiver-qwen3-0.6b"


def test_settings_from_yaml_and_environment_are_data_never_code(tmp_path):
    yaml_file = tmp_path / "cluster.yaml"
    yaml_file.write_text("vit: /data/vit\ngpus_per_node: 4\nlauncher: torchrun\npaths:\n  qwen3_4b: /data/q4\n")
    settings = load_settings(str(yaml_file), environ={"LLAVA_DPA_PER_DEVICE_BATCH": "2",
                                                      "LLAVA_DPA_QWEN3_4B": "$(touch /tmp/pwned)"})
    assert settings.path("vit") == "/data/vit" and settings.gpus_per_node == 4 and settings.launcher == "torchrun"
    assert settings.per_device_batch == 2 and settings.path("qwen3_4b") == "$(touch /tmp/pwned)"
    assert settings.grad_accumulation(256) == 32
    (tmp_path / "bad.yaml").write_text("vitt: x\n")
    with pytest.raises(SettingsError, match="unknown setting 'vitt'"):
        load_settings(str(tmp_path / "bad.yaml"), environ={})
    with pytest.raises(SettingsError, match="launcher 'slurm'"):
        load_settings(None, environ={"LLAVA_DPA_LAUNCHER": "slurm"})
    env_file = load_settings(None, environ={"LLAVA_DPA_SETTINGS": str(yaml_file)})
    assert env_file.path("vit") == "/data/vit"
    launcher = stage_command("dpa-qwen3-4b", 1, settings).launcher
    assert launcher == ["torchrun", "--nproc_per_node", "4", "-m", "llava.train.train_mem"]
    deepspeed = stage_command("dpa-qwen3-4b", 1, SETTINGS).launcher
    assert deepspeed[:5] == ["deepspeed", "--num_gpus", "8", "--module", "llava.train.train_mem"]
    assert deepspeed[-1].endswith("llava_dpa/recipes/deepspeed/zero2.json")


def test_recipe_list_show_and_dry_run(tmp_path, capsys, monkeypatch):
    for key, value in SETTINGS.paths.items():
        monkeypatch.setenv(f"LLAVA_DPA_{key.upper()}", value if key != "checkpoints" else str(tmp_path))
    assert cli_main(["recipe", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in REGISTRY)
    assert cli_main(["recipe", "list", "--table", "Table 4", "--names"]) == 0
    assert len(capsys.readouterr().out.split()) == 9
    assert cli_main(["recipe", "show", "dpa-qwen3-32b", "--stage", "2"]) == 0
    shown = capsys.readouterr().out
    assert "--lora_r 32" in shown and "Table 6 (LoRA: ViT 4e-5)" in shown and '"stage": 2' in shown
    assert cli_main(["recipe", "show", "dpa-qwen3-4b", "--json", "--", "--max_steps", "3"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["stages"]["1"]["arguments"]["max_steps"] == 3
    # a trained perceiver it needs is missing: refused with the command that makes it
    assert cli_main(["recipe", "run", "dpa-qwen3-4b", "--dry-run"]) == 2
    assert "run `llava-dpa recipe run perceiver-qwen3-0.6b` first" in capsys.readouterr().err
    assert cli_main(["recipe", "run", "dpa-qwen3-4b-random-perceiver-lm", "--dry-run", "--with-prerequisites"]) == 0
    plan = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[recipe]")]
    assert plan == ["[recipe] stage 1 of perceiver-qwen3-0.6b (the same training as perceiver-stage1-only's)",
                    "[recipe] stage 2 of perceiver-qwen3-0.6b", "[recipe] re-initialise the LM of perceiver-qwen3-0.6b",
                    "[recipe] stage 1 of dpa-qwen3-4b-random-perceiver-lm",
                    "[recipe] stage 2 of dpa-qwen3-4b-random-perceiver-lm"]
    assert cli_main(["recipe", "output", "perceiver-10k"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "perceiver-10k")
    assert cli_main(["recipe", "show", "no-such-row"]) == 2
    assert "unknown recipe 'no-such-row'" in capsys.readouterr().err


def flags_of(argv):
    parsed, key = {}, None
    for token in argv:
        if token.startswith("--"):
            key = token
            parsed[key] = []
        else:
            parsed[key].append(token)
    return parsed


@pytest.mark.parametrize("baseline,dpa", [("llava-next-qwen3-4b", "dpa-qwen3-4b"),
                                          ("llava-next-llama3.2-3b", "dpa-llama3.2-3b"),
                                          ("llava-next-qwen3-32b", "dpa-qwen3-32b")])
def test_a_dpa_row_differs_from_its_baseline_only_in_the_tower(baseline, dpa):
    for stage in (1, 2):
        b, d = (flags_of(stage_command(name, stage, SETTINGS).argv) for name in (baseline, dpa))
        changed = {k for k in set(b) | set(d) if b.get(k) != d.get(k)}
        allowed = {"--vision_tower", "--output_dir", "--pretrain_mm_mlp_adapter"}
        if stage == 2:
            allowed |= {"--unfreeze_mm_vision_tower", "--lora_parts"}  # a ViT flag; the tower's LoRA parts
        assert "--vision_tower" in changed and changed <= allowed, (stage, changed - allowed)


@pytest.mark.parametrize("variant,flags", [
    ("dpa-qwen3-4b-instruction-context", {"--perceiver_instruction_context"}),
    ("dpa-qwen3-4b-frozen-perceiver", {"--freeze_perceiver", "--mm_vision_tower_lr"}),
    ("dpa-qwen3-4b-untrained-perceiver-multitask", {"--perceiver_aux_loss_weight", "--perceiver_aux_loss_stages"})])
def test_a_table4_variant_differs_from_its_parent_only_in_its_flags(variant, flags):
    entry = REGISTRY[variant]
    parent = type(entry).__mro__[1]()
    v, p = (flags_of(stage_command(e, 2, SETTINGS).argv) for e in (entry, parent))
    changed = {k for k in set(v) | set(p) if v.get(k) != p.get(k)} - {"--output_dir"}
    assert changed == flags


def in_folder(folder) -> Settings:
    return dataclasses.replace(SETTINGS, paths=SETTINGS.paths | {"checkpoints": str(folder)})


def test_recipe_run_with_a_stage_runs_that_stage_only(tmp_path, capsys, monkeypatch):
    """`recipe run NAME --stage N` executes exactly the rendered command of that stage (the executor records it
    here; tests/test_recipes.py runs one for real through the launcher); stage 2 without its stage-1 projector is
    refused naming the command that makes it; a stage the entry does not train is refused by name."""
    settings = in_folder(tmp_path)
    executed = []
    run_entry("llava-next-qwen3-4b", settings, stage=1, execute=executed.append)
    assert executed == [stage_command("llava-next-qwen3-4b", 1, settings).command]
    with pytest.raises(RecipeError, match="run `llava-dpa recipe run llava-next-qwen3-4b --stage 1` first"):
        run_entry("llava-next-qwen3-4b", settings, stage=2, execute=executed.append)
    assert len(executed) == 1
    projector = tmp_path / "llava-next-qwen3-4b-stage1" / "mm_projector.bin"
    projector.parent.mkdir()
    projector.write_bytes(b"")  # what stage 1 leaves; stage 2's command names it
    run_entry("llava-next-qwen3-4b", settings, stage=2, extra=["--max_steps", "3"], execute=executed.append)
    assert executed[1:] == [stage_command("llava-next-qwen3-4b", 2, settings, ["--max_steps", "3"]).command]
    assert flag(executed[1], "--pretrain_mm_mlp_adapter") == str(projector) and flag(executed[1], "--max_steps") == "3"
    run_entry("llava-next-qwen3-4b", settings, stage=1, execute=executed.append)  # complete: skipped
    assert len(executed) == 2
    # the subset a stage-2 level reads is part of its stage 2, and only of it
    steps_of_10k = [s.description for s in steps(REGISTRY["perceiver-10k"], settings, stage=2)]
    assert steps_of_10k == ["a 10000-sample subset of the stage-2 data", "stage 2 of perceiver-10k"]
    with pytest.raises(RecipeError, match="perceiver-untrained does not train stage 1"):
        run_entry("perceiver-untrained", settings, stage=1, execute=executed.append)

    # the command line: the same plan, printed by --dry-run
    for key, value in settings.paths.items():
        monkeypatch.setenv(f"LLAVA_DPA_{key.upper()}", value)
    capsys.readouterr()
    assert cli_main(["recipe", "run", "llava-next-qwen3-4b", "--stage", "2", "--dry-run", "--", "--max_steps", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    command = stage_command("llava-next-qwen3-4b", 2, load_settings(None), ["--max_steps", "3"]).command
    assert printed == ["[recipe] stage 2 of llava-next-qwen3-4b", "  " + " ".join(command)]


def test_a_cycle_in_the_registrys_prerequisites_is_refused_by_name(tmp_path, capsys, monkeypatch):
    """Two entries that need each other's output (a DPA row on a perceiver re-initialised from that very row): with
    --with-prerequisites the runner names the cycle instead of recursing; without, it names the missing output.
    Every entry of the real registry plans with its prerequisites (no cycle there)."""
    from llava_dpa.recipes.paper import PerceiverOf, ReinitialiseLM

    cycle_a = dataclasses.replace(REGISTRY["dpa-qwen3-4b"], name="cycle-a", tower=PerceiverOf("cycle-b"))
    cycle_b = dataclasses.replace(REGISTRY["perceiver-random-lm"], name="cycle-b", output_from=ReinitialiseLM("cycle-a"))
    monkeypatch.setitem(REGISTRY, "cycle-a", cycle_a)
    monkeypatch.setitem(REGISTRY, "cycle-b", cycle_b)
    settings = in_folder(tmp_path)

    def never(command):
        raise AssertionError(f"nothing may run: {command}")

    with pytest.raises(RecipeError, match="prerequisites form a cycle: cycle-a -> cycle-b -> cycle-a; each needs"):
        run_entry("cycle-a", settings, with_prerequisites=True, execute=never)
    with pytest.raises(RecipeError, match="cycle-a needs cycle-b's output"):
        run_entry("cycle-a", settings, execute=never)
    for key, value in settings.paths.items():
        monkeypatch.setenv(f"LLAVA_DPA_{key.upper()}", value)
    capsys.readouterr()
    assert cli_main(["recipe", "run", "cycle-b", "--with-prerequisites", "--dry-run"]) == 2
    assert "form a cycle: cycle-b -> cycle-a -> cycle-b" in capsys.readouterr().err

    for entry in paper.ENTRIES:
        run_entry(entry, settings, with_prerequisites=True, dry_run=True, execute=never)
    assert not list(tmp_path.iterdir())  # a dry run writes nothing
