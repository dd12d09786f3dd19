"""In-process training runs: save/reload equality, self-contained towers, anyres, LoRA and QLoRA."""
import shutil

import pytest
import torch
from conftest import TINY_PINPOINTS, tower_folder_weights, train_cmd
from llava.mm_utils import process_images
from llava.model.builder import load_pretrained_model
from PIL import Image

import llava_dpa  # noqa: F401
from llava_dpa.training.train import train


def in_process(cmd):
    """Run the same arguments as the entry point, in this process, and return the trainer."""
    return train(argv=cmd[3:])


def probe_batch(trainer):
    collate = trainer.data_collator
    return collate([trainer.train_dataset[i] for i in (0, 3)])


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], images=batch["images"],
                     image_sizes=batch["image_sizes"]).logits


def test_anyres_stage2_reload_is_self_contained_and_exact(zoo, baseline_stage1, tmp_path, weight_reads):
    vit = tmp_path / "my_clip"
    shutil.copytree(zoo["clip"], vit)
    out = tmp_path / "ckpt"
    trainer = in_process(train_cmd(zoo, out, stage=2, tower=str(vit), extra=[
        "--pretrain_mm_mlp_adapter", str(baseline_stage1 / "mm_projector.bin"), "--max_steps", "3",
        "--image_aspect_ratio", "anyres", "--image_grid_pinpoints", TINY_PINPOINTS, "--mm_patch_merge_type", "spatial_unpad",
        "--unfreeze_mm_vision_tower", "True", "--mm_vision_tower_lr", "1e-2"]))
    model = trainer.model
    batch = probe_batch(trainer)
    # the dataset's anyres tiles are exactly llava's inference-time tiles
    image = Image.open(f"{zoo['images']}/img_000.png").convert("RGB")
    assert torch.equal(trainer.train_dataset[0]["images"][0],
                       process_images([image], model.get_vision_tower().image_processor, model.config)[0])
    assert batch["images"][0].shape[0] > 1 and len(batch["image_sizes"]) == 2
    before = logits(model, batch)
    trained_tower = {k: v.clone() for k, v in model.get_vision_tower().vision_tower.state_dict().items()}

    shutil.rmtree(vit)  # the checkpoint must not need the original ViT folder
    weight_reads.clear()
    tok, reloaded, processor, _ = load_pretrained_model(str(out), None, "anything", device="cpu")
    after = logits(reloaded, batch)
    assert torch.allclose(before, after, atol=1e-5)
    tower = reloaded.get_vision_tower()
    assert not any(read.startswith(str(vit)) for read in weight_reads)  # from the checkpoint, not the (deleted) folder
    reloaded_tower = tower.vision_tower.state_dict()
    assert all(torch.equal(trained_tower[k], reloaded_tower[k]) for k in trained_tower)
    original = tower_folder_weights(zoo["clip"])
    assert any(not torch.equal(original[k], reloaded_tower[k]) for k in reloaded_tower), "the tower did not train"


def test_optimizer_groups_get_their_learning_rates(zoo, baseline_stage1, baseline_stage2, tmp_path):
    """The optimizer the trainer builds for a stage-2 run that names a learning rate per part
    (`DPATrainer.create_optimizer`, what `trainer.train()` calls before the first step), on the session's trained
    baseline: the groups are decided before any step, so nothing is trained here."""
    from llava_dpa.training.resolution import parse_run_config
    from llava_dpa.training.trainability import apply_trainability
    from llava_dpa.training.trainer import DPATrainer

    run = parse_run_config(train_cmd(zoo, tmp_path / "ckpt", stage=2, extra=[
        "--pretrain_mm_mlp_adapter", str(baseline_stage1 / "mm_projector.bin"), "--max_steps", "1",
        "--learning_rate", "1e-5", "--mm_projector_lr", "3e-4", "--unfreeze_mm_vision_tower", "True",
        "--mm_vision_tower_lr", "2e-6", "--lr_scheduler_type", "constant"])[3:])
    _, model, _, _ = load_pretrained_model(str(baseline_stage2), None, "x", device="cpu")
    apply_trainability(model, run)
    optimizer = DPATrainer(run=run, model=model, args=run.training).create_optimizer()
    lrs = {g["name"].replace("_no_decay", ""): g["lr"] for g in optimizer.param_groups}
    assert lrs == {"language_model": 1e-5, "projector": 3e-4, "vision_tower": 2e-6}
    tower_params = {id(p) for p in model.get_vision_tower().parameters()}
    projector_params = {id(p) for p in model.get_model().mm_projector.parameters()}
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # everything trains, each once
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        if group["name"].startswith("vision_tower"):
            assert ids <= tower_params
        elif group["name"].startswith("projector"):
            assert ids <= projector_params
        else:
            assert not ids & (tower_params | projector_params)
        # LayerNorm weights and biases never decay (LLaVA's rule: transformers' get_parameter_names)
        assert group["weight_decay"] == (0.0 if group["name"].endswith("_no_decay") else run.training.weight_decay)


