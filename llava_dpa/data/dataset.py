"""LLaVA-format supervised dataset and collator with multi-image samples, anyres tiles and bad-sample
handling.

A bad sample (missing or corrupt image, placeholder/image mismatch, too long, malformed turns) raises
SampleError naming the sample. With `--strict_data True` that stops training; by default the sample is
skipped, a warning names it, and the count is logged as `skipped_samples`.
"""
from __future__ import annotations

import copy
import json
import logging
import multiprocessing
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from llava_dpa.data.anyres import parse_pinpoints, process_anyres_image
from llava_dpa.data.preprocess import preprocess
from llava_dpa.data.tokenization import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava_dpa.data.tower_features import TowerFeatures

logger = logging.getLogger("llava_dpa.data")


class SampleError(ValueError):
    pass


@dataclass(frozen=True)
class DataSpec:
    """What the dataset needs to turn a LLaVA record into model inputs, held by the dataset (the
    conversation template included: LLaVA's global `default_conversation` is never read)."""
    conversation: object                      # a llava.conversation.Conversation template
    image_folder: Optional[str] = None
    image_aspect_ratio: str = "square"
    image_grid_pinpoints: Optional[list] = None
    image_processor: object = None
    tokens_per_image: int = 0
    tokens_for: Optional[Callable] = None     # (width, height) -> visual tokens, for towers that read whole images
    mm_use_im_start_end: bool = False
    strict: bool = False
    perceiver_aux: object = None              # perceiver.aux_loss.PerceiverAuxData when the auxiliary loss is on
    feature_cache: object = None              # data.feature_cache.FeatureCacheReader: features instead of pixels

    @property
    def is_multimodal(self) -> bool:
        return self.image_processor is not None


def load_records(data_path: str) -> list[dict]:
    if not os.path.isfile(data_path):
        raise FileNotFoundError(f"--data_path {data_path} does not exist")
    with open(data_path) as f:
        if data_path.endswith(".jsonl"):
            return [json.loads(line) for line in f if line.strip()]
        return json.load(f)


def image_files_of(sample: dict) -> list[str]:
    image = sample.get("image")
    if image is None:
        return []
    return list(image) if isinstance(image, (list, tuple)) else [image]


def expand2square(pil_img, background_color):
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


def process_image(image, processor, spec: DataSpec):
    mode = spec.image_aspect_ratio
    if mode == "anyres":
        return process_anyres_image(image, processor, spec.image_grid_pinpoints)
    if mode == "pad":
        image = expand2square(image, tuple(int(x * 255) for x in processor.image_mean))
    elif mode not in ("square", "native", None):  # native: the processor keeps the image whole
        raise ValueError(f"unknown --image_aspect_ratio {mode!r}; use square, pad, anyres or native")
    return processor.preprocess(image, return_tensors="pt")["pixel_values"][0]


