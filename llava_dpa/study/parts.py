"""The pretrained parts the study's arms start from, made by the study for its world (they stand in for the
paper's Qwen2.5-VL ViT, Qwen3-4B target and Qwen3-0.6B perceiver LM):

- one tokenizer, shared by both LMs, trained on the world's text as the zoo trains its tokenizers
  (llava_dpa/zoo/tokenizers.py);
- the target LM and the smaller perceiver LM: Qwen3 models built from configs as the zoo builds them
  (llava_dpa/zoo/models.py), at the sizes the options give, each pretrained here as a language model on
  the world's text corpus (world.lm_sample): scenes described in words, questions about described scenes,
  and the capitals (the text-only task) the target must know before any multimodal training;
- the ViT: a Qwen2.5-VL vision encoder (the paper's ViT family) pretrained on the world's `vit` images by
  attribute classification (per grid cell: colour, shape, size or empty), through the project's own tower
  (towers/qwen2_5_vl.py), so it sees pixels exactly as LLaVA's data path will give them. It never sees the
  target or the perceiver LM.

These are the study's own small torch loops: they pretrain components; no arm is trained here (the arms
train through LLaVA's entry points, study/runner.py). `python -m llava_dpa.study.parts {tokenizer,lm,vit,
text-answers} ...` runs one of them as its own process (the runner's jobs).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

from llava_dpa.study import world as W
from llava_dpa.text_path import export_language_model
from llava_dpa.towers.options import TowerOptions
from llava_dpa.towers.qwen2_5_vl import Qwen2_5_VLTower
from llava_dpa.zoo.tokenizers import qwen3_style_tokenizer

CHAT_TEXT = ["system user assistant", "<image>", "Describe the image.",
             "Do the two images have the same number of objects?", "yes", "no"]


# ---- the tokenizer --------------------------------------------------------------------------------------------
def tokenizer_corpus(seed: int = 0, samples: int = 4000) -> list[str]:
    """Text the shared tokenizer is trained on: every word of the world (captions, questions, answers,
    stories) and the chat-template text."""
    rng = random.Random(seed)
    lines = list(CHAT_TEXT)
    for _ in range(samples):
        sample = W.lm_sample(rng)
        lines.append(sample.get("text") or " ".join(m["content"] for m in sample["messages"]))
    lines += [" ".join(W.capital_question(country, city, kind)) for country, city in W.CAPITALS for kind in W.TEXT_TYPES]
    return lines


def build_tokenizer(output: str | Path, vocab_size: int = 1024):
    tokenizer = qwen3_style_tokenizer(tokenizer_corpus(), vocab_size=vocab_size)
    tokenizer.save_pretrained(output)
    return tokenizer


# ---- the language models --------------------------------------------------------------------------------------
def new_qwen3(tokenizer, folder: str | Path, width: int, layers: int, seed: int) -> None:
    """A randomly initialised Qwen3 LM as llava_dpa/zoo/models.tiny_qwen3 builds one, `width` wide and `layers`
    deep (heads of 32 wide at most, half as many key-value heads)."""
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    heads = max(2, width // 32)
    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=3 * width,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                         head_dim=width // heads, max_position_embeddings=4096, tie_word_embeddings=True,
                         rope_theta=1_000_000.0, bos_token_id=None,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
                                               bos_token_id=None)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def render_sample(tokenizer, sample: dict) -> str:
    """A corpus sample as the LM reads it: plain text, or chat turns through the tokenizer's own template
    (for Qwen3: what LLaVA's qwen_3 template renders, llava_dpa/templates.py)."""
    if "text" in sample:
        return sample["text"]
    return tokenizer.apply_chat_template(sample["messages"], tokenize=False, enable_thinking=False)


def _batch(tokenizer, texts: list[str]) -> dict:
    enc = tokenizer(texts, add_special_tokens=True, padding=True, return_tensors="pt", return_token_type_ids=False)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "labels": labels}


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def pretrain_lm(folder: str | Path, steps: int, batch: int, lr: float, seed: int, log=print) -> list[float]:
    """Language-model pretraining of the LM in `folder` on the world's corpus (in place); the loss per step."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine(s, steps, max(1, steps // 20)))
    rng = random.Random(seed)
    losses, start = [], time.time()
    for step in range(steps):
        texts = [render_sample(tokenizer, W.lm_sample(rng)) for _ in range(batch)]
        loss = model(**_batch(tokenizer, texts)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log(f"[lm] {Path(folder).name} step {step + 1}/{steps} loss {loss.item():.3f} ({time.time() - start:.0f} s)")
    model.save_pretrained(folder)
    return losses


@torch.no_grad()
def text_answers(model_folder: str | Path, questions: str | Path, answers: str | Path, batch: int = 32,
                 max_new_tokens: int = 6) -> None:
    """Greedy answers of a plain language model (a pretrained LM, or a checkpoint's target LLM written by
    `llava-dpa export-llm`) to a question file, each question a user turn in the tokenizer's chat template, as
    model_vqa_loader's answers file ({question_id, text}); `llava-dpa score` scores it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32).eval()
    rows = [json.loads(line) for line in Path(questions).read_text().splitlines() if line.strip()]
    out = []
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q["text"]}], tokenize=False,
                                                 add_generation_prompt=True, enable_thinking=False) for q in chunk]
        enc = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt", return_token_type_ids=False)
        generated = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)
        for q, ids in zip(chunk, generated[:, enc.input_ids.shape[1]:]):
            out.append({"question_id": q["question_id"], "text": tokenizer.decode(ids, skip_special_tokens=True).strip()})
    Path(answers).parent.mkdir(parents=True, exist_ok=True)
    Path(answers).write_text("".join(json.dumps(a) + "\n" for a in out))


