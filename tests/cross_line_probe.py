"""Run by each transformers line's Python, once, on the checkpoints of tests/test_cross_line.py.

For each checkpoint it writes what must not depend on the line: the logits of a fixed image-and-text prompt, the
prompt's ids, a fixed conversation's training ids and labels, the layout (keys and shapes) the line writes when it
saves the loaded model again, and a two-turn greedy chat as llava.serve.cli runs it (each turn's prompt ids, its
generated tokens and the logits of every step). With --follow OTHER.pt (the other line's probe of the same
checkpoints) it also re-runs that probe's chat on this line, teacher-forced: each turn's logits on the other line's
prompt and generated tokens, so every turn compares on one shared history even where the two lines' own greedy
chats part at a near-tie.
    python tests/cross_line_probe.py OUT.pt IMAGE [--follow OTHER.pt] NAME=CHECKPOINT[,BASE] ...
"""
import os
import sys
import tempfile

import torch

QUESTIONS = ("What color is the shape?", "What shape is it?")


def chat(model, tokenizer, version, pixels, image_size):
    from llava.conversation import SeparatorStyle, conv_templates
    from llava.mm_utils import KeywordsStoppingCriteria, tokenizer_image_token

    from llava_dpa.llava_integration.inference import decode_reply

    conv = conv_templates[version].copy()
    turns = []
    for turn, question in enumerate(QUESTIONS):
        conv.append_message(conv.roles[0], ("<image>\n" if turn == 0 else "") + question)
        conv.append_message(conv.roles[1], None)
        ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None]
        stop = conv.sep if conv.sep_style != SeparatorStyle.TWO else conv.sep2
        with torch.no_grad():
            out = model.generate(ids, images=pixels, image_sizes=[image_size], do_sample=False, max_new_tokens=6,
                                 use_cache=True, stopping_criteria=[KeywordsStoppingCriteria([stop], tokenizer, ids)],
                                 output_logits=True, return_dict_in_generate=True)
        conv.messages[-1][-1] = decode_reply(tokenizer, out.sequences, ids)
        turns.append({"prompt_ids": ids[0], "tokens": out.sequences[0, -len(out.logits):].tolist(),
                      "logits": torch.stack([step[0].float() for step in out.logits])})
    return turns


def forced(model, pixels, image_size, turns):
    """Each turn's next-token logits at every generated position, the other line's prompt and tokens fed whole."""
    out = []
    for turn in turns:
        prompt, tokens = turn["prompt_ids"].reshape(1, -1), torch.tensor([turn["tokens"]], dtype=torch.long)
        ids = torch.cat([prompt, tokens[:, :-1]], dim=1)
        with torch.no_grad():
            # the image placeholder became the image's features: the last len(tokens) positions predict the tokens
            logits = model(input_ids=ids, images=pixels, image_sizes=[image_size]).logits[0, -tokens.shape[1]:]
        out.append(logits.float())
    return out


def probe(checkpoint, base, image_path, follow=None):
    from PIL import Image
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token
    from llava.model.builder import load_pretrained_model
    from safetensors import safe_open

    from llava_dpa.data.preprocess import preprocess

    torch.manual_seed(0)
    tokenizer, model, processor, _ = load_pretrained_model(checkpoint, base, "x", device="cpu")
    version = model.config.conv_version
    conv = conv_templates[version].copy()
    conv.append_message(conv.roles[0], "<image>\nWhat color is the shape?")
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None]
    image = Image.open(image_path).convert("RGB")
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
    result = {"logits": logits, "prompt_ids": ids, "train_ids": sample["input_ids"][0],
              "train_labels": sample["labels"][0], "layout": layout,
              "chat": chat(model, tokenizer, version, pixels, image.size)}
    if follow is not None:
        result["forced"] = forced(model, pixels, image.size, follow["chat"])
    return result


def main() -> int:
    output, image, *specs = sys.argv[1:]
    followed = {}
    if specs[:1] == ["--follow"]:
        followed = torch.load(specs[1], weights_only=True)
        specs = specs[2:]
    results = {}
    for spec in specs:
        name, paths = spec.split("=", 1)
        checkpoint, _, base = paths.partition(",")
        results[name] = probe(checkpoint, base or None, image, followed.get(name))
    torch.save(results, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
