"""Run by each transformers line's Python on the same checkpoint (tests/test_cross_line.py).

Writes what must not depend on the line: the logits of a fixed image-and-text prompt, the prompt's ids, a
fixed conversation's training ids and labels, and the layout (keys and shapes) the line writes when it
saves the loaded model again.
    python tests/cross_line_probe.py CKPT OUT.pt IMAGE [--model-base BASE]
"""
import argparse
import os
import sys
import tempfile

import torch


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("output")
    parser.add_argument("image")
    parser.add_argument("--model-base", default=None)
    args = parser.parse_args()

    from PIL import Image
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token
    from llava.model.builder import load_pretrained_model
    from safetensors import safe_open

    from llava_dpa.data.preprocess import preprocess

    torch.manual_seed(0)
    tokenizer, model, processor, _ = load_pretrained_model(args.checkpoint, args.model_base, "x", device="cpu")
    version = model.config.conv_version
    conv = conv_templates[version].copy()
    conv.append_message(conv.roles[0], "<image>\nWhat color is the shape?")
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None]
    image = Image.open(args.image).convert("RGB")
    pixels = process_images([image], processor, model.config)
    pixels = pixels.to(model.dtype) if torch.is_tensor(pixels) else [p.to(model.dtype) for p in pixels]
    with torch.no_grad():
        logits = model(input_ids=ids, images=pixels, image_sizes=[image.size]).logits.float()
    source = [{"from": "human", "value": "<image>\nWhat shape is it?"}, {"from": "gpt", "value": "a square"}]
    sample = preprocess([source], tokenizer, conv_templates[version], has_image=True)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        layout = {}
        for name in sorted(os.listdir(folder)):
            if name.endswith(".safetensors"):
                with safe_open(os.path.join(folder, name), framework="pt") as f:
                    layout.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    torch.save({"logits": logits, "prompt_ids": ids, "train_ids": sample["input_ids"][0],
                "train_labels": sample["labels"][0], "layout": layout}, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
