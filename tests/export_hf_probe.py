"""Load an `llava-dpa export-hf` folder with transformers alone and record what it computes.

Run as a script, by either transformers line's Python, in a process where neither `llava` nor `llava_dpa`
can be imported (any import of them raises here):
    python tests/export_hf_probe.py EXPORT OUT.pt IMAGE_A IMAGE_B
For each case of `cases()` it writes the processor's input_ids, the fp32 logits of the prompt, the greedy
tokens of `generate` with the KV cache, and the greedy tokens computed without a cache (one full forward per
token), all after one call that asked for the target's hidden states (their count is written too).
tests/test_export_hf.py compares them with the LLaVA path's.
It also runs the batched path: the first two cases (one image; two images and a longer text) as one batch, padded
on the left and on the right, each row's logits at its real tokens; and the labels path on that batch (labels: its
ids, -100 on padding and image placeholders), the model's loss with and without a token count
(`num_items_in_batch`, as the Trainer passes it), which the test recomputes from the logits.
"""
from __future__ import annotations

import importlib.abc
import sys

NEW_TOKENS = 6


class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("llava", "llava_dpa"):
            raise ImportError(f"{name} must not be imported by an exported model")


def cases(image_a, image_b):
    """(name, messages): one image, two images in one turn, and a second turn after an answer."""
    return [
        ("single", [{"role": "user", "content": [{"type": "image", "image": image_a},
                                                 {"type": "text", "text": "What color is the shape?"}]}]),
        ("multi_image", [{"role": "user", "content": [{"type": "text", "text": "Look: "},
                                                      {"type": "image", "image": image_a},
                                                      {"type": "text", "text": "and then "},
                                                      {"type": "image", "image": image_b},
                                                      {"type": "text", "text": "Which one is larger?"}]}]),
        ("multi_turn", [{"role": "user", "content": [{"type": "image", "image": image_a},
                                                     {"type": "text", "text": "What color is the shape?"}]},
                        {"role": "assistant", "content": "red"},
                        {"role": "user", "content": [{"type": "text", "text": "And its shape?"}]}]),
    ]


def probe(folder, image_a, image_b):
    import torch
    import transformers
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dtype_arg = "torch_dtype" if transformers.__version__.startswith("4.") else "dtype"
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, **{dtype_arg: torch.float32})
    model.eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    results = {"version": transformers.__version__, "class": type(model).__name__}
    # First a call that asks for the target's hidden states, as a user may: on transformers 5 that installs output
    # hooks through the called model's submodules, and what the vision side computes afterwards must not change
    first = dict(processor.apply_chat_template(cases(image_a, image_b)[0][1], add_generation_prompt=True))
    with torch.no_grad():
        results["hidden_states"] = len(model(**first, output_hidden_states=True).hidden_states)
    for name, messages in cases(image_a, image_b):
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        inputs = dict(inputs)
        with torch.no_grad():
            logits = model(**inputs).logits[0].float()
            cached = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True)
            prompt = inputs["input_ids"].shape[1]
            ids, uncached = inputs["input_ids"], []
            for _ in range(NEW_TOKENS):
                step = dict(inputs, input_ids=ids, attention_mask=torch.ones_like(ids))
                token = model(**step).logits[0, -1].argmax().item()
                uncached.append(token)
                ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        results[name] = {"input_ids": inputs["input_ids"][0], "logits": logits,
                         "cached": cached[0, prompt:].tolist(), "uncached": uncached,
                         "text": processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)}
    results["batch"] = batched(model, processor, [messages for _, messages in cases(image_a, image_b)[:2]])
    return results


def batched(model, processor, conversations) -> dict:
    import torch

    out = {}
    for side in ("left", "right"):
        inputs = dict(processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, padding_side=side))
        mask = inputs["attention_mask"].bool()
        labels = inputs["input_ids"].masked_fill(~mask | (inputs["input_ids"] == model.config.image_token_id), -100)
        with torch.no_grad():
            result = model(**inputs, labels=labels)
            counted = model(**inputs, labels=labels, num_items_in_batch=torch.tensor(7)).loss
        out[side] = {"input_ids": [ids[m] for ids, m in zip(inputs["input_ids"], mask)],
                     "logits": [row[m].float() for row, m in zip(result.logits, mask)], "mask": inputs["attention_mask"],
                     "all_logits": result.logits.float(), "labels": labels, "loss": result.loss.float(),
                     "loss_of_7_items": counted.float()}
    return out


def main(argv):
    sys.meta_path.insert(0, _Refuse())
    import torch

    folder, out, image_a, image_b = argv
    torch.save(probe(folder, image_a, image_b), out)


if __name__ == "__main__":
    main(sys.argv[1:])
