"""The processor of a llava-dpa model exported for transformers (`llava-dpa export-hf`).

Remote code: this file is copied into the exported folder and imports only torch and transformers.
From chat messages (`apply_chat_template`, images as {"type": "image", "image": PIL image or path}) or from a
prompt holding `<image>`, it builds what the LLaVA path builds:
- the target's ids: the checkpoint's template (qwen_3 / llama_3) rendered with `<image>` where each image goes,
  each text chunk between images tokenized on its own (as LLaVA's tokenizer_image_token does), and every
  `<image>` replaced by as many placeholder ids as the image has features;
- the images' pixels: tiles through the tower's own image processor class, or whole images at native
  resolution (Qwen2-VL's smart resize) cut into patches;
- the perceiver's own sequences, from the target's ids: for the LLaVA-format perceiver with its instruction
  context, its prefix and the question of the turn holding the image (re-encoded with the perceiver's
  tokenizer); for the Qwen-VL-native perceiver, one sequence per sample: its prefix, then per image the text
  before it, <|vision_start|>, N image pads, <|vision_end|>.
"""
from __future__ import annotations

import json
import math
import os
import re

import torch
import transformers
from transformers import AutoTokenizer, BatchFeature

PROCESSOR_FILE = "processor_config.json"
PERCEIVER_TOKENIZER = "perceiver_tokenizer"
IMAGE_TOKEN = "<image>"
_ROLE = re.compile(r"^\s*(user|human|USER|Human)\s*:?\s*", flags=re.DOTALL)


def load_tokenizer(folder: str, trust_remote_code=None):
    """AutoTokenizer; under transformers 4.x, a tokenizer that 5.x saved (class `TokenizersBackend`, added
    special tokens listed as `extra_special_tokens`) is read as the generic fast tokenizer it is.
    `trust_remote_code` is the caller's: AutoTokenizer on 5.x reads the folder's config.json (whose auto_map names
    the remote code) and, not told, asks on the terminal whether to run it."""
    kwargs = {"trust_remote_code": trust_remote_code}
    path = os.path.join(folder, "tokenizer_config.json")
    if transformers.__version__.startswith("4.") and os.path.isfile(path):
        with open(path) as f:
            config = json.load(f)
        if isinstance(config.get("extra_special_tokens"), list):
            kwargs["additional_special_tokens"] = config["extra_special_tokens"]
            kwargs["extra_special_tokens"] = {}
        if config.get("tokenizer_class") == "TokenizersBackend":
            from transformers import PreTrainedTokenizerFast

            kwargs.pop("trust_remote_code")
            return PreTrainedTokenizerFast.from_pretrained(folder, **kwargs)
    return AutoTokenizer.from_pretrained(folder, **kwargs)


def _load_image(image):
    if isinstance(image, str):
        from transformers.image_utils import load_image

        image = load_image(image)
    return image.convert("RGB")


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image of {width}x{height}: an aspect ratio above 200 cannot be read at native resolution")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


