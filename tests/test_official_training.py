"""The official pipeline here, step by step, against the authors' own training stack (issue #28).

tests/fixtures/official_swift/ was recorded by scripts/reference/official_swift_reference.py: the DPA release
(THUMAI-Lab/Deep-Pre-Alignment 1faf467) trained a tiny official DPA model, built by its own modeling code, through
its own ms-swift: stage 1 (PT_DPA_4node.sh) and stage 2 (SFT_DPA_4node.sh), scaled to a few steps, fp32 on a CPU.
Every optimizer step there is made of the whole data set (micro batches of one sample, accumulated), so that the
order in which a sampler here hands the samples out changes nothing but the order of a sum.

Here, without ms-swift: the recorded initial weights go through `llava-dpa import-official`; the registry's
`dpa-qwen3-4b-official-pipeline` row trains stage 1 from the imported aligner (the release's PT script continues from
DPA-4B-init's own aligner) and stage 2 from the reference's stage-1 aligner (so a stage-1 difference cannot leak into
stage 2), through `train(argv=...)`, the body of LLaVA's `llava.train.train_mem`, with the reference's scaled step
counts and batch shape; the row's own learning rates, schedules, optimizer settings, template and image settings are
not overridden. What is compared, and how closely (fp32, CPU; the two sides run different code for the same maths):

- each sample's target ids and labels (the `<image>` placeholder expanded to the release's
  `<|vision_start|>` + N pads + `<|vision_end|>` slots): equal;
- each sample's loss at the first step (before any update, so the forward alone: perceiver, aligner, target):
  within LOSS_ATOL;
- per step: the loss (the release's: the sum of the label tokens' losses over the step's micro batches, divided by
  their number), the gradient norm before clipping (relative GRAD_RTOL), every parameter's learning rate (relative
  1e-9) and weight decay (equal), the gradient norm per part after clipping (relative GRAD_RTOL);
- the parameters after the last step: each tensor's update (final - initial) within PARAM_RTOL of the release's
  largest update in that tensor.

Where this project differs from the release, the comparison is marked xfail(strict) with the measured difference
and its cause; docs/official_dpa.md ("Training against the release's own stack") lists them.
"""
from __future__ import annotations

import functools
import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import REPO, built_once, in_process_logged_call

FIXTURE = REPO / "tests" / "fixtures" / "official_swift"
ENTRY = "dpa-qwen3-4b-official-pipeline"
IMAGE_TOKEN_INDEX = -200   # LLaVA's <image> placeholder id (llava.constants)
VISION_START, IMAGE_PAD, VISION_END = 151652, 151655, 151653

LOSS_ATOL = 2e-5        # a loss near log(151,680) = 11.93 in fp32: a few ulps of each token's log-probability
GRAD_RTOL = 1e-4
LR_RTOL = 1e-9
#: Adam divides each step by the root of the gradient's running square: a coordinate whose gradient is near zero
#: moves by an amount that fp32 noise decides; 1% of the tensor's largest update is far above that noise (a few
#: 1e-3 here) and below every difference found (the weight decay of norm weights alone moves them by 1.4% of it)
PARAM_RTOL = 1e-2

#: this project's parts -> the release's (register_DPA.py: language_model, vision_tower, aligner)
PARTS = {"language_model": "target", "projector": "aligner", "perceiver_lm": "perceiver_lm",
         "perceiver_vit": "vit_and_merger"}
#: this project's parameter names -> the release's merged layout (the importer's mapping, reversed)
NAMES = (("model.mm_projector.", "model.linear_align_dim."),
         ("model.vision_tower.perceiver.visual.", "model.perceiver.model.vlm.visual."),
         ("model.vision_tower.perceiver.language_model.", "model.perceiver.model.vlm.language_model."),
         ("lm_head.", "model.thinker.lm_head."),
         ("model.", "model.thinker.model."))


def release_name(name: str) -> str:
    for ours, theirs in NAMES:
        if name.startswith(ours):
            return theirs + name[len(ours):]
    raise AssertionError(f"no release name for {name}")


def reference(stage: int) -> dict:
    return json.loads((FIXTURE / f"stage{stage}.json").read_text())