def move_single_placeholder_first(conversations, mm_use_im_start_end: bool):
    """LLaVA's convention for one-image samples: the placeholder opens its turn."""
    from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN

    for turn in conversations:
        if DEFAULT_IMAGE_TOKEN in turn["value"]:
            turn["value"] = DEFAULT_IMAGE_TOKEN + "\n" + turn["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
        if mm_use_im_start_end:
            turn["value"] = turn["value"].replace(
                DEFAULT_IMAGE_TOKEN, DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN)
    return conversations


class LazySupervisedDataset(Dataset):
    def __init__(self, data_path: str, tokenizer, spec: DataSpec):
        super().__init__()
        self.data_path = data_path
        self.list_data_dict = load_records(data_path)
        self.tokenizer = tokenizer
        self.spec = spec
        self.strict = spec.strict
        # Shared with DataLoader worker processes so the trainer can log the total.
        self._skipped = multiprocessing.Value("i", 0)

    @property
    def skipped(self) -> int:
        return self._skipped.value

    def __len__(self):
        return len(self.list_data_dict)

    @property
    def lengths(self):
        return [sum(len(c["value"].split()) for c in s["conversations"]) + 128 * len(image_files_of(s))
                for s in self.list_data_dict]

    @property
    def modality_lengths(self):
        out = []
        for s in self.list_data_dict:
            n = sum(len(c["value"].split()) for c in s["conversations"])
            out.append(n if image_files_of(s) else -n)
        return out

    def expanded_length(self, i: int) -> int:
        """Tokens the target reads for sample i: its text tokens plus each image's visual tokens (an upper
        bound for anyres, whose exact count depends on the tiles' unpadding)."""

        spec, sample = self.spec, self.list_data_dict[i]
        files = image_files_of(sample)
        conversations = copy.deepcopy(sample.get("conversations") or [])
        if len(files) == 1:
            conversations = move_single_placeholder_first(conversations, spec.mm_use_im_start_end)
        try:
            ids = preprocess([conversations], self.tokenizer, spec.conversation, has_image=bool(files))["input_ids"][0]
        except (ValueError, AssertionError, KeyError):
            return 1  # a bad sample; __getitem__ skips it (or stops with --strict_data)
        text = int((ids != IMAGE_TOKEN_INDEX).sum())
        return min(text + sum(self.visual_tokens(i, f) for f in files), self.tokenizer.model_max_length)

    def visual_tokens(self, i: int, image_file: str) -> int:
        spec = self.spec
        if spec.tokens_for is None and spec.image_aspect_ratio != "anyres":
            return spec.tokens_per_image
        path = os.path.join(spec.image_folder or "", image_file)
        try:
            with Image.open(path) as img:
                size = img.size
        except (OSError, UnidentifiedImageError):
            return spec.tokens_per_image
        if spec.tokens_for is not None:
            return spec.tokens_for(*size)
        from llava.mm_utils import select_best_resolution

        side = spec.image_processor.crop_size["height"]
        width, height = select_best_resolution(size, [tuple(p) for p in spec.image_grid_pinpoints])
        per_side = int(round(spec.tokens_per_image ** 0.5))
        return (1 + (width // side) * (height // side)) * spec.tokens_per_image + (height // side) * per_side

    def sample_name(self, i: int) -> str:
        sid = self.list_data_dict[i].get("id")
        return f"sample #{i}" + (f" (id {sid!r})" if sid is not None else "")

    def __getitem__(self, i):
        for attempt in range(len(self)):
            j = (i + attempt) % len(self)
            try:
                return self.get_sample(j)
            except SampleError as exc:
                if self.strict:
                    raise
                with self._skipped.get_lock():
                    self._skipped.value += 1
                logger.warning("skipping %s (--strict_data True would stop here)", exc)
        raise SampleError(f"every sample in {self.data_path} is invalid")

    # ---- one sample --------------------------------------------------------------------------------
    def load_image(self, i: int, image_file: str):
        folder = self.spec.image_folder or ""
        path = os.path.join(folder, image_file)
        if not os.path.isfile(path):
            raise SampleError(f"{self.sample_name(i)}: image {path} does not exist (check --image_folder)")
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise SampleError(f"{self.sample_name(i)}: image {path} cannot be read ({exc})") from None

    def cached_features(self, i: int, image_file: str):
        path = os.path.join(self.spec.image_folder or "", image_file)
        if not os.path.isfile(path):
            raise SampleError(f"{self.sample_name(i)}: image {path} does not exist (check --image_folder)")
        try:
            return self.spec.feature_cache.features(path)
        except KeyError as exc:
            raise SampleError(f"{self.sample_name(i)}: {exc.args[0]}") from None

    def get_sample(self, i: int) -> dict:
        spec = self.spec
        sample = self.list_data_dict[i]
        name = self.sample_name(i)
        conversations = copy.deepcopy(sample.get("conversations"))
        if not conversations:
            raise SampleError(f"{name}: no 'conversations'")
        files = image_files_of(sample)
        placeholders = sum(turn["value"].count(DEFAULT_IMAGE_TOKEN) for turn in conversations)
        if files and placeholders != len(files):
            raise SampleError(f"{name}: {len(files)} image(s) but {placeholders} <image> placeholder(s) in the text")
        if not files and placeholders:
            raise SampleError(f"{name}: the text has {placeholders} <image> placeholder(s) but the sample has no 'image'")

        processor = spec.image_processor
        images, sizes = [], []
        for f in files:
            if spec.feature_cache is not None:
                features, size = self.cached_features(i, f)
                images.append(features)
                sizes.append(size)
                continue
            image = self.load_image(i, f)
            sizes.append(image.size)
            images.append(process_image(image, processor, spec))
        if len(files) == 1:
            conversations = move_single_placeholder_first(conversations, spec.mm_use_im_start_end)

        try:
            data = preprocess([conversations], self.tokenizer, spec.conversation, has_image=bool(files))
        except (ValueError, AssertionError, KeyError) as exc:
            raise SampleError(f"{name}: {type(exc).__name__}: {exc}") from None
        input_ids, labels = data["input_ids"][0], data["labels"][0]
        if (labels != IGNORE_INDEX).sum() == 0:
            raise SampleError(f"{name}: no target tokens after preprocessing (is the reply empty?)")

        visual = [spec.tokens_for(*size) if spec.tokens_for else spec.tokens_per_image for size in sizes[:len(files)]]
        total = int((input_ids != IMAGE_TOKEN_INDEX).sum()) + sum(visual)
        max_len = self.tokenizer.model_max_length
        if total > max_len:
            raise SampleError(f"{name}: {total} tokens ({total - sum(visual)} text + {visual} for its image(s)) "
                              f"exceeds --model_max_length {max_len}; raise it or drop the sample")

        out = dict(input_ids=input_ids, labels=labels)
        aux = spec.perceiver_aux
        if aux is not None:  # the same conversation in the perceiver's own tokenization, for its LM loss
            out["perceiver_input_ids"], out["perceiver_labels"] = aux.tokenize(conversations, has_image=bool(files), name=name)
        if spec.is_multimodal:
            if not images and spec.feature_cache is not None:
                images, sizes = [spec.feature_cache.dummy()], [(1, 1)]
            elif not images:
                side = processor.crop_size["height"]
                images, sizes = [torch.zeros(3, side, side)], [(side, side)]
            out["images"] = TowerFeatures(images) if spec.feature_cache is not None else images
            out["image_sizes"] = sizes
        return out


def pad_rows(input_ids, labels, pad_id):
    """Right-pad to the longest row. The mask comes from lengths, not from `ids != pad`: the pad id may be a
    real token elsewhere."""
    width = max(len(x) for x in input_ids)
    batch_ids = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    batch_labels = torch.full((len(input_ids), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.bool)
    for row, (ids, lab) in enumerate(zip(input_ids, labels)):
        batch_ids[row, :len(ids)] = ids
        batch_labels[row, :len(lab)] = lab
        mask[row, :len(ids)] = True
    return batch_ids, batch_labels, mask


@dataclass
class DataCollatorForSupervisedDataset:
    tokenizer: object
    perceiver_pad_id: int = 0

    def __call__(self, instances):
        max_len = self.tokenizer.model_max_length
        batch_ids, batch_labels, mask = pad_rows([x["input_ids"][:max_len] for x in instances],
                                                 [x["labels"][:max_len] for x in instances], self.tokenizer.pad_token_id)
        batch = dict(input_ids=batch_ids, labels=batch_labels, attention_mask=mask)
        if "perceiver_input_ids" in instances[0]:
            pad = getattr(self, "perceiver_pad_id", 0)
            p_ids, p_labels, p_mask = pad_rows([x["perceiver_input_ids"] for x in instances],
                                               [x["perceiver_labels"] for x in instances], pad)
            batch.update(perceiver_input_ids=p_ids, perceiver_labels=p_labels, perceiver_attention_mask=p_mask)
        if "images" in instances[0]:
            images = [img for x in instances for img in x["images"]]
            sizes = [s for x in instances for s in x["image_sizes"]]
            if isinstance(instances[0]["images"], TowerFeatures):  # a feature cache's: one tensor per image
                batch["images"] = TowerFeatures(images)
            else:  # pixels as LLaVA's collator batches them: one tensor when the shapes agree
                batch["images"] = torch.stack(images) if all(im.shape == images[0].shape for im in images) else images
            batch["image_sizes"] = sizes
        return batch


def make_supervised_data_module(tokenizer, data_path: str, spec: DataSpec) -> dict:
    dataset = LazySupervisedDataset(data_path, tokenizer, spec)
    aux = spec.perceiver_aux
    collator = DataCollatorForSupervisedDataset(tokenizer, perceiver_pad_id=aux.pad_id if aux else 0)
    return dict(train_dataset=dataset, eval_dataset=None, data_collator=collator)


def llava_data_module(tokenizer, data_args) -> dict:
    """llava.train.train.make_supervised_data_module's contract (patches/02-train-delegate.patch): its
    data_args carry the image processor, and its template is LLaVA's global default."""
    from llava import conversation as conversation_lib


    spec = DataSpec(conversation=conversation_lib.default_conversation, image_folder=data_args.image_folder,
                    image_aspect_ratio=data_args.image_aspect_ratio,
                    image_grid_pinpoints=parse_pinpoints(getattr(data_args, "image_grid_pinpoints", None)),
                    image_processor=getattr(data_args, "image_processor", None) if data_args.is_multimodal else None,
                    mm_use_im_start_end=getattr(data_args, "mm_use_im_start_end", False),
                    strict=getattr(data_args, "strict_data", False))
    return make_supervised_data_module(tokenizer, data_args.data_path, spec)
