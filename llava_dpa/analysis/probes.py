"""Probe inputs for the analysis tools, and the hidden states a model produces for them.

A probe is one image and one text. Images come from a LLaVA-format data file (its `image` fields, with
the image folder) or from a folder of images; texts are the non-empty lines of a text file, paired with
images in order (cycling when one list is shorter). Each probe is rendered as the model's own user turn,
"<image>\\n<text>", in the checkpoint's template.

Visual tokens are the positions LLaVA scattered image features into, found from the labels it returns
(it marks exactly those positions IGNORE_INDEX), never from a fixed count. Text tokens are the other
positions except the first token (an attention sink) and special tokens (template markers).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from llava_dpa.data.tokenization import IGNORE_INDEX
from llava_dpa.llava_integration.inference import to_model
from llava_dpa.loading import load_pretrained_model
from llava_dpa.templates import resolve_conv_mode

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


class NoVisualTokens(ValueError):
    pass


@dataclass
class Probe:
    image: str
    text: str


def read_probes(images: str, texts: str | None, image_folder: str | None = None, limit: int | None = None,
                seed: int = 0) -> list[Probe]:
    """`images`: a folder of images or a LLaVA json/jsonl file (then `image_folder` resolves its paths).
    `limit` keeps a seeded random subset of that many probes."""
    path = Path(images)
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.is_file():
        rows = ([json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                if path.suffix == ".jsonl" else json.loads(path.read_text()))
        root = Path(image_folder) if image_folder else path.parent
        files = []
        for row in rows:
            image = row.get("image")
            for name in ([image] if isinstance(image, str) else image or []):
                files.append(str(root / name))
    else:
        raise FileNotFoundError(f"{images}: neither an image folder nor a LLaVA data file")
    if not files:
        raise ValueError(f"{images}: no images found (folder images end in {sorted(IMAGE_SUFFIXES)}; "
                         "LLaVA rows need an `image` field)")
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) do not exist, e.g. {missing[0]}; pass --image-folder")
    lines = [""]
    if texts is not None:
        lines = [line.strip() for line in Path(texts).read_text().splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"{texts} holds no text lines")
    count = max(len(files), len(lines))
    probes = [Probe(files[i % len(files)], lines[i % len(lines)]) for i in range(count)]
    if limit is not None and limit < len(probes):
        probes = random.Random(seed).sample(probes, limit)
    return probes


@dataclass
class LanguageModelView:
    """What the tools need of one language model inside a checkpoint: the LLaVA model whose LM is measured,
    its tokenizer, template and image processor."""
    model: object
    tokenizer: object
    conv_mode: str
    image_processor: object
    name: str
    kind: str = "llava"   # "qwen_vl": model is a Qwen-VL perceiver tower, read in its own template


def open_view(checkpoint: str, component: str = "target", model_base: str | None = None, device: str = "cpu",
              conv_mode: str | None = None) -> LanguageModelView:
    """component "target": the checkpoint's LLM; "perceiver": the perceiver VLM inside a DPA checkpoint,
    measured in its own text space (its tokenizer and template)."""
    from llava.conversation import conv_templates


    tokenizer, model, processor, _ = load_pretrained_model(checkpoint, model_base, None, device=device)
    if processor is None:
        raise ValueError(f"{checkpoint} is a plain language model: the analysis needs a VLM checkpoint")
    name = Path(checkpoint).name
    if component == "perceiver":
        tower = model.get_vision_tower()
        if not tower.is_perceiver:
            raise ValueError(f"{checkpoint} has no perceiver (its tower is {type(tower).__name__}); "
                             "--component perceiver needs a DPA checkpoint")
        folder = Path(checkpoint) / "perceiver_tokenizer"
        try:
            tower.attach_tokenizers(tokenizer, perceiver_tokenizer_needed=True, perceiver_tokenizer_dir=str(folder))
        except ValueError as exc:
            raise ValueError(f"{checkpoint}: {exc}; copy the perceiver's tokenizer files into {folder}") from None
        if tower.per_image_features:  # the Qwen-VL perceiver: its own ChatML template, no LLaVA inner model
            return LanguageModelView(tower, tower.perceiver_tokenizer, "qwen_vl", tower.image_processor,
                                     f"{name}:perceiver", kind="qwen_vl")
        inner = tower.perceiver
        mode = resolve_conv_mode(inner.config, conv_mode, conv_templates.keys())
        return LanguageModelView(inner, tower.perceiver_tokenizer, mode, tower.image_processor, f"{name}:perceiver")
    if component != "target":
        raise ValueError(f"component {component!r}: choose target or perceiver")
    mode = resolve_conv_mode(model.config, conv_mode, conv_templates.keys())
    return LanguageModelView(model, tokenizer, mode, processor, name)


@torch.no_grad()
def layer_states(view: LanguageModelView, probe: Probe):
    """(hidden states of layers 1..L, each [T, d], the visual-position mask [T], the text-position mask [T])."""
    from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token
    from PIL import Image


    if view.kind == "qwen_vl":
        return qwen_vl_layer_states(view, probe)
    model = view.model
    conv = conv_templates[view.conv_mode].copy()
    conv.append_message(conv.roles[0], f"{DEFAULT_IMAGE_TOKEN}\n{probe.text}".rstrip())
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), view.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
    ids = ids.to(model.device)
    image = Image.open(probe.image).convert("RGB")
    pixels = to_model(process_images([image], view.image_processor, model.config), model)
    # Every text position gets a label; LLaVA labels the positions it fills with image features IGNORE_INDEX.
    marks = torch.where(ids == IMAGE_TOKEN_INDEX, ids, torch.zeros_like(ids))
    (_, position_ids, attention_mask, _, embeds, labels) = model.prepare_inputs_labels_for_multimodal(
        ids, None, None, None, marks, pixels, [image.size])
    visual = (labels[0] == IGNORE_INDEX).cpu()
    if not visual.any():
        raise NoVisualTokens(f"{probe.image}: the model placed no visual tokens (is its tower loaded and is "
                             "there an <image> in the prompt?)")
    out = model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                output_hidden_states=True, use_cache=False)
    text_ids = ids[0][ids[0] != IMAGE_TOKEN_INDEX].cpu()
    special = set(view.tokenizer.all_special_ids)
    keep_text = torch.tensor([i > 0 and int(t) not in special for i, t in enumerate(text_ids)])
    text = torch.zeros_like(visual)
    text[~visual] = keep_text
    return [h[0].detach().cpu() for h in out.hidden_states[1:]], visual, text


def qwen_vl_layer_states(view: LanguageModelView, probe: Probe):
    """layer_states for the Qwen-VL perceiver: its user turn `<image>\n{text}` in its own template."""
    from PIL import Image

    tower, tokenizer = view.model, view.tokenizer
    image = view.image_processor.preprocess(Image.open(probe.image).convert("RGB"))["pixel_values"][0]
    suffix = tokenizer(f"\n{probe.text}".rstrip() + "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False).input_ids
    states, visual, ids = tower.layer_states(image.to(device=tower.device, dtype=tower.dtype), suffix)
    special = set(tokenizer.all_special_ids) | {tower.spec["vision_start_token_id"], tower.spec["vision_end_token_id"]}
    text = torch.tensor([i > 0 and not visual[i] and t not in special for i, t in enumerate(ids)])
    return states, visual, text


class TokenSample:
    """A seeded uniform sample of at most `size` rows from a stream (Algorithm R)."""

    def __init__(self, size: int, generator: torch.Generator):
        self.size, self.seen, self.rows, self.generator = size, 0, [], generator

    def add(self, rows) -> None:
        for row in rows:
            self.seen += 1
            if len(self.rows) < self.size:
                self.rows.append(row)
            else:
                j = int(torch.randint(self.seen, (1,), generator=self.generator))
                if j < self.size:
                    self.rows[j] = row

    @property
    def exact(self) -> bool:
        return self.seen <= self.size


def probes_from_args(args) -> list[Probe]:
    torch.manual_seed(args.seed)
    return read_probes(args.images, args.texts, args.image_folder, args.num_probes, args.seed)


def views_from_args(args):
    """The (checkpoint, component) views an `analyze mir|cka` command names, opened one at a time."""
    components = args.component or ["target"] * len(args.checkpoint)
    if len(components) != len(args.checkpoint):
        raise ValueError("give --component once per checkpoint, or not at all")
    for checkpoint, component in zip(args.checkpoint, components):
        yield open_view(checkpoint, component, args.model_base, args.device)