def manifest() -> dict:
    return json.loads((FIXTURE / "manifest.json").read_text())


# ---- this project's runs ------------------------------------------------------------------------------------------
class Recorder:
    """What the reference recorded, recorded here: a global forward hook on the LLaVA model (each micro batch's
    ids, labels and loss) and a global optimizer step pre-hook (each group's learning rate, weight decay and members,
    the gradient norm per part, after clipping). Both are removed when the run ends."""

    def __init__(self):
        self.micro, self.steps, self.names = [], [], {}

    def on_forward(self, module, args, kwargs, output):
        if type(module).__name__.startswith("Llava") and module.training and kwargs.get("labels") is not None:
            self.micro.append({"step": len(self.steps) + 1, "loss": float(output.loss.detach()),
                               "num_items_in_batch": int(kwargs["num_items_in_batch"]),
                               "input_ids": kwargs["input_ids"][0].tolist(), "labels": kwargs["labels"][0].tolist()})
            if not self.names:
                self.names = {id(p): n for n, p in module.named_parameters()}

    def on_step(self, optimizer, args, kwargs):
        groups, squares = [], {}
        for group in optimizer.param_groups:
            part = PARTS[group["name"].removesuffix("_no_decay")]
            for p in group["params"]:
                if p.grad is not None:
                    squares[part] = squares.get(part, 0.0) + float(p.grad.detach().double().pow(2).sum())
            groups.append({"lr": group["lr"], "weight_decay": group["weight_decay"],
                           "names": [release_name(self.names[id(p)]) for p in group["params"]]})
        self.steps.append({"groups": groups, "grad_norm_per_part": {k: v ** 0.5 for k, v in squares.items()}})

    def run(self, argv):
        import torch.nn.modules.module as modules
        import torch.optim.optimizer as optimizers

        from llava_dpa.training.train import train

        hooks = [modules.register_module_forward_hook(self.on_forward, with_kwargs=True),
                 optimizers.register_optimizer_step_pre_hook(self.on_step)]
        try:
            trainer = None

            def call():
                nonlocal trainer
                trainer = train(attn_implementation="flash_attention_2", argv=argv)
            printed = in_process_logged_call(call)
        finally:
            for hook in hooks:
                hook.remove()
        return trainer, printed


def compact(state: dict, rows: list[int]) -> dict:
    """The reference's form of the parameters (save_compact in the recording script): a vocabulary-sized table
    as its rows `rows`, the mean of the others and their largest distance to it."""
    index = torch.tensor(rows)
    out = {}
    for name, value in state.items():
        value = value.detach().float()
        if value.shape[0] == manifest()["model"]["vocab"]:
            others = torch.ones(value.shape[0], dtype=torch.bool)
            others[index] = False
            mean = value[others].mean(0)
            out[name] = value[index].clone()
            out[name + "::other_rows_mean"] = mean
            out[name + "::other_rows_max_deviation"] = (value[others] - mean).abs().max().reshape(1)
        else:
            out[name] = value.clone()
    return out


def import_initial(folder: Path) -> Path:
    """`llava-dpa import-official` of the recorded initial model (the release's merged layout)."""
    from llava_dpa.cli import main

    source = folder / "official"
    source.mkdir()
    shutil.copy(FIXTURE / "initial" / "config.json", source / "config.json")
    (source / "model.safetensors").write_bytes(gzip.decompress((FIXTURE / "initial" / "model.safetensors.gz").read_bytes()))
    configs, tokenizer = FIXTURE / "configs", str(FIXTURE / "tokenizer")
    argv = ["import-official", str(source), "--output", str(folder / "dpa"), "--vit-config", str(configs / "vit"),
            "--perceiver-lm-config", str(configs / "perceiver_lm"), "--target-config", str(configs / "thinker"),
            "--target-tokenizer", tokenizer, "--perceiver-tokenizer", tokenizer]
    in_process_logged_call(lambda: main(argv))
    shutil.rmtree(source)
    return folder / "dpa"


