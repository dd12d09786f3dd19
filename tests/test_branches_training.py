"""Training and loading branches checked against an independent reference: a stage-1 run and a LoRA run stopped
after a checkpoint resume as if never stopped (the session's uninterrupted runs are the reference); a stage-1
(projector-only) checkpoint reloads onto its base LLM as the model trained in memory; `--lora_bias all | lora_only`
trains and saves the biases PEFT's own `get_peft_model_state_dict` names; `load_8bit` quantizes the target's layers
only and keeps its logits within int8 rounding."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

from conftest import tower_folder_weights, train_cmd
from llava_dpa.loading import CheckpointError, load_pretrained_model
from llava_dpa.recipes.render import merge_flags
from llava_dpa.training.errors import RunConfigError
from llava_dpa.training.saving import NON_LORA_NAME
from llava_dpa.training.train import train
from llava_dpa.training.trainer import DPATrainer


class Stopped(Exception):
    pass


class StopAtStep(TrainerCallback):
    """Leaves `train()` at the end of step N, before that step's checkpoint is written and with nothing saved after
    it: tests/hooked_train.py's KILL_AT_STEP (a killed process), in this process."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Stopped(f"stopped at step {self.step}")


def stopped_at(monkeypatch, step: int, argv: list[str]) -> None:
    """`train(argv)`, stopped at the end of `step`."""
    init = DPATrainer.__init__

    def with_stop(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(StopAtStep(step))

    with monkeypatch.context() as patched:
        patched.setattr(DPATrainer, "__init__", with_stop)
        with pytest.raises(Stopped):
            train(argv=argv)


def rerun_of(reference, out, *flags) -> tuple[list[str], int]:
    """The argv a finished run recorded (run_config.json), writing to `out` with a checkpoint after every step;
    and its number of steps."""
    recorded = json.loads((reference / "run_config.json").read_text())["argv"]
    argv = merge_flags(recorded, ["--output_dir", str(out), "--save_strategy", "steps", "--save_steps", "1", *flags])
    return argv, int(argv[argv.index("--max_steps") + 1])


def logged_losses(folder) -> dict[int, float]:
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


def assert_same_losses(reference, out, steps: int) -> None:
    ref, got = logged_losses(reference), logged_losses(out)
    assert sorted(got) == sorted(ref) == list(range(1, steps + 1))
    for step in ref:
        assert abs(ref[step] - got[step]) < 1e-4, (step, ref[step], got[step])


def assert_same_tensors(a: dict, b: dict, atol=1e-6) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=atol), key


def batch_logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], images=batch["images"],
                     image_sizes=batch["image_sizes"]).logits


def probe_batch(trainer):
    return trainer.data_collator([trainer.train_dataset[i] for i in (0, 3)])


def test_a_stage1_run_resumes_as_if_uninterrupted_and_its_projector_reloads(zoo, baseline_stage1, tmp_path,
                                                                             monkeypatch, capsys):
    """baseline_stage1 (3 steps, uninterrupted) is the reference. Its command, stopped after step 2 with only
    checkpoint-1 written, then run again, resumes from checkpoint-1 (the projector, Adam's moments, the schedule, the
    data order and the RNG): the same losses and the same projector. The stage-1 output (mm_projector.bin and the
    config) loads onto the base LLM (`--model-base`) as the model trained in memory."""
    out = tmp_path / "stage1"
    argv, steps = rerun_of(baseline_stage1, out)
    stopped_at(monkeypatch, 2, argv)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert (out / "checkpoint-1" / "mm_projector.bin").is_file() and not (out / "mm_projector.bin").exists()
    capsys.readouterr()
    trainer = train(argv=argv)
    assert f"resuming from {out / 'checkpoint-1'}" in capsys.readouterr().out
    assert_same_losses(baseline_stage1, out, steps)
    assert_same_tensors(torch.load(baseline_stage1 / "mm_projector.bin", weights_only=True),
                        torch.load(out / "mm_projector.bin", weights_only=True))

    # the projector-only layout: refused without its base LLM, naming the flag; with it, the in-memory model
    with pytest.raises(CheckpointError, match="projector-only .* pass model_base \\(--model-base\\)"):
        load_pretrained_model(str(out), None, "x", device="cpu")
    _, reloaded, _, _ = load_pretrained_model(str(out), zoo["qwen3_lm"], "x", device="cpu")
    batch = probe_batch(trainer)
    assert torch.allclose(batch_logits(trainer.model, batch), batch_logits(reloaded, batch), atol=1e-5)


