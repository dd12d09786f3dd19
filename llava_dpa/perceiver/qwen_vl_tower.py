"""QwenVLPerceiverTower: the Qwen-VL-native perceiver (the official DPA release's) as LLaVA's vision tower.

Selected explicitly: `--vision_tower dpa:<dir>`, where <dir> is a Qwen2.5-VL checkpoint or a perceiver
written by `llava-dpa import-official` / `make-perceiver --native`. (A bare Qwen2.5-VL folder without the
prefix stays the baseline's ViT tower.)

What it computes, as the official code does (official-dpa.md "The visual path"):
- each image whole, at native resolution (`data/native_resolution.py`), through the ViT and its merger;
- the perceiver LM reads the sample as its own template renders it: its prefix (`<|im_start|>user\\n`, no
  system prompt, as in the official training), then for each image the text that precedes it in the sample,
  `<|vision_start|>`, N image pads (replaced by the merged ViT tokens), `<|vision_end|>`; positions are
  Qwen2.5-VL's 3-D M-RoPE (`perceiver/mrope.py`);
- the features of an image are the final-norm hidden states at its N + 2 positions, delimiters included
  (FVT 450-474); `--perceiver_visual_positions_only True` keeps the N visual positions.
Each image contributes its own number of tokens; the LLaVA splice (llava_integration/multimodal_inputs.image_features) places
them at the image's `<image>` placeholder, with no image_newline.

The text before an image is the target's, decoded with the target's tokenizer and re-encoded with the
perceiver's. For images inside the first user turn, the usual case, that is exactly the official
perceiver's input; text after the image cannot change an image's states (causal attention), so it is not
fed. An image after an assistant turn sees that turn as the target's template renders it (with a Qwen3
target, its empty think block), where the official perceiver renders it without one.
"""
from __future__ import annotations

import torch

from llava_dpa.data.native_resolution import (
    QWEN_PROCESSOR_DEFAULT_MAX_PIXELS,
    NativeResolutionProcessor,
    merged_counts,
    patches_and_grids,
    whole_images,
)
from llava_dpa.data.tokenization import IMAGE_TOKEN_INDEX
from llava_dpa.perceiver.base import PerceiverTowerBase
from llava_dpa.perceiver.buckets import perceiver_buckets
from llava_dpa.perceiver.instruction import ROLE, turn_end_ids
from llava_dpa.perceiver.mrope import image_positions
from llava_dpa.perceiver.qwen_vl import QwenVLPerceiver, QwenVLPerceiverError, own_state, spec_from_config
from llava_dpa.towers import weights as W
from llava_dpa.towers.options import TowerOptions

#: the perceiver's template up to the first image, as the official training renders it (TPL 812-817: no system)
OFFICIAL_PREFIX_TEXT = "<|im_start|>user\n"
DELIMITERS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")


def prefix_text(system: str | None) -> str:
    return (f"<|im_start|>system\n{system}<|im_end|>\n" if system else "") + OFFICIAL_PREFIX_TEXT