class LlavaDpaProcessor:
    """Tokenizer(s) and image preprocessing of an exported llava-dpa model; `settings` is processor_config.json."""

    def __init__(self, tokenizer, settings: dict, perceiver_tokenizer=None):
        self.tokenizer = tokenizer
        self.settings = dict(settings)
        self.perceiver_tokenizer = perceiver_tokenizer
        self.image_token_id = int(settings["image_token_id"])
        self.image_settings = settings["image"]
        self.perceiver = settings.get("perceiver") or {}
        self.chat_template = getattr(tokenizer, "chat_template", None)
        self._tile_processor = None

    # ---- loading and saving -------------------------------------------------------------------------------
    @classmethod
    def register_for_auto_class(cls, auto_class="AutoProcessor"):
        pass

    @classmethod
    def from_pretrained(cls, folder, **kwargs):
        folder = str(folder)
        trust = kwargs.get("trust_remote_code")
        if os.path.isdir(folder):
            with open(os.path.join(folder, PROCESSOR_FILE)) as f:
                settings = json.load(f)
            perceiver_dir = os.path.join(folder, PERCEIVER_TOKENIZER)
            perceiver = load_tokenizer(perceiver_dir, trust) if os.path.isdir(perceiver_dir) else None
            return cls(load_tokenizer(folder, trust), settings, perceiver)
        # a Hub repository: its files through transformers' own cache
        from transformers.utils import cached_file

        hub = {k: kwargs[k] for k in ("revision", "token", "cache_dir") if k in kwargs}
        with open(cached_file(folder, PROCESSOR_FILE, **hub)) as f:
            settings = json.load(f)
        perceiver = None
        if cached_file(folder, f"{PERCEIVER_TOKENIZER}/tokenizer_config.json", **hub,
                       _raise_exceptions_for_missing_entries=False):
            perceiver = AutoTokenizer.from_pretrained(folder, subfolder=PERCEIVER_TOKENIZER, trust_remote_code=trust,
                                                      **hub)
        return cls(AutoTokenizer.from_pretrained(folder, trust_remote_code=trust, **hub), settings, perceiver)

    def save_pretrained(self, folder, **kwargs):
        os.makedirs(folder, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        if self.perceiver_tokenizer is not None:
            self.perceiver_tokenizer.save_pretrained(os.path.join(folder, PERCEIVER_TOKENIZER))
        with open(os.path.join(folder, PROCESSOR_FILE), "w") as f:
            json.dump(self.settings, f, indent=1)

    # ---- text ---------------------------------------------------------------------------------------------
    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tokenize: bool = True,
                            return_dict: bool = True, return_tensors: str = "pt", images=None, **kwargs):
        """Render chat messages with the checkpoint's template; with `tokenize`, also process the images the
        messages hold ({"type": "image", "image": ...}, in order) or `images`. One conversation or a list (padded on
        `padding_side`, the tokenizer's by default)."""
        padding_side = kwargs.pop("padding_side", None)
        batched = bool(messages) and isinstance(messages[0], (list, tuple))
        conversations = messages if batched else [messages]
        texts, found = [], []
        for conversation in conversations:
            texts.append(self.tokenizer.apply_chat_template(conversation, tokenize=False,
                                                            add_generation_prompt=add_generation_prompt, **kwargs))
            for message in conversation:
                content = message.get("content")
                if isinstance(content, list):
                    for part in content:
                        if part.get("type") == "image":
                            found.append(part.get("image", part.get("url", part.get("path"))))
        if not tokenize:
            return texts if batched else texts[0]
        images = images if images is not None else [image for image in found if image is not None]
        if len(images) != sum(text.count(IMAGE_TOKEN) for text in texts):
            raise ValueError(f"the messages hold {sum(t.count(IMAGE_TOKEN) for t in texts)} images but {len(images)} "
                             f"image inputs were found; give each image part an 'image' (a PIL image or a path)")
        out = self(text=texts, images=images or None, return_tensors=return_tensors, padding_side=padding_side)
        return out if return_dict else out["input_ids"]

    def _tokenize_with_images(self, text: str) -> list[int]:
        """LLaVA's tokenizer_image_token: BOS when the tokenizer adds one and the text does not carry it, each
        chunk between images tokenized alone, an image as -1 (expanded later)."""
        tok = self.tokenizer
        ids = []
        bos = tok.bos_token_id
        if bos is not None and tok("a").input_ids[:1] == [bos] and not text.startswith(tok.bos_token):
            ids.append(bos)
        for i, chunk in enumerate(text.split(IMAGE_TOKEN)):
            if i:
                ids.append(-1)
            if chunk:
                ids.extend(tok(chunk, add_special_tokens=False).input_ids)
        return ids

    # ---- images -------------------------------------------------------------------------------------------
    def _tiles(self, images) -> torch.Tensor:
        s = self.image_settings
        if self._tile_processor is None:
            cls = getattr(transformers, s["processor_class"])
            self._tile_processor = cls(**s["processor"])
            if s.get("crop_size") and getattr(self._tile_processor, "crop_size", None) is None:
                self._tile_processor.crop_size = s["crop_size"]
        processor = self._tile_processor
        return processor(images, return_tensors="pt")["pixel_values"]

    def _native(self, images):
        """Whole images: smart resize (bicubic), [0, 1], normalised, cut into Qwen2-VL's patch order."""
        s = self.image_settings
        p, m, t = s["patch_size"], s["merge_size"], s["temporal_patch_size"]
        factor = p * m
        mean = torch.tensor(s["image_mean"], dtype=torch.float32)
        std = torch.tensor(s["image_std"], dtype=torch.float32)
        patches, grids = [], []
        for image in images:
            h, w = smart_resize(image.size[1], image.size[0], factor, s["min_pixels"], s["max_pixels"])
            resized = image.resize((w, h), resample=3)  # PIL's BICUBIC
            pixels = torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8).view(h, w, 3)
            x = ((pixels.to(torch.float64) * (1 / 255)).to(torch.float32) - mean) / std
            x = x.permute(2, 0, 1)
            gh, gw = h // p, w // p
            x = x.unsqueeze(0).expand(t, 3, h, w).reshape(t, 3, gh // m, m, p, gw // m, m, p)
            patches.append(x.permute(2, 5, 3, 6, 1, 0, 4, 7).reshape(gh * gw, 3 * t * p * p))
            grids.append([1, gh, gw])
        return torch.cat(patches), torch.tensor(grids, dtype=torch.long)

    def tokens_per_image(self, grids) -> list[int]:
        s = self.image_settings
        extra = int(self.settings.get("extra_tokens_per_image", 0))
        if s["mode"] == "native":
            m = s["merge_size"]
            return [int(g[1] * g[2]) // (m * m) + extra for g in grids.tolist()]
        return None

    # ---- the perceiver's sequences ------------------------------------------------------------------------
    def _turn_start(self, ids: list[int], pos: int) -> int:
        ends = set(self.perceiver["turn_end_ids"])
        return max((i for i in range(pos) if ids[i] in ends), default=-1) + 1

    def _instruction_contexts(self, rows: list[list[int]]) -> list[list[int]]:
        """LLaVA-format perceiver with its instruction context: per image, its prefix and the text of the user turn
        holding it (the target's tokens decoded, the role name dropped), re-encoded with its own tokenizer."""
        ends = set(self.perceiver["turn_end_ids"])
        prefix = list(self.perceiver["prefix_ids"])
        contexts = []
        for ids in rows:
            for pos in [i for i, t in enumerate(ids) if t == -1]:
                start = self._turn_start(ids, pos)
                end = next((i for i in range(pos, len(ids)) if ids[i] in ends), len(ids))
                text = self.tokenizer.decode([t for t in ids[start:end] if t >= 0], skip_special_tokens=True)
                text = _ROLE.sub("", text, count=1).strip()
                extra = self.perceiver_tokenizer(text + "\n", add_special_tokens=False).input_ids if text else []
                contexts.append(prefix + extra)
        return contexts

    def _qwen_vl_rows(self, rows: list[list[int]], counts: list[int]) -> list[list[int]]:
        """Qwen-VL-native perceiver: one sequence per sample that holds images."""
        p = self.perceiver
        image_pad = p["image_pad_id"]
        out, image = [], 0
        slot_ids = set(p.get("target_slot_ids", []))
        for row, ids in enumerate(rows):
            if slot_ids & set(ids):
                raise ValueError(f"sample {row}: its text already holds image slot tokens; write <image> (or an image "
                                 f"part in the messages) where the image goes")
            where = [i for i, t in enumerate(ids) if t == -1]
            if not where:
                continue
            seq = list(p["prefix_ids"])
            for k, pos in enumerate(where):
                if k == 0:
                    start = self._turn_start(ids, pos)
                    segment = ids[start:pos]
                    text = self.tokenizer.decode(segment, skip_special_tokens=True) if segment else ""
                    text = _ROLE.sub("", text, count=1).lstrip() if text else ""
                else:
                    segment = ids[where[k - 1] + 1:pos]
                    text = self.tokenizer.decode(segment, skip_special_tokens=False) if segment else ""
                if text:
                    seq += self.perceiver_tokenizer(text, add_special_tokens=False).input_ids
                n = counts[image] - (0 if p.get("visual_positions_only") else 2)
                seq += [p["vision_start_id"]] + [image_pad] * n + [p["vision_end_id"]]
                image += 1
            out.append(seq)
        return out

    # ---- the call -----------------------------------------------------------------------------------------
    def __call__(self, text=None, images=None, return_tensors="pt", padding_side: str | None = None, **kwargs):
        texts = [text] if isinstance(text, str) else list(text)
        if images is not None and not isinstance(images, (list, tuple)):
            images = [images]
        images = [_load_image(image) for image in (images or [])]
        rows = [self._tokenize_with_images(t) for t in texts]
        n_images = sum(r.count(-1) for r in rows)
        if n_images != len(images):
            raise ValueError(f"the text holds {n_images} {IMAGE_TOKEN} placeholders for {len(images)} images")
        data = {}
        counts = []
        if images:
            if self.image_settings["mode"] == "native":
                data["pixel_values"], data["image_grid_thw"] = self._native(images)
                counts = self.tokens_per_image(data["image_grid_thw"])
            else:
                data["pixel_values"] = self._tiles(images)
                counts = [int(self.image_settings["tokens_per_image"])] * len(images)
            kind = self.perceiver.get("kind")
            if kind == "llava_perceiver" and self.perceiver.get("instruction_context"):
                contexts = self._instruction_contexts(rows)
                data.update(self._padded(contexts, side="left"))
            elif kind == "qwen_vl_perceiver":
                data.update(self._padded(self._qwen_vl_rows(rows, counts), side="right",
                                         pad=self.perceiver["image_pad_id"]))
        expanded, image = [], 0
        for ids in rows:
            row = []
            for t in ids:
                if t == -1:
                    row += [self.image_token_id] * counts[image]
                    image += 1
                else:
                    row.append(t)
            expanded.append(row)
        side = padding_side or getattr(self.tokenizer, "padding_side", "right") or "right"
        if side not in ("left", "right"):
            raise ValueError(f"padding_side {side!r}: pad on the 'left' (for batched generation) or the 'right'")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        text_data = self._padded(expanded, side=side, pad=pad)
        data["input_ids"], data["attention_mask"] = text_data["perceiver_input_ids"], text_data["perceiver_attention_mask"]
        return BatchFeature(data=data, tensor_type=None)

    @staticmethod
    def _padded(rows: list[list[int]], side: str, pad: int = 0) -> dict:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if side == "left":
                ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
                mask[i, width - len(r):] = 1
            else:
                ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
                mask[i, :len(r)] = 1
        return {"perceiver_input_ids": ids, "perceiver_attention_mask": mask}

    # ---- decoding -----------------------------------------------------------------------------------------
    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


__all__ = ["LlavaDpaProcessor"]