# ---- the ViT --------------------------------------------------------------------------------------------------
VIT_PATCH, VIT_MERGE = 4, 2


def new_vit(folder: str | Path, image_size: int, width: int, depth: int, out_width: int, seed: int) -> None:
    """A randomly initialised Qwen2.5-VL vision encoder (ViT + 2x2 patch merger) as zoo/models.py builds its tiny
    one: patches of 4 pixels, attention windows of one grid cell, full attention in every other block."""
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import (
        Qwen2_5_VLVisionConfig,
    )
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        Qwen2_5_VisionTransformerPretrainedModel,
    )

    unit = VIT_PATCH * VIT_MERGE
    if image_size % (2 * unit):
        raise ValueError(f"--image-size {image_size}: the ViT needs a multiple of {2 * unit} (two grid cells of whole "
                         f"{VIT_PATCH}-pixel patches merged {VIT_MERGE}x{VIT_MERGE})")
    torch.manual_seed(seed)
    config = Qwen2_5_VLVisionConfig(depth=depth, hidden_size=width, intermediate_size=2 * width,
                                    num_heads=max(2, width // 16), in_channels=3, patch_size=VIT_PATCH,
                                    spatial_merge_size=VIT_MERGE, temporal_patch_size=2, window_size=image_size // 2,
                                    fullatt_block_indexes=list(range(1, depth, 2)), out_hidden_size=out_width)
    Qwen2_5_VisionTransformerPretrainedModel._from_config(config).save_pretrained(folder)
    (Path(folder) / "preprocessor_config.json").write_text(json.dumps({"tile_size": image_size}))


def _vit_tower(folder: str | Path):
    return Qwen2_5_VLTower(TowerOptions(vision_tower=str(folder), mm_vision_select_layer=-1))


def _cell_targets(objects: list[dict]) -> list[tuple[int, int, int]]:
    """Per cell: (colour, shape, size) class, 0 meaning empty."""
    cells = [(0, 0, 0)] * 4
    for o in objects:
        cells[o["cell"]] = (list(W.COLORS).index(o["color"]) + 1, W.SHAPES.index(o["shape"]) + 1,
                            W.SIZES.index(o["size"]) + 1)
    return cells


def _cell_pool(features: torch.Tensor) -> torch.Tensor:
    """[N, g*g, d] merged tokens (row-major) -> [N, 4, d]: the mean of each 2x2-grid cell's tokens."""
    n, tokens, d = features.shape
    g = int(round(tokens ** 0.5))
    grid = features.reshape(n, 2, g // 2, 2, g // 2, d)
    return grid.mean(dim=(2, 4)).reshape(n, 4, d)


def pretrain_vit(folder: str | Path, world_manifest: dict, steps: int, batch: int, lr: float, seed: int,
                 log=print) -> dict:
    """Attribute classification on the world's `vit` images through the project's tower; saves the encoder back
    into `folder`. Returns the loss per step and the held-out accuracy per attribute (the last tenth of the
    images, never trained on)."""
    from PIL import Image

    torch.manual_seed(seed)
    tower = _vit_tower(folder)
    encoder = tower.vision_tower
    encoder.requires_grad_(True)
    encoder.train()
    rows = json.loads(Path(world_manifest["vit"]).read_text())
    images = [Image.open(Path(world_manifest["images"]) / r["image"]).convert("RGB") for r in rows]
    pixels = tower.image_processor.preprocess(images, return_tensors="pt")["pixel_values"]
    targets = torch.tensor([_cell_targets(r["objects"]) for r in rows])          # [N, 4, 3]
    held = max(1, len(rows) // 10)
    train_idx = torch.arange(len(rows) - held)
    d = tower.hidden_size
    heads = torch.nn.ModuleList([torch.nn.Linear(d, len(W.COLORS) + 1), torch.nn.Linear(d, len(W.SHAPES) + 1),
                                 torch.nn.Linear(d, len(W.SIZES) + 1)])
    params = list(encoder.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine(s, steps, max(1, steps // 20)))
    generator = torch.Generator().manual_seed(seed)
    losses, start = [], time.time()
    for step in range(steps):
        idx = train_idx[torch.randint(len(train_idx), (batch,), generator=generator)]
        pooled = _cell_pool(tower.encode(pixels[idx]))
        loss = sum(torch.nn.functional.cross_entropy(head(pooled).flatten(0, 1), targets[idx][..., k].flatten())
                   for k, head in enumerate(heads))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log(f"[vit] step {step + 1}/{steps} loss {loss.item():.3f} ({time.time() - start:.0f} s)")
    encoder.eval()
    with torch.no_grad():
        pooled = _cell_pool(tower.encode(pixels[-held:]))
        accuracy = {name: (head(pooled).argmax(-1) == targets[-held:][..., k]).float().mean().item()
                    for k, (name, head) in enumerate(zip(("color", "shape", "size"), heads))}
    encoder.save_pretrained(folder)
    return {"losses": losses, "held_out_accuracy": accuracy, "held_out_images": held}


# ---- as a process (the runner's jobs) -------------------------------------------------------------------------
#: what each part's process needs (one parser: the study's steps are this module's own processes, not subcommands)
NEEDS = {"lm": ("tokenizer", "output", "width", "layers", "steps"), "vit": ("world", "output", "width", "depth",
                                                                         "out_width", "steps"),
         "text-answers": ("questions",)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llava_dpa.study.parts",
                                     description="one pretraining or answering step of `llava-dpa study`")
    parser.add_argument("part", choices=sorted(NEEDS), help="lm: build and pretrain one LM; vit: build and pretrain "
                                                            "the ViT; text-answers: greedy answers to the text task")
    parser.add_argument("--tokenizer", help="lm: the shared tokenizer's folder")
    parser.add_argument("--world", help="vit: the world's world.json")
    parser.add_argument("--output", help="the part's folder")
    parser.add_argument("--width", type=int)
    parser.add_argument("--layers", type=int, help="lm: its layers")
    parser.add_argument("--depth", type=int, help="vit: its blocks")
    parser.add_argument("--out-width", type=int, help="vit: its merger's output width")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch", type=int, default=None, help="default: 32 (lm), 64 (vit)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text-questions", default=None, help="lm: then answer these (the text task) ...")
    parser.add_argument("--text-answers", default=None, help="lm: ... into this answers file")
    parser.add_argument("--questions", help="text-answers: the question file")
    parser.add_argument("--model", action="append", default=[], help="PLAIN_LM_FOLDER=ANSWERS_FILE (repeatable)")
    parser.add_argument("--checkpoint", action="append", default=[],
                        help="CHECKPOINT=LLM_FOLDER=ANSWERS_FILE: its target LLM written by export-llm's text path, "
                             "then answered (repeatable)")
    args = parser.parse_args(argv)
    missing = [f"--{n.replace('_', '-')}" for n in NEEDS[args.part] if getattr(args, n) is None]
    if missing:
        parser.error(f"{args.part} needs {', '.join(missing)}")
    torch.set_num_threads(1)  # one core per job: the runner runs as many jobs as there are cores

    if args.part == "lm":
        from transformers import AutoTokenizer

        out = Path(args.output)
        tmp = out.with_name(out.name + ".tmp")
        new_qwen3(AutoTokenizer.from_pretrained(args.tokenizer), tmp, args.width, args.layers, args.seed)
        losses = pretrain_lm(tmp, args.steps, args.batch or 32, args.lr, args.seed)
        (tmp / "pretraining.json").write_text(json.dumps({"losses": losses, "steps": args.steps, "batch": args.batch or 32,
                                                          "lr": args.lr, "seed": args.seed}))
        if args.text_questions:  # the target's text ability before any multimodal training
            text_answers(tmp, args.text_questions, args.text_answers)
        tmp.rename(out)
    elif args.part == "vit":
        manifest = json.loads(Path(args.world).read_text())
        out = Path(args.output)
        tmp = out.with_name(out.name + ".tmp")
        new_vit(tmp, manifest["spec"]["image_size"], args.width, args.depth, args.out_width, args.seed)
        result = pretrain_vit(tmp, manifest, args.steps, args.batch or 64, args.lr, args.seed)
        (tmp / "pretraining.json").write_text(json.dumps({**result, "steps": args.steps, "batch": args.batch or 64,
                                                          "lr": args.lr, "seed": args.seed}))
        print(f"[vit] held-out attribute accuracy {result['held_out_accuracy']}")
        tmp.rename(out)
    else:
        for item in args.checkpoint:
            checkpoint, llm, answers = item.split("=")
            if not (Path(llm) / "config.json").is_file():
                export_language_model(checkpoint, llm)
            text_answers(llm, args.questions, answers)
        for item in args.model:
            model, answers = item.split("=")
            text_answers(model, args.questions, answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