def scaled_flags(stage: int) -> list[str]:
    """The reference's scaled step counts and batch shape (manifest.json); nothing the registry row decides."""
    flags = manifest()["runs"][str(stage)]["flags"]
    keep = ["--max_steps", "--warmup_steps", "--gradient_accumulation_steps", "--per_device_train_batch_size"]
    out = [t for k in keep for t in (k, flags[k])]
    if "--lr_scheduler_kwargs" in flags:
        out += ["--lr_scheduler_kwargs", flags["--lr_scheduler_kwargs"]]
    # no saving between steps, a log line per step, no data loader workers; gradient checkpointing (ms-swift's
    # default) recomputes the same values and is left off here
    return out + ["--save_strategy", "no", "--logging_steps", "1", "--dataloader_num_workers", "0",
                  "--gradient_checkpointing", "False", "--report_to", "none"]


def stage_argv(folder: Path, dpa: Path, stage: int, adapter: Path) -> list[str]:
    import sys

    from llava_dpa.recipes.render import stage_command
    from llava_dpa.recipes.settings import Settings

    # the release's data is LLaVA's json (image, conversations from/value): it is read as it is
    settings = Settings(paths={"qwen3_4b": str(dpa / "thinker"), "official_perceiver": str(dpa / "perceiver"),
                               "stage1_data": str(FIXTURE / "data" / "stage1.json"),
                               "stage2_data": str(FIXTURE / "data" / "stage2.json"),
                               "stage1_images": str(FIXTURE / "images"), "stage2_images": str(FIXTURE / "images"),
                               "checkpoints": str(folder / "checkpoints")},
                        launcher="python", gpus_per_node=1, per_device_batch=1, precision="fp32",
                        dataloader_workers=0, python=sys.executable)
    command = stage_command(ENTRY, stage, settings, scaled_flags(stage) + ["--pretrain_mm_mlp_adapter", str(adapter)])
    return command.argv


def record_run(folder: Path, stage: int, argv: list[str], rows: list[int]) -> None:
    recorder = Recorder()
    trainer, _ = recorder.run(argv)   # what it printed stays out of the test's output
    model = trainer.model
    trainable = {release_name(n): p for n, p in model.named_parameters() if p.requires_grad}
    from safetensors.torch import save_file

    save_file(compact(trainable, rows), str(folder / f"stage{stage}_final.safetensors"))
    # the trainer's own gradient norm before clipping, as logged (both lines keep the float in log_history)
    logged = [{"step": h["step"], "grad_norm": float(h["grad_norm"])} for h in trainer.state.log_history
              if "grad_norm" in h]
    (folder / f"stage{stage}.json").write_text(json.dumps({"micro": recorder.micro, "steps": recorder.steps,
                                                           "logged": logged}))


@pytest.fixture(scope="session")
def official_training(tmp_path_factory) -> Path:
    """The imported initial model, then stage 1 and stage 2 of the registry row, each recorded (read-only)."""
    def build(folder):
        from safetensors import safe_open

        torch.set_num_threads(1)
        dpa = import_initial(folder)
        with safe_open(str(FIXTURE / "stage1_final.safetensors"), "pt") as f:
            rows = json.loads(f.metadata()["rows"])
            aligner = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        record_run(folder, 1, stage_argv(folder, dpa, 1, dpa / "mm_projector.bin"), rows)
        # stage 2 from the release's own stage-1 aligner, as LLaVA's stage-1 projector file
        adapter = folder / "reference_stage1_projector.bin"
        torch.save({k.replace("model.linear_align_dim.", "model.mm_projector."): v for k, v in aligner.items()}, adapter)
        record_run(folder, 2, stage_argv(folder, dpa, 2, adapter), rows)

    return built_once(tmp_path_factory, "official_training", build)


def ours(root: Path, stage: int) -> dict:
    return json.loads((root / f"stage{stage}.json").read_text())


# ---- the comparisons ----------------------------------------------------------------------------------------------
def expanded(micro: dict, grids: list) -> tuple[list[int], list[int]]:
    """LLaVA's ids with each <image> as the release's N + 2 slots (N = the merged patches of that image)."""
    ids, labels, k = [], [], 0
    for token, label in zip(micro["input_ids"], micro["labels"]):
        if token == IMAGE_TOKEN_INDEX:
            t, h, w = grids[k]
            n = t * h * w // 4
            ids += [VISION_START] + [IMAGE_PAD] * n + [VISION_END]
            labels += [-100] * (n + 2)
            k += 1
        else:
            ids.append(token)
            labels.append(label)
    return ids, labels