def merged_lora_weights(peft_model, base_folder) -> dict:
    """For every module with LoRA: its weight merged as LoRA defines it, W + (alpha / r) B A, from the base folder's
    weights and the trained adapter in memory (keys as the plain LLaVA model names them)."""
    from safetensors.torch import load_file

    base = load_file(f"{base_folder}/model.safetensors")
    merged = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            key = name.removeprefix("base_model.model.") + ".weight"
            delta = module.lora_B["default"].weight.float() @ module.lora_A["default"].weight.float()
            merged[key] = base[key].float() + module.scaling["default"] * delta
    return merged


def nf4_base(peft_model, base_folder, out):
    """A copy of the base LLM folder holding the weights a QLoRA run computed with: each 4-bit layer's weight
    dequantized by bitsandbytes (its NF4 values, not the original floats)."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit
    from safetensors.torch import load_file, save_file

    shutil.copytree(base_folder, out)
    weights = load_file(f"{out}/model.safetensors")
    quantized = [(n, m) for n, m in peft_model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized, "the QLoRA run has no 4-bit layer"
    for name, module in quantized:
        key = name.removeprefix("base_model.model.").replace(".base_layer", "") + ".weight"
        weights[key] = dequantize_4bit(module.weight.data, module.weight.quant_state).float().contiguous()
    save_file(weights, f"{out}/model.safetensors", metadata={"format": "pt"})
    return out


def qlora_logits(model, batch):
    """The logits as the QLoRA forward computes them, x deq(W)^T: with autograd on. Without it, bitsandbytes' CPU
    inference path repacks the 4-bit weights for a bf16 kernel (on CPUs with AVX512-BF16), another rounding."""
    model.eval()
    with torch.enable_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], images=batch["images"],
                     image_sizes=batch["image_sizes"]).logits.detach()


@pytest.mark.parametrize("bits", [16, 4])
def test_lora_and_qlora_round_trip(zoo, baseline_stage1, tmp_path, bits):
    out = tmp_path / "lora"
    trainer = in_process(train_cmd(zoo, out, stage=2, extra=[
        "--pretrain_mm_mlp_adapter", str(baseline_stage1 / "mm_projector.bin"), "--max_steps", "2",
        "--lora_enable", "True", "--lora_r", "8", "--lora_alpha", "16", "--bits", str(bits),
        "--learning_rate", "1e-2"]))
    peft_model = trainer.model
    lora_names = [n for n, _ in peft_model.named_parameters() if "lora_" in n]
    assert lora_names and not any("vision_tower" in n or "mm_projector" in n for n in lora_names)
    extra = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    assert any("mm_projector" in k for k in extra) and any(".vision_tower." in k for k in extra)
    batch = probe_batch(trainer)
    if bits == 4:  # before any inference forward repacks the 4-bit weights
        nf4 = nf4_base(peft_model, zoo["qwen3_lm"], tmp_path / "nf4_base")
    tok, merged, _, _ = load_pretrained_model(str(out), zoo["qwen3_lm"], "x", device="cpu")
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    # the reload is the trained adapter merged onto the base's full-precision weights, and the trained projector
    state = merged.state_dict()
    expected = merged_lora_weights(peft_model, zoo["qwen3_lm"])
    assert len(expected) == 14  # q, k, v, o, gate, up, down in each of the 2 layers
    for key, weight in expected.items():
        assert torch.allclose(state[key], weight, atol=1e-6), key
    projector = {k.removeprefix("base_model.model."): v for k, v in extra.items() if "mm_projector" in k}
    assert all(torch.equal(state[k], v.float()) for k, v in projector.items())
    if bits == 16:  # merging is exact up to float error
        assert torch.allclose(logits(peft_model, batch), logits(merged, batch), atol=1e-4)
    else:
        # QLoRA trained on the NF4-rounded base: merged onto those very weights, the reload gives the trained model's
        # logits. 2e-3: bitsandbytes' 4-bit matmul rounds through float16 (the quantization state's dtype), measured
        # 2.3e-4 here; a missing adapter or projector moves them by 1e-1.
        _, on_nf4, _, _ = load_pretrained_model(str(out), str(nf4), "x", device="cpu")
        trained = qlora_logits(peft_model, batch)
        assert torch.allclose(trained, logits(on_nf4, batch), atol=2e-3), (trained - logits(on_nf4, batch)).abs().max()
    out_ids = merged.generate(batch["input_ids"][:1, :20], images=batch["images"][:1], image_sizes=batch["image_sizes"][:1],
                              max_new_tokens=3, do_sample=False)
    assert out_ids.shape[0] == 1 and 1 <= out_ids.shape[1] <= 3