@pytest.mark.xdist_group("dpa_adapters")
def test_a_lora_run_resumes_with_what_trains_beside_the_adapter(dpa_adapters, tmp_path, monkeypatch, capsys):
    """The session's DPA LoRA run (uninterrupted) is the reference: its projector and perceiver train in full beside
    the adapter. Stopped at its last step and run again, it resumes from the checkpoint before, whose
    non_lora_trainables.bin restores them: the same losses, adapter and non-LoRA weights. A checkpoint without that
    file is refused by name (it would restart them from their initial weights)."""
    from safetensors.torch import load_file

    reference, _ = dpa_adapters[16]
    out = tmp_path / "lora"
    argv, steps = rerun_of(reference, out)
    stopped_at(monkeypatch, steps, argv)
    checkpoint = out / f"checkpoint-{steps - 1}"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [checkpoint.name]
    beside = torch.load(checkpoint / NON_LORA_NAME, weights_only=True)
    assert any(".mm_projector." in k for k in beside) and any(".perceiver.model.layers." in k for k in beside)
    assert not any("lora_" in k for k in beside)

    (checkpoint / NON_LORA_NAME).rename(tmp_path / NON_LORA_NAME)
    with pytest.raises(RunConfigError, match=f"{checkpoint} has no {NON_LORA_NAME}: the parameters that train besides"):
        train(argv=argv)
    (tmp_path / NON_LORA_NAME).rename(checkpoint / NON_LORA_NAME)
    capsys.readouterr()
    train(argv=argv)
    assert f"resuming from {checkpoint}" in capsys.readouterr().out
    assert_same_losses(reference, out, steps)
    assert_same_tensors(load_file(reference / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors"))
    assert_same_tensors(torch.load(reference / NON_LORA_NAME, weights_only=True),
                        torch.load(out / NON_LORA_NAME, weights_only=True))


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_lora_bias_trains_and_saves_the_biases_peft_names(zoo, baseline_stage1, tmp_path, bias):
    """LoRA on the target and on the CLIP tower, whose linear layers have biases. PEFT's own
    `get_peft_model_state_dict` on the trained model is the reference for what the adapter file holds; the biases
    that train are those --lora_bias names (inside the parts under LoRA) and the projector's (which trains in full);
    the checkpoint reloads onto its base LLM as the trained model."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    out = tmp_path / bias
    trainer = train(argv=train_cmd(zoo, out, stage=2, extra=[
        "--pretrain_mm_mlp_adapter", str(baseline_stage1 / "mm_projector.bin"), "--max_steps", "2",
        "--lora_enable", "True", "--lora_r", "8", "--lora_alpha", "16", "--learning_rate", "1e-2",
        "--lora_bias", bias, "--lora_parts", "language_model", "vision_tower", "--unfreeze_mm_vision_tower", "True",
        "--mm_vision_tower_lr", "1e-2"])[3:])
    model = trainer.model
    saved = load_file(out / "adapter_model.safetensors")
    reference = get_peft_model_state_dict(model)
    assert saved.keys() == reference.keys()
    assert all(torch.equal(saved[k], reference[k].cpu()) for k in saved)

    saved_biases = {k for k in saved if k.endswith(".bias")}
    layer_biases = {k for k in saved_biases if k.endswith(".base_layer.bias")}  # of the layers with adapters
    assert len(layer_biases) == 12  # q, k, v, out, fc1, fc2 in each of CLIP's 2 layers
    if bias == "lora_only":
        assert saved_biases == layer_biases
    else:  # every bias of the model: the towers' LayerNorms and the projector's too
        assert any("layer_norm" in k for k in saved_biases) and any("mm_projector" in k for k in saved_biases)
    projector_biases = {n for n, _ in model.named_parameters() if ".mm_projector." in n and n.endswith(".bias")}
    trained_biases = {n for n, p in model.named_parameters() if p.requires_grad and n.endswith(".bias")}
    assert trained_biases == saved_biases | projector_biases
    # and they trained: the first layer's (read by the features, -2 selects it) moved from the tower folder's
    original = tower_folder_weights(zoo["clip"])
    moved = [k for k in layer_biases if ".layers.0." in k and not torch.equal(
        saved[k], original[k.split("vision_tower.vision_tower.", 1)[1].replace(".base_layer", "")])]
    assert len(moved) == 6, moved

    batch = probe_batch(trainer)
    _, merged, _, _ = load_pretrained_model(str(out), zoo["qwen3_lm"], "x", device="cpu")
    assert torch.allclose(batch_logits(model, batch), batch_logits(merged, batch), atol=1e-4)


def image_question(model, tokenizer, processor, zoo) -> dict:
    """One question about one image in the checkpoint's template: the forward's arguments."""
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token
    from PIL import Image

    image = Image.open(f"{zoo['images']}/img_001.png").convert("RGB")
    conv = conv_templates[model.config.conv_version].copy()
    conv.append_message(conv.roles[0], "<image>\nWhat colour is the shape?")
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None]
    return {"input_ids": ids, "images": process_images([image], processor, model.config), "image_sizes": [image.size]}


def test_load_8bit_quantizes_the_target_only_and_keeps_its_logits(zoo, baseline_stage2):
    """`load_8bit` (the serving scripts' --load-8bit) on CPU: bitsandbytes' int8 layers replace exactly the target's
    decoder linears (the projector, the tower and the LM head stay full precision: llm_int8_skip_modules), and the
    logits stay within int8 rounding of the full-precision model's."""
    import bitsandbytes as bnb

    tokenizer, full, processor, _ = load_pretrained_model(str(baseline_stage2), None, "x", device="cpu")
    _, q8, _, _ = load_pretrained_model(str(baseline_stage2), None, "x", device="cpu", load_8bit=True)
    assert q8.config.quantization_config.load_in_8bit
    decoder = {n for n, m in full.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")}
    quantized = {n for n, m in q8.named_modules() if isinstance(m, bnb.nn.Linear8bitLt)}
    assert decoder and quantized == decoder
    inputs = image_question(full, tokenizer, processor, zoo)
    with torch.no_grad():
        reference, got = full(**inputs).logits, q8(**inputs).logits
    # LLM.int8 rounds each weight to 1/127 of its row's largest (outliers above 6 stay in float16): here 1.1% of the
    # largest logit; 3% allowed. A quantized projector or tower would fail the layer check above.
    assert (got - reference).abs().max() <= 0.03 * reference.abs().max()