class QwenVLPerceiverTower(PerceiverTowerBase):
    model_types = ()  # chosen by the dpa: prefix and the folder's config (llava_integration/tower_registry.py)
    error = QwenVLPerceiverError  # checkpoint keys model.vision_tower.perceiver.{visual,language_model}.*
    per_image_features = True   # one [tokens_i, d] tensor per image (llava_integration/multimodal_inputs.image_features)
    label = "DPA perceiver, Qwen-VL native (whole images at native resolution, M-RoPE; the official release's form)"

    def read_options(self, options: TowerOptions) -> None:
        self.spec = spec_from_config(self.tower_config_dict, self.source_path)
        self.tower_config_dict = self.spec
        self.visual_positions_only = options.perceiver_visual_positions_only
        self.system_prompt = options.perceiver_system_prompt
        self.select_layer = None
        self.instruction_context = False
        self.read_perceiver_options(options)
        self.pixel_limits = (options.min_pixels, options.max_pixels)

    def read_processor_dict(self, source: str) -> dict:
        found = W.read_json_if_exists(source, "preprocessor_config.json") or {}
        vision = self.spec["vision_config"]
        low, high = self.pixel_limits
        return {"resolution": "native", "patch_size": vision.get("patch_size", 14),
                "merge_size": vision.get("spatial_merge_size", 2),
                "min_pixels": low or found.get("min_pixels") or (found.get("size") or {}).get("shortest_edge"),
                "max_pixels": high or (found.get("max_pixels") if found.get("max_pixels") != QWEN_PROCESSOR_DEFAULT_MAX_PIXELS else None),
                "image_mean": found.get("image_mean"), "image_std": found.get("image_std")}

    # ---- construction --------------------------------------------------------------------------------
    def build_model(self, config_dict: dict):
        return QwenVLPerceiver(self.spec, self.attn_implementation)

    def build_image_processor(self, processor_dict):
        d = dict(processor_dict)
        low, high = self.pixel_limits  # flags given now win over a checkpoint's recorded limits
        return NativeResolutionProcessor(d["patch_size"], d["merge_size"], low or d.get("min_pixels"),
                                         high or d.get("max_pixels"), d.get("image_mean"), d.get("image_std"))

    def config_entries(self) -> dict:
        return {"mm_vision_tower_config": self.spec, "mm_vision_tower_processor": self.image_processor.to_dict(),
                "mm_perceiver_prefix_ids": self.prefix_ids,
                "perceiver_visual_positions_only": self.visual_positions_only,
                "perceiver_system_prompt": self.system_prompt, "image_aspect_ratio": "native"}

    # ---- weights -------------------------------------------------------------------------------------
    def load_model(self, device_map=None):
        if self.is_loaded:
            return
        state = own_state(W.load_state_dict(self.source_path), self.spec, self.source_path)
        model_keys = set(self.perceiver.state_dict())
        self.check_weights(set(state), model_keys)
        W.load_into(self.perceiver, {k: v for k, v in state.items() if k in model_keys}, strict=True)
        self.is_loaded = True

    # ---- tokenizers ----------------------------------------------------------------------------------
    def attach_tokenizers(self, target_tokenizer, *, perceiver_tokenizer_needed: bool = False,
                          perceiver_tokenizer_dir: str | None = None):
        """The target's tokenizer decodes the text between images; the perceiver's re-encodes it and gives
        the prefix its ids (recorded in the checkpoint, as for the LLaVA-format perceiver)."""

        self.target_tokenizer = target_tokenizer
        if self.perceiver_tokenizer is None:
            tokenizer, source = self.find_perceiver_tokenizer(perceiver_tokenizer_dir)
            if tokenizer is not None:
                self.check_delimiters(tokenizer, source)
                self.perceiver_tokenizer = tokenizer
        if self.prefix_ids is None:
            if self.perceiver_tokenizer is None:
                raise QwenVLPerceiverError(f"the Qwen-VL perceiver {self.source_path} has no tokenizer: its prompt "
                                           f"prefix is built with it. Save the perceiver's tokenizer into that folder.")
            self.prefix_ids = self.perceiver_tokenizer(prefix_text(self.system_prompt), add_special_tokens=False).input_ids

    def check_delimiters(self, tokenizer, source) -> None:
        vocab = tokenizer.get_vocab()
        missing = [t for t in DELIMITERS if t not in vocab]
        if missing:
            raise QwenVLPerceiverError(f"the perceiver tokenizer in {source} lacks the vision tokens {missing}; a "
                                       f"Qwen-VL perceiver needs Qwen2.5-VL's tokenizer (or one with those tokens)")
        ids = [vocab[t] for t in DELIMITERS]
        expected = [self.spec["vision_start_token_id"], self.spec["image_token_id"], self.spec["vision_end_token_id"]]
        if ids != expected:
            raise QwenVLPerceiverError(f"the perceiver tokenizer in {source} gives {dict(zip(DELIMITERS, ids))}, its "
                                       f"config expects {dict(zip(DELIMITERS, expected))}")

    # ---- what the perceiver reads --------------------------------------------------------------------
    def tower_inputs(self, input_ids, attention_mask, images) -> dict | None:
        return {"contexts": self.sample_contexts(input_ids, attention_mask)}

    def sample_contexts(self, input_ids, attention_mask) -> list[list[list[int]]]:
        """Per sample, per image: the perceiver's token ids for the text just before the image (the prefix
        comes first and is added in encode). A sample without an image consumes one placeholder image."""

        contexts = []
        ends = None
        written_out = self._slot_ids()
        for row, ids in enumerate(input_ids):
            if attention_mask is not None:
                ids = ids[attention_mask[row].bool()]
            ids = ids.tolist()
            if written_out & set(ids):
                raise QwenVLPerceiverError(
                    f"sample {row}: its text already holds image slots ({', '.join(DELIMITERS)}), as the official "
                    f"release's data does; their count cannot be checked against the image's features here. Write "
                    f"<image> where the image goes: this model fills it with the image's N + 2 features.")
            where = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX]
            if not where:
                contexts.append([[]])
                continue
            sample = []
            for k, pos in enumerate(where):
                if k == 0:
                    if ends is None:
                        ends = turn_end_ids(self._target(), self.conv_version) if self.target_tokenizer else set()
                    start = max((i for i in range(pos) if ids[i] in ends), default=-1) + 1
                    segment = ids[start:pos]
                    text = self._decode(segment, skip_special_tokens=True) if segment else ""
                    text = ROLE.sub("", text, count=1).lstrip() if text else ""
                else:
                    segment = ids[where[k - 1] + 1:pos]
                    text = self._decode(segment, skip_special_tokens=False) if segment else ""
                sample.append(self._encode(text) if text else [])
            contexts.append(sample)
        return contexts

    def _slot_ids(self) -> set[int]:
        if self.target_tokenizer is None:
            return set()
        vocab = self.target_tokenizer.get_vocab()
        return {vocab[t] for t in DELIMITERS if t in vocab}

    def _target(self):
        if self.target_tokenizer is None:
            raise QwenVLPerceiverError("this sample has text before or between its images, which the Qwen-VL perceiver "
                                       "reads: attach the target's tokenizer (tower.attach_tokenizers)")
        return self.target_tokenizer

    def _decode(self, ids, skip_special_tokens):
        return self._target().decode(ids, skip_special_tokens=skip_special_tokens)

    def _encode(self, text: str) -> list[int]:
        if self.perceiver_tokenizer is None:
            raise QwenVLPerceiverError("the perceiver reads text before an image but has no tokenizer; save it into "
                                       f"{self.source_path} (or the checkpoint's perceiver_tokenizer/)")
        return self.perceiver_tokenizer(text, add_special_tokens=False).input_ids

    # ---- features ------------------------------------------------------------------------------------
    def features(self, images, contexts=None):
        images = whole_images(images, self.device, self.dtype)
        if contexts is None:  # no sample structure given: each image on its own after the prefix
            contexts = [[[]] for _ in images]
        if sum(len(c) for c in contexts) != len(images):
            raise QwenVLPerceiverError(f"{len(images)} images for {sum(len(c) for c in contexts)} image slots in the "
                                       f"batch")
        return self.encode_samples(images, contexts)

    def encode(self, pixel_values: torch.Tensor, contexts=None) -> torch.Tensor:
        """The towers' contract, [N, 3, H, W] -> [N, tokens, d]: N images of one size, each read as a sample of
        its own (or as `contexts` place them). The model's forward goes through `features`, which takes whole
        images of any size."""
        return torch.stack(self.features(list(pixel_values), contexts))

    def encode_samples(self, images: list[torch.Tensor], contexts: list[list[list[int]]]) -> list[torch.Tensor]:
        """Per image, its features. The samples' sequences run in length buckets (perceiver/buckets.py): whole
        images at native resolution differ widely in token count, and one batch padded to the longest would
        spend most of its compute on padding."""
        merged = merged_counts(images, self.perceiver.vision_config)
        first_image = [0]
        for sample in contexts:
            first_image.append(first_image[-1] + len(sample))
        lengths = [len(self.prefix_ids or ()) + sum(len(c) + 2 + merged[first_image[r] + k] for k, c in enumerate(sample))
                   for r, sample in enumerate(contexts)]
        features: list[torch.Tensor | None] = [None] * len(images)
        for rows in perceiver_buckets(lengths, self.perceiver):
            owned = [i for r in rows for i in range(first_image[r], first_image[r + 1])]
            inputs, spans = self.perceiver_inputs([images[i] for i in owned], [contexts[r] for r in rows])
            hidden = self.perceiver(*inputs[:3], **inputs[3])
            slot = iter(owned)
            for r, sample_spans in enumerate(spans):
                for first, last in sample_spans:  # [vision_start, vision_end] inclusive
                    span = hidden[r, first:last + 1]
                    features[next(slot)] = span[1:-1] if self.visual_positions_only else span
        return features

    def perceiver_inputs(self, images: list[torch.Tensor], contexts: list[list[list[int]]],
                         suffixes: list[list[int]] | None = None):
        """(inputs_embeds, attention_mask, 3-D positions, Qwen3-VL's deepstack inputs) of one sequence per sample: the prefix, then per image
        its context, <|vision_start|>, its merged ViT tokens, <|vision_end|>; then the sample's suffix (text
        after the images, which the analysis tools read). Also each image's (start, end) positions."""
        if self.prefix_ids is None:
            raise QwenVLPerceiverError("the perceiver's prompt prefix is unknown: attach its tokenizer first")
        patches, grid, counts = patches_and_grids(images, self.perceiver.vision_config)
        visual, deepstack = self.perceiver.visual_tokens(patches, grid)
        grids = [tuple(g) for g in grid.tolist()]
        m = self.perceiver.vision_config.spatial_merge_size

        start_id, pad_id, end_id = (self.spec["vision_start_token_id"], self.spec["image_token_id"],
                                    self.spec["vision_end_token_id"])
        rows, spans, row_grids, image = [], [], [], 0
        for r, sample in enumerate(contexts):
            ids, sample_spans = list(self.prefix_ids), []
            for context in sample:
                ids += list(context) + [start_id]
                first = len(ids) - 1
                sample_spans.append((first, first + counts[image] + 1))
                ids += [pad_id] * counts[image] + [end_id]
                row_grids.append(grids[image])
                image += 1
            rows.append(ids + (list(suffixes[r]) if suffixes else []))
            spans.append(sample_spans)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=self.device)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[r, :len(row)] = 1
        embeds = self.perceiver.embed_tokens(ids)
        slots = (ids == pad_id) & mask.bool()
        embeds = embeds.masked_scatter(slots.unsqueeze(-1), visual.to(embeds.dtype))
        positions = image_positions(ids, mask, row_grids, pad_id, m)
        extras = {"visual_pos_masks": slots, "deepstack_visual_embeds": deepstack} if deepstack is not None else {}
        return (embeds, mask, positions, extras), spans

    @torch.no_grad()
    def layer_states(self, image: torch.Tensor, text_ids: list[int]):
        """The analysis tools' view of the perceiver in its own text space: one image, then `text_ids`. Returns
        (hidden states of layers 1..L, each [T, d]; the visual-position mask; the token ids)."""
        (embeds, mask, positions, extras), spans = self.perceiver_inputs([image], [[[]]], [text_ids])
        states = self.perceiver(embeds, mask, positions, all_layers=True, **extras)
        visual = torch.zeros(embeds.shape[1], dtype=torch.bool)
        first, last = spans[0][0]
        visual[first + 1:last] = True
        ids = list(self.prefix_ids) + [self.spec["vision_start_token_id"]] + [self.spec["image_token_id"]] * \
            (last - first - 1) + [self.spec["vision_end_token_id"]] + list(text_ids)
        return [h[0].detach().cpu() for h in states[1:]], visual, ids

    def tokens_for(self, width: int, height: int) -> int:
        return self.image_processor.tokens_for(width, height) + (0 if self.visual_positions_only else 2)

    # ---- the interface -------------------------------------------------------------------------------
    @property
    def vit(self):
        return self.perceiver.visual

    @property
    def config(self):
        return self.perceiver.vision_config

    @property
    def image_size(self) -> int:
        return self.image_processor.crop_size["height"]

    @property
    def hidden_size(self) -> int:
        return self.perceiver.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size // self.image_processor.factor

