"""`make demo`: train tiny models through LLaVA's own entry points and chat with them, on a CPU.

1. builds the tiny offline zoo (tokenizer, LMs, ViT, synthetic data);
2. trains three entries of the paper's registry (llava_dpa/recipes/paper.py) on tiny models: the
   LLaVA-NeXT baseline, the perceiver VLM (the same pipeline on a second small LM) and the DPA model whose
   --vision_tower is that perceiver; each stage's command comes from the registry (with the tiny-model
   overrides of llava_dpa/zoo/recipes.py) and runs `python -m llava.train.train_mem` (the unmodified LLaVA
   entry point), showing progress;
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

from llava_dpa.recipes.paper import get
from llava_dpa.recipes.render import stage_command, tower_path
from llava_dpa.zoo import build_zoo
from llava_dpa.zoo.recipes import tiny_flags, tiny_settings

PY = sys.executable
QUESTIONS = ["What color is the shape?", "What shape is it?"]
# What the demo changes in the tiny recipes so each model learns the synthetic questions in a few minutes.
DEMO_FLAGS = {1: ["--learning_rate", "1e-3", "--num_train_epochs", "3", "--logging_steps", "5"],
              2: ["--learning_rate", "3e-3", "--num_train_epochs", "25", "--warmup_ratio", "0.05",
                  "--lr_scheduler_type", "cosine", "--logging_steps", "5"]}


@dataclass
class DemoRun:
    name: str                  # what the table calls it
    entry: str                 # the registry entry
    stage2_extra: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    loss: dict = field(default_factory=dict)
    params: int = 0


def stream(cmd: list[str], log: Path) -> None:
    """Run a command, showing its progress lines, keeping the full output in `log`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    log.parent.mkdir(parents=True, exist_ok=True)
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


def train_stage(run: DemoRun, stage: int, settings) -> Path:
    extra = tiny_flags(stage) + DEMO_FLAGS[stage] + (run.stage2_extra if stage == 2 else [])
    command = stage_command(run.entry, stage, settings, extra)
    print(f"  stage {stage} ({run.entry}): python -m llava.train.train_mem ... (log: {command.output}.log)")
    start = time.time()
    stream(command.command, Path(f"{command.output}.log"))
    run.seconds[stage] = time.time() - start
    run.loss[stage] = final_loss(command.output)
    return command.output


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


def demo_runs() -> list[DemoRun]:
    """The registry entries the demo trains, in order: DPA reads the perceiver's output, and differs from the
    baseline only in its vision tower."""
    return [DemoRun("baseline", "llava-next-qwen3-4b"), DemoRun("perceiver", "perceiver-qwen3-0.6b"),
            DemoRun("dpa", "dpa-qwen3-4b", stage2_extra=["--mm_vision_tower_lr", "2e-4"])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="demo_output")
    args = parser.parse_args(argv)
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)


    print(f"[1/3] building the tiny offline zoo in {out / 'zoo'}")
    zoo = build_zoo(out / "zoo")
    settings = tiny_settings(zoo, out / "checkpoints")
    image = f"{zoo['images']}/img_000.png"
    transcripts = {}
    todo = demo_runs()
    for i, run in enumerate(todo):
        print(f"[2/3] training {run.name} ({i + 1}/{len(todo)}): vision tower {tower_path(get(run.entry), settings)}")
        train_stage(run, 1, settings)
        final = train_stage(run, 2, settings)
        run.params = count_parameters(final)
        print(f"  reloading {final} and chatting through llava.serve.cli")
        transcripts[run.name] = chat(final, image)

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
