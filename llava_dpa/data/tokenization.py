"""Tokenize prompts that contain `<image>` placeholders.

llava's tokenizer_image_token tokenizes each chunk with the tokenizer's default special tokens and
strips a BOS from later chunks. With templates whose text already starts with the BOS string (Llama 3)
that yields two BOS tokens; here BOS is added only when the tokenizer adds one by default and the text
does not already carry it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer

IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100
DEFAULT_IMAGE_TOKEN = "<image>"


def tokenizer_adds_bos(tokenizer) -> bool:
    cached = getattr(tokenizer, "_llava_dpa_adds_bos", None)
    if cached is None:
        bos = tokenizer.bos_token_id
        cached = bos is not None and tokenizer("a").input_ids[:1] == [bos]
        try:
            tokenizer._llava_dpa_adds_bos = cached
        except AttributeError:
            pass
    return cached


def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX, return_tensors=None):
    ids: list[int] = []
    if tokenizer_adds_bos(tokenizer) and not prompt.startswith(tokenizer.bos_token):
        ids.append(tokenizer.bos_token_id)
    for i, chunk in enumerate(prompt.split(DEFAULT_IMAGE_TOKEN)):
        if i:
            ids.append(image_token_index)
        if chunk:
            ids.extend(tokenizer(chunk, add_special_tokens=False).input_ids)
    if return_tensors is None:
        return ids
    if return_tensors == "pt":
        return torch.tensor(ids, dtype=torch.long)
    raise ValueError(f"Unsupported tensor type: {return_tensors}")


class TokenizationMismatch(ValueError):
    pass


def encode_with_targets(text: str, spans: list[tuple[int, int]], tokenizer):
    """Token ids of `text` (with IMAGE_TOKEN_INDEX for placeholders) and labels that keep exactly the
    tokens starting inside `spans`. The ids equal a whole-string tokenization of the text, so they match
    the tokenizer's chat template; a token crossing a span boundary raises TokenizationMismatch."""
    ids, labels = [], []
    if tokenizer_adds_bos(tokenizer) and not text.startswith(tokenizer.bos_token):
        ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE_INDEX)
    pos = 0
    for i, chunk in enumerate(text.split(DEFAULT_IMAGE_TOKEN)):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
            labels.append(IGNORE_INDEX)
            pos += len(DEFAULT_IMAGE_TOKEN)
        if chunk:
            enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
            for tok, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
                start, end = start + pos, end + pos
                inside = False
                for a, b in spans:
                    if start < a < end or start < b < end:
                        raise TokenizationMismatch(
                            f"token {tokenizer.convert_ids_to_tokens(tok)!r} at chars {start}-{end} crosses the "
                            f"boundary of an assistant reply ({a}-{b})")
                    if a <= start < b:
                        inside = True
                ids.append(tok)
                labels.append(tok if inside else IGNORE_INDEX)
        pos += len(chunk)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def load_tokenizer(folder, **kwargs):
    """AutoTokenizer, reading a tokenizer that the other transformers line saved. transformers 5 writes a
    generic fast tokenizer as `tokenizer_class: TokenizersBackend` and its added special tokens as a list
    named `extra_special_tokens`; 4.57 has no such class and calls that list `additional_special_tokens`.
    Under 4.x both are translated; the tokenizer.json itself is the same on both lines."""
    import transformers

    config_path = Path(folder) / "tokenizer_config.json"
    if transformers.__version__.startswith("4.") and config_path.is_file():
        config = json.loads(config_path.read_text())
        if isinstance(config.get("extra_special_tokens"), list):
            kwargs.setdefault("additional_special_tokens", config["extra_special_tokens"])
            kwargs["extra_special_tokens"] = {}
        if config.get("tokenizer_class") == "TokenizersBackend":
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(folder, **kwargs)
    return AutoTokenizer.from_pretrained(folder, **kwargs)
