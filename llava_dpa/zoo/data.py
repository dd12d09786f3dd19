"""A small synthetic LLaVA-format dataset: PIL-drawn shapes at varied sizes.

stage1.json: one caption per image (for `--version plain`).
stage2.json: multi-turn questions about one image, a few two-image samples and text-only samples.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
BACKGROUNDS = {"white": (250, 250, 250), "black": (10, 10, 10), "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
SIZES = ((32, 32), (48, 32), (32, 48), (64, 40), (40, 64), (56, 56))
ARITHMETIC = [(a, b) for a in range(1, 6) for b in range(1, 6)]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def draw(shape: str, color: str, background: str, size: tuple[int, int]) -> Image.Image:
    w, h = size
    image = Image.new("RGB", size, BACKGROUNDS[background])
    d = ImageDraw.Draw(image)
    m = min(w, h) // 5
    box = (m, m, w - m, h - m)
    if shape == "circle":
        d.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        d.rectangle(box, fill=COLORS[color])
    else:
        d.polygon([(w // 2, m), (w - m, h - m), (m, h - m)], fill=COLORS[color])
    return image


def corpus_lines() -> list[str]:
    """Text the tiny tokenizers are trained on (the data's words plus chat-template text)."""
    lines = ["Describe the image.", "What color is the shape?", "What shape is it?", "What is the background?",
             "Are the two shapes the same color?", "yes", "no", "Cutting Knowledge Date: December 2023",
             "Today Date: 26 Jul 2024", "system user assistant", "What is", "plus", "The answer is",
             "Hello! How can I help you today?", "<image>"]
    for shape in SHAPES:
        for color in COLORS:
            for bg in BACKGROUNDS:
                lines.append(f"a {color} {shape} on a {bg} background.")
    lines += [f"What is {a} plus {b}? {NUMBER_WORDS[a + b]}" for a, b in ARITHMETIC]
    return lines * 3


def write_dataset(folder: Path, n_images: int = 24, seed: int = 0) -> dict:
    rng = random.Random(seed)
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    meta = []
    for i in range(n_images):
        shape, color, bg = rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(list(BACKGROUNDS))
        size = SIZES[i % len(SIZES)]
        name = f"img_{i:03d}.png"
        draw(shape, color, bg, size).save(images_dir / name)
        meta.append((name, shape, color, bg))

    stage1 = [{"id": f"cap-{i}", "image": name,
               "conversations": [{"from": "human", "value": "<image>\nDescribe the image."},
                                 {"from": "gpt", "value": f"a {color} {shape} on a {bg} background."}]}
              for i, (name, shape, color, bg) in enumerate(meta)]
    stage2 = []
    for i, (name, shape, color, bg) in enumerate(meta):
        stage2.append({"id": f"inst-{i}", "image": name, "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the shape?"}, {"from": "gpt", "value": color},
            {"from": "human", "value": "What shape is it?"}, {"from": "gpt", "value": shape}]})
        if i % 6 == 5:
            other = meta[(i + 1) % len(meta)]
            same = "yes" if other[2] == color else "no"
            stage2.append({"id": f"pair-{i}", "image": [name, other[0]], "conversations": [
                {"from": "human", "value": "<image>\n<image>\nAre the two shapes the same color?"},
                {"from": "gpt", "value": same}]})
        if i % 4 == 3:
            a, b = rng.choice(ARITHMETIC)
            stage2.append({"id": f"text-{i}", "conversations": [
                {"from": "human", "value": f"What is {a} plus {b}?"}, {"from": "gpt", "value": NUMBER_WORDS[a + b]}]})
    # A small local benchmark: short answers (colour) and multiple choice (shape), for offline scoring.
    bench = []
    for i, (name, shape, color, bg) in enumerate(meta):
        bench.append({"question_id": f"color-{i}", "image": name, "text": "What color is the shape?",
                      "answer": color, "type": "short"})
        options = list(SHAPES)
        bench.append({"question_id": f"shape-{i}", "image": name, "type": "mc", "choices": options,
                      "answer": "ABC"[options.index(shape)],
                      "text": "What shape is it?\n" + "\n".join(f"{l}. {o}" for l, o in zip("ABC", options))})
    (folder / "benchmark.jsonl").write_text("\n".join(json.dumps(q) for q in bench) + "\n")
    (folder / "stage1.json").write_text(json.dumps(stage1, indent=1))
    (folder / "stage2.json").write_text(json.dumps(stage2, indent=1))
    return {"images": str(images_dir), "stage1": str(folder / "stage1.json"), "stage2": str(folder / "stage2.json"),
            "benchmark": str(folder / "benchmark.jsonl")}
