"""`make demo`: train tiny models through LLaVA's own entry points and chat with them, on a CPU.

1. builds the tiny offline zoo (tokenizer, LMs, ViT, synthetic data);
2. trains a LLaVA-NeXT baseline, a perceiver VLM (the same pipeline on a second small LM) and the DPA
   model whose --vision_tower is that perceiver; each model's stage 1 and stage 2 are trained with `python -m llava.train.train_mem` (the unmodified
   LLaVA entry point), showing progress;
3. reloads each trained checkpoint and holds a two-turn chat about an image with `python -m llava.serve.cli`;
4. prints a side-by-side table: parameters, time per stage, final loss per stage.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PY = sys.executable
PINPOINTS = "[(32, 64), (64, 32), (64, 64)]"
QUESTIONS = ["What color is the shape?", "What shape is it?"]


@dataclass
class Recipe:
    name: str
    lm: str
    vision_tower: str
    version: str = "qwen_3"
    stage2_extra: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    loss: dict = field(default_factory=dict)
    params: int = 0


def stream(cmd: list[str], log: Path) -> None:
    """Run a command, showing its progress lines, keeping the full output in `log`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            f.write(line)
            for piece in line.rstrip("\n").split("\r"):
                if "it/s]" in piece or "s/it]" in piece:
                    print("\r    " + piece.strip()[-78:], end="", flush=True)
        print()
        if proc.wait() != 0:
            tail = log.read_text()[-3000:]
            raise SystemExit(f"command failed: {' '.join(cmd)}\n{tail}\n(full log: {log})")


def final_loss(output: Path) -> float:
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h][-1]


def train_stage(recipe: Recipe, stage: int, zoo: dict, out: Path) -> Path:
    folder = out / f"{recipe.name}-stage{stage}"
    common = ["--model_name_or_path", recipe.lm, "--vision_tower", recipe.vision_tower, "--output_dir", str(folder),
              "--image_folder", zoo["images"], "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-1",
              "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
              "--image_aspect_ratio", "anyres", "--image_grid_pinpoints", PINPOINTS, "--mm_patch_merge_type", "spatial_unpad",
              "--per_device_train_batch_size", "4", "--dataloader_num_workers", "0", "--model_max_length", "1024",
              "--save_strategy", "no", "--logging_steps", "5", "--report_to", "none", "--seed", "0",
              "--lr_scheduler_type", "cosine", "--weight_decay", "0.01"]
    if stage == 1:
        args = ["--version", "plain", "--data_path", zoo["stage1_data"], "--tune_mm_mlp_adapter", "True",
                "--learning_rate", "1e-3", "--num_train_epochs", "3"]
    else:
        args = ["--version", recipe.version, "--data_path", zoo["stage2_data"],
                "--pretrain_mm_mlp_adapter", str(out / f"{recipe.name}-stage1" / "mm_projector.bin"),
                "--learning_rate", "3e-3", "--num_train_epochs", "25", "--warmup_ratio", "0.05"] + recipe.stage2_extra
    print(f"  stage {stage}: python -m llava.train.train_mem ... (log: {folder}.log)")
    start = time.time()
    stream([PY, "-m", "llava.train.train_mem", *common, *args], Path(f"{folder}.log"))
    recipe.seconds[stage] = time.time() - start
    recipe.loss[stage] = final_loss(folder)
    return folder


def chat(model_path: Path, image: str) -> list[dict]:
    proc = subprocess.run([PY, "-m", "llava.serve.cli", "--model-path", str(model_path), "--image-file", image,
                           "--device", "cpu", "--temperature", "0", "--max-new-tokens", "8", "--debug"],
                          input="\n".join(QUESTIONS) + "\n\n", capture_output=True, text=True,
                          env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    if proc.returncode != 0:
        raise SystemExit(f"llava.serve.cli failed:\n{proc.stderr[-3000:]}")
    return [ast.literal_eval(m) for m in re.findall(r"^ (\{'prompt'.*\}) $", proc.stdout, flags=re.M)]


def count_parameters(model_path: Path) -> int:
    """Parameters stored in a checkpoint (tied embeddings are stored once)."""
    import math

    from safetensors import safe_open

    with safe_open(str(model_path / "model.safetensors"), framework="pt") as f:
        return sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())


def recipes(zoo: dict, out: Path) -> list[Recipe]:
    """The models the demo trains, in order. Later recipes use earlier outputs: the perceiver is the
    baseline pipeline run on a second small LM, and DPA differs from the baseline only in --vision_tower."""
    return [
        Recipe("baseline", zoo["qwen3_lm"], zoo["qwen2_5_vl_vit"]),
        Recipe("perceiver", zoo["qwen3_lm_b"], zoo["qwen2_5_vl_vit"]),
        Recipe("dpa", zoo["qwen3_lm"], str(out / "perceiver-stage2"), stage2_extra=["--mm_vision_tower_lr", "2e-4"]),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="demo_output")
    args = parser.parse_args(argv)
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)

    import llava_dpa  # noqa: F401  (fails early, with instructions, if llava is not patched)
    from llava_dpa.zoo import build_zoo

    print(f"[1/3] building the tiny offline zoo in {out / 'zoo'}")
    zoo = build_zoo(out / "zoo")
    image = f"{zoo['images']}/img_000.png"
    transcripts = {}
    todo = recipes(zoo, out)
    for i, recipe in enumerate(todo):
        print(f"[2/3] training {recipe.name} ({i + 1}/{len(todo)}): vision tower {recipe.vision_tower}")
        train_stage(recipe, 1, zoo, out)
        final = train_stage(recipe, 2, zoo, out)
        recipe.params = count_parameters(final)
        print(f"  reloading {final} and chatting through llava.serve.cli")
        transcripts[recipe.name] = chat(final, image)

    print(f"\n[3/3] results (image: {image})\n")
    header = f"{'model':<12} {'params':>9} {'stage-1 s':>10} {'stage-2 s':>10} {'stage-1 loss':>13} {'stage-2 loss':>13}"
    print(header)
    print("-" * len(header))
    for r in todo:
        print(f"{r.name:<12} {r.params:>9,} {r.seconds[1]:>10.1f} {r.seconds[2]:>10.1f} {r.loss[1]:>13.3f} {r.loss[2]:>13.3f}")
    for name, turns in transcripts.items():
        print(f"\n{name}: two-turn chat")
        for question, turn in zip(QUESTIONS, turns):
            print(f"  user: {question}\n  assistant: {turn['outputs']}")
        if len(turns) == 2:
            kept = turns[0]["outputs"] in turns[1]["prompt"]
            print(f"  (the second turn's prompt holds the first answer: {kept})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