def trained_tokens(labels: list[int]) -> tuple[int, ...]:
    return tuple(t for t in labels if t != -100)


def first_step_samples(root: Path, stage: int) -> dict:
    """sample id -> (reference sample, reference loss, our micro batch, our loss): matched by the tokens they train
    on (a sampler here hands the samples out in its own order)."""
    ref, mine = reference(stage), ours(root, stage)
    first = [m for m in mine["micro"] if m["step"] == 1]
    by_tokens = {trained_tokens(m["labels"]): m for m in first}
    out = {}
    for sample, loss in zip(ref["samples"], ref["steps"][0]["micro_batch_losses"]):
        m = by_tokens.get(trained_tokens(sample["labels"][0]))
        if m is not None:   # our loss is the sample's token sum over the step's tokens: back to its own mean
            n = sum(1 for t in m["labels"][1:] if t != -100)
            out[sample["id"]] = (sample, loss, m, m["loss"] * m["num_items_in_batch"] / n)
        else:
            out[sample["id"]] = (sample, loss, None, None)
    return out


def close(a: float, b: float, rtol: float) -> bool:
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-30)


def up_to_last_label(ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
    """The positions that reach the loss: under causal attention nothing after the last trained token does (this
    project's Qwen3 template ends the sample with the "\n" after <|im_end|>, untrained; ms-swift's ends at
    <|im_end|>)."""
    last = max(i for i, t in enumerate(labels) if t != -100)
    return ids[:last + 1], labels[:last + 1]


def check_sample_encoding(root: Path, stage: int, sample_id: str) -> None:
    sample, _, m, _ = first_step_samples(root, stage)[sample_id]
    assert m is not None, f"{sample_id}: no sample here trains on the release's tokens {trained_tokens(sample['labels'][0])}"
    ids, labels = up_to_last_label(*expanded(m, sample.get("image_grid_thw") or []))
    ref_ids, ref_labels = up_to_last_label(sample["input_ids"][0], sample["labels"][0])
    assert ids == ref_ids, f"{sample_id} target ids\n here:    {ids}\n release: {ref_ids}"
    assert labels == ref_labels, f"{sample_id} labels\n here:    {labels}\n release: {ref_labels}"


def check_sample_loss(root: Path, stage: int, sample_id: str) -> None:
    _, theirs, m, mine = first_step_samples(root, stage)[sample_id]
    assert m is not None, f"{sample_id}: not trained here on the release's tokens"
    assert abs(mine - theirs) <= LOSS_ATOL, f"{sample_id}: first-step loss {mine:.7f} here, {theirs:.7f} in the release"


def check_steps(root: Path, stage: int) -> None:
    ref, mine = reference(stage), ours(root, stage)
    assert len(mine["steps"]) == len(ref["steps"])
    for step, theirs in enumerate(ref["steps"], start=1):
        loss = sum(m["loss"] for m in mine["micro"] if m["step"] == step)
        assert abs(loss - theirs["loss"]) <= LOSS_ATOL, f"step {step}: loss {loss:.7f} here, {theirs['loss']:.7f} in the release"
        parts = mine["steps"][step - 1]["grad_norm_per_part"]
        assert set(parts) == set(theirs["grad_norm_per_part"]) - {"perceiver_lm_head"}
        for part, norm in theirs["grad_norm_per_part"].items():
            if part != "perceiver_lm_head":   # not trained here (the features never read it); no gradient there
                assert close(parts[part], norm, GRAD_RTOL), f"step {step}: {part} gradient norm {parts[part]:.7g} here, {norm:.7g} in the release"
    logged = mine["logged"]
    assert [h["step"] for h in logged] == [s["step"] for s in ref["steps"]]
    for here, theirs in zip(logged, ref["steps"]):
        assert close(here["grad_norm"], theirs["grad_norm"], GRAD_RTOL), \
            f"step {here['step']}: gradient norm before clipping {here['grad_norm']} here, {theirs['grad_norm']} in the release"


def per_parameter(groups: list[dict], key: str) -> dict:
    return {name: g[key] for g in groups for name in g["names"]}


def check_learning_rates(root: Path, stage: int) -> None:
    """Every parameter's learning rate at every step: the groups' rates and the schedule (warmup from 0)."""
    ref, mine = reference(stage), ours(root, stage)
    members = [g["names"] for g in ref["groups"]]
    for step, (theirs, here) in enumerate(zip(ref["steps"], mine["steps"]), start=1):
        ref_lr = {name: lr for names, lr in zip(members, theirs["lr"]) for name in names}
        for name, lr in per_parameter(here["groups"], "lr").items():
            assert close(lr, ref_lr[name], LR_RTOL) or lr == ref_lr[name] == 0.0, \
                f"step {step}: {name} learning rate {lr} here, {ref_lr[name]} in the release"


def check_weight_decay(root: Path, stage: int) -> None:
    ref, mine = reference(stage), ours(root, stage)
    theirs = per_parameter(ref["groups"], "weight_decay")
    here = per_parameter(mine["steps"][0]["groups"], "weight_decay")
    differ = sorted(n for n in here if here[n] != theirs[n])
    assert not differ, f"weight decay differs for {len(differ)} parameters, e.g. {differ[:4]} " \
                       f"({[here[n] for n in differ[:4]]} here, {[theirs[n] for n in differ[:4]]} in the release)"


def check_trainable(root: Path, stage: int) -> None:
    """The same parameters train (the release's perceiver LM head trains too, but no gradient reaches it)."""
    ref, mine = reference(stage), ours(root, stage)
    here = set(per_parameter(mine["steps"][0]["groups"], "lr"))
    theirs = set(ref["trainable"]) - {n for n in ref["trainable"] if n.startswith("model.perceiver.lm_head.")}
    # the release names the tied target head twice (model.thinker.lm_head and lm_head): one parameter
    theirs = {n for n in theirs if not n.startswith("lm_head.")}
    here = {n for n in here if not n.startswith("model.thinker.lm_head.")}
    assert here == theirs, f"only here: {sorted(here - theirs)[:5]}; only in the release: {sorted(theirs - here)[:5]}"


def check_final_parameters(root: Path, stage: int) -> None:
    """Each tensor's update over the run, here and in the release, from the same initial values (stage 2 starts
    from the initial model with the release's stage-1 aligner: its initial aligner is that aligner)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = FIXTURE / f"stage{stage}_final.safetensors"
    theirs, here = load_file(str(path)), load_file(str(root / f"stage{stage}_final.safetensors"))
    with safe_open(str(path), "pt") as f:
        rows = json.loads(f.metadata()["rows"])
    start = compact(initial_state(), rows)
    if stage == 2:
        start.update({k: v for k, v in load_file(str(FIXTURE / "stage1_final.safetensors")).items()})
    assert set(here) - set(theirs) == set(), f"not in the release's record: {sorted(set(here) - set(theirs))[:4]}"
    worst = []
    for name, value in here.items():
        if name.endswith("::other_rows_max_deviation"):
            continue
        ref_update, our_update = theirs[name] - start[name], value - start[name]
        scale = ref_update.abs().max().item()
        error = (our_update - ref_update).abs().max().item()
        if error > PARAM_RTOL * max(scale, 1e-12):
            worst.append((error / max(scale, 1e-12), name, error, scale))
    worst.sort(reverse=True)
    assert not worst, f"{len(worst)} tensors differ in their update; the worst: " + "; ".join(
        f"{n}: |update here - release| {e:.3g} vs the release's largest {s:.3g}" for _, n, e, s in worst[:4])


@functools.lru_cache(maxsize=1)
def initial_state() -> dict:
    """The recorded initial model's weights (read once: 127 MB unpacked)."""
    from safetensors.torch import load

    return load(gzip.decompress((FIXTURE / "initial" / "model.safetensors.gz").read_bytes()))


# ---- stage 1 -----------------------------------------------------------------------------------------------------
STAGE1_SAMPLES = [s["id"] for s in reference(1)["samples"]]
STAGE2_SAMPLES = [s["id"] for s in reference(2)["samples"]]


@pytest.mark.parametrize("sample_id", STAGE1_SAMPLES)
def test_stage1_sample_encoding(official_training, sample_id):
    check_sample_encoding(official_training, 1, sample_id)


@pytest.mark.parametrize("sample_id", STAGE1_SAMPLES)
def test_stage1_first_step_loss_per_sample(official_training, sample_id):
    check_sample_loss(official_training, 1, sample_id)


def test_stage1_trainable_learning_rates_and_weight_decay(official_training):
    check_trainable(official_training, 1)
    check_learning_rates(official_training, 1)
    check_weight_decay(official_training, 1)


def test_stage1_steps(official_training):
    check_steps(official_training, 1)


def test_stage1_final_parameters(official_training):
    check_final_parameters(official_training, 1)


# ---- stage 2 -----------------------------------------------------------------------------------------------------
# The differences found (docs/official_dpa.md, "Training against the release's own stack"); with the three patched
# out in a scratch run, every stage-2 comparison here holds (losses within 9e-7, updates within 0.6%).
THINK_EVERY_TURN = (
    "the empty think block: ms-swift's qwen3 template gives every assistant turn <think>\\n\\n</think>\\n\\n "
    "(release ms-swift/swift/llm/template/template/utils.py 45-55, qwen.py 61-62; masked by qwen.py 689-692), "
    "the qwen_3 template here only the turn after the last user turn, as Qwen3's chat template does "
    "(llava_dpa/templates.py render_qwen3)")
IMAGE_FIRST = (
    "the image's place: the release keeps <image> where the text has it (ms-swift replaces the tag in place), "
    "llava_dpa/data/dataset.py move_single_placeholder_first opens the turn with it (LLaVA's convention), so the "
    "target and the perceiver here read the question after the image, the release before it")
NORM_DECAY = (
    "weight decay on the 18 RMSNorm weights of the target and the perceiver LM: here (llava_dpa/training/optim.py: "
    "only nn.LayerNorm modules and biases are exempt), not in the release (ms-swift/swift/plugin/optimizer.py 138: "
    "transformers' Trainer.get_decay_parameter_names exempts every name with 'norm')")
STAGE2_XFAIL = {
    "s0": THINK_EVERY_TURN + "; first-step loss -1.85e-3 (11.83496 here, 11.83681 in the release)",
    "s3": THINK_EVERY_TURN + "; and " + IMAGE_FIRST + "; first-step loss -1.43e-2 (11.90858 here, 11.92292 in the "
          "release; the think block alone -6.8e-3, the image's place alone -5.3e-3)",
}


def stage2_samples():
    return [pytest.param(sid, marks=pytest.mark.xfail(strict=True, reason=STAGE2_XFAIL[sid])) if sid in STAGE2_XFAIL
            else sid for sid in STAGE2_SAMPLES]


@pytest.mark.parametrize("sample_id", stage2_samples())
def test_stage2_sample_encoding(official_training, sample_id):
    check_sample_encoding(official_training, 2, sample_id)


@pytest.mark.parametrize("sample_id", stage2_samples())
def test_stage2_first_step_loss_per_sample(official_training, sample_id):
    check_sample_loss(official_training, 2, sample_id)


def test_stage2_trainable_and_learning_rates(official_training):
    check_trainable(official_training, 2)
    check_learning_rates(official_training, 2)


@pytest.mark.xfail(strict=True, reason=NORM_DECAY + "; effect on the loss within fp32 noise over 5 steps at lr 1e-5 "
                                       "(< 6e-7), on the norm weights 3.6e-7, 1.4% of their update")
def test_stage2_weight_decay(official_training):
    check_weight_decay(official_training, 2)


@pytest.mark.xfail(strict=True, reason="every step's loss is 5.59e-3 lower here (11.88370 against 11.88928 at step 1, "
                                       "before any update) through samples s0 and s3: " + THINK_EVERY_TURN + "; " + IMAGE_FIRST)
def test_stage2_steps(official_training):
    check_steps(official_training, 2)


@pytest.mark.xfail(strict=True, reason="83 tensors' updates differ by up to twice the release's largest update: the "
                                       "gradients of samples s0 and s3 (the think block, the image's place) and " + NORM_DECAY)
def test_stage2_final_parameters(official_training):
    check_final_parameters(official_training, 2)
