"""Qwen2.5-VL's 3-D rotary positions (M-RoPE) for the Qwen-VL-native perceiver.

`image_positions` is Qwen2.5-VL's `get_rope_index` for images (no video): text tokens advance all three
axes together; an image's N merged tokens take (0, row, column) offsets from the position after the text
before it, and the text after the image resumes at max + 1. Written here, not called from transformers,
because its signature and home differ between transformers 4.57 and 5.x; tests compare it with both.

`SectionedRotary` turns those positions into the (cos, sin) a stock Qwen3 attention layer applies: the
rotary frequencies split into `mrope_section` chunks, chunk i rotating by axis i % 3. That is what the
official perceiver's patched Qwen3 attention does with `apply_multimodal_rotary_pos_emb`
(modeling_llava_baseline.py 355-362), so stock Qwen3 layers compute the same function.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def image_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, grids: list[tuple[int, int, int]],
                    image_token_id: int, merge_size: int) -> torch.Tensor:
    """[B, L] token ids (image pads marking the visual tokens, one run per image in `grids` order) ->
    [3, B, L] positions; padded positions get 1, as in transformers."""
    batch, length = input_ids.shape
    positions = torch.ones((3, batch, length), dtype=torch.long, device=input_ids.device)
    image = 0
    for row in range(batch):
        valid = attention_mask[row].bool() if attention_mask is not None else torch.ones(length, dtype=torch.bool)
        ids = input_ids[row][valid].tolist()
        chunks, start, i = [], 0, 0
        while i < len(ids):
            if ids[i] != image_token_id:
                i += 1
                continue
            t, h, w = grids[image]
            gh, gw = h // merge_size, w // merge_size
            count = t * gh * gw
            if ids[i:i + count] != [image_token_id] * count:
                raise ValueError(f"image {image} has {count} visual tokens but fewer image pads follow in row {row}")
            text = i - start
            offset = (chunks[-1].max().item() + 1) if chunks else 0
            chunks.append(torch.arange(text).view(1, -1).expand(3, -1) + offset)
            base = offset + text
            tt = torch.arange(t).view(-1, 1).expand(-1, gh * gw).flatten()
            hh = torch.arange(gh).view(1, -1, 1).expand(t, -1, gw).flatten()
            ww = torch.arange(gw).view(1, 1, -1).expand(t, gh, -1).flatten()
            chunks.append(torch.stack([tt, hh, ww]) + base)
            image += 1
            i += count
            start = i
        offset = (chunks[-1].max().item() + 1) if chunks else 0
        chunks.append(torch.arange(len(ids) - start).view(1, -1).expand(3, -1) + offset)
        positions[:, row, valid.to(positions.device)] = torch.cat(chunks, dim=1).to(positions.device)
    if image != len(grids):
        raise ValueError(f"{len(grids)} images but {image} runs of image pads in the perceiver's input")
    return positions


class SectionedRotary(nn.Module):
    """Rotary embedding over 3-D positions with Qwen2.5-VL's sectioned layout, for stock Qwen3 layers.

    No buffer: the frequencies are recomputed per call (head_dim / 2 values), so a model built on the meta
    device (transformers 5) needs nothing re-initialised."""

    def __init__(self, head_dim: int, theta: float, mrope_section: list[int]):
        super().__init__()
        if 2 * sum(mrope_section) != head_dim:
            raise ValueError(f"mrope_section {mrope_section} covers {2 * sum(mrope_section)} of the head's {head_dim} "
                             f"dimensions; the perceiver LM's head_dim and the ViT config's mrope_section disagree")
        self.head_dim, self.theta, self.mrope_section = head_dim, float(theta), list(mrope_section)

    def inv_freq(self, device) -> torch.Tensor:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / self.head_dim
        return 1.0 / (self.theta ** exponent)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        if position_ids.ndim == 2:
            position_ids = position_ids[None].expand(3, -1, -1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            freqs = position_ids[..., None].float() * self.inv_freq(x.device)   # [3, B, L, head_dim / 2]
            chunks = freqs.split(self.mrope_section, dim=-1)
            merged = torch.cat([chunk[i % 3] for i, chunk in enumerate(chunks)], dim=-1)
            emb = torch.cat([merged, merged], dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)
