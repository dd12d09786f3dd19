"""From a batch to the target's input embeddings: the whole multimodal forward, in one place, top to bottom.

LLaVA's `prepare_inputs_labels_for_multimodal` delegates here (patches/11-multimodal-inputs.patch):

    input_ids, images ─┬─ text_embeddings ........ the batch's text (padding dropped) in one embed_tokens call
                       ├─ image_features ......... per image: the tower (+ the perceiver's text context,
                       │                           `tower.tower_inputs`), then the projector; tiles merged
                       │                           (flat, or anyres spatial with unpad + image_newline), whole
                       │                           images one tensor each
                       ├─ splice ................. each image's features at its <image>; labels ignore them
                       ├─ pad .................... truncate to the tokenizer's limit, pad left or right
                       └─ pack_rows .............. a pack (data/packing.py): the rows end to end, a block mask

One embedding call for the batch's text, whatever its number of samples: under DeepSpeed ZeRO-3 every rank
then calls the embedding once per step (packs hold different numbers of samples; per-sample calls made the
ranks' parameter gathers diverge and hang).
"""
from __future__ import annotations

import torch
from llava.mm_utils import get_anyres_image_grid_shape
from llava.model.llava_arch import unpad_image

from llava_dpa.data.packing import pack_rows
from llava_dpa.data.tokenization import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava_dpa.data.tower_features import TowerFeatures


def prepare_inputs_labels_for_multimodal(model, input_ids, position_ids, attention_mask, past_key_values, labels,
                                         images, image_sizes=None, tower_inputs=None, packed=False):
    """LLaVA's contract: (input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels), with
    input_ids None once the embeddings are built. `tower_inputs` defaults to what the tower reads from this call's
    own text (the perceiver's context). `packed` (a batch from the packing sampler, data/packing.py): the rows
    become one row end to end, each sample attending only to itself."""
    tower = model.get_vision_tower()
    if tower is None or images is None or input_ids.shape[1] == 1:
        if packed:
            raise ValueError("a packed batch needs a vision tower and images (the packing sampler's batches carry "
                             "a placeholder image for text-only samples); train without packing")
        return input_ids, position_ids, attention_mask, past_key_values, None, labels
    if getattr(model.config, "tune_mm_mlp_adapter", False) and getattr(model.config, "mm_use_im_start_end", False):
        raise NotImplementedError("image start/end tokens in stage 1 (LLaVA never implemented them)")
    if tower_inputs is None and not isinstance(images, TowerFeatures):  # a cache's features need no tower inputs
        tower_inputs = tower.tower_inputs(input_ids, attention_mask, images)
    features = image_features(model, images, image_sizes, tower_inputs)

    keep = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    rows = [ids[m] for ids, m in zip(input_ids, keep)]
    row_labels = [lab[m] for lab, m in zip(labels, keep)] if labels is not None else \
        [torch.full_like(ids, IGNORE_INDEX) for ids in rows]
    texts = text_embeddings(model, rows)
    embeds, new_labels = splice(rows, row_labels, texts, features, model.device)

    limit = getattr(model.config, "tokenizer_model_max_length", None)
    if limit is not None:  # image features can make a sample longer than the tokenizer's limit
        embeds, new_labels = [e[:limit] for e in embeds], [lab[:limit] for lab in new_labels]
    left = getattr(model.config, "tokenizer_padding_side", "right") == "left"
    embeds, new_labels, mask, positions = pad(embeds, new_labels, left, keep.dtype,
                                              position_ids.dtype if position_ids is not None else torch.long)
    if packed:
        embeds, block, positions, packed_labels = pack_rows(embeds, mask, new_labels)
        flash = model.config._attn_implementation == "flash_attention_2"  # it reads the restarting positions
        return (None, positions, None if flash else block, past_key_values, embeds,
                packed_labels if labels is not None else None)
    return (None, positions if position_ids is not None else None,
            mask.to(attention_mask.dtype) if attention_mask is not None else None, past_key_values, embeds,
            new_labels if labels is not None else None)


def text_embeddings(model, rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every row's embeddings in one call; the image placeholders (negative ids) embed as token 0 and are dropped
    by the splice."""
    return list(model.get_model().embed_tokens(torch.cat(rows).clamp(min=0)).split([len(r) for r in rows]))


def image_features(model, images, image_sizes=None, tower_inputs=None) -> list[torch.Tensor]:
    """One [tokens, d_target] tensor per image, in the order of the batch's <image> placeholders. `images` are
    pixels, or the tower's output already (TowerFeatures, from a feature cache), one per image with the pixels'
    leading axes: both take the same branch below."""
    inner, tower = model.get_model(), model.get_vision_tower()
    cached = isinstance(images, TowerFeatures)

    def encoded(pixels):  # the tower's output, or what a cache holds of it (at the tower's device and dtype)
        if not cached:
            return tower(pixels, **(tower_inputs or {}))
        if isinstance(pixels, list):
            return [x.to(device=tower.device, dtype=tower.dtype) for x in pixels]
        return pixels.to(device=tower.device, dtype=tower.dtype)

    if tower.per_image_features:  # whole images at native resolution: one tensor per image, its own length
        features = list(encoded(images))
        return list(inner.mm_projector(torch.cat(features)).split([f.shape[0] for f in features]))
    tile_ndim = 2 if cached else 3  # one tile: [3, H, W] pixels, [tokens, d] features
    if cached and all(x.ndim == tile_ndim for x in images):
        images = torch.stack(list(images))  # as LLaVA's collator stacks one-tile pixels
    if not isinstance(images, list) and images.ndim == tile_ndim + 1:  # [N, 3, H, W]: one tile per image
        return list(inner.mm_projector(encoded(images)))
    images = [x.unsqueeze(0) if x.ndim == tile_ndim else x for x in images]  # per image: [tiles, 3, H, W]
    tiles = inner.mm_projector(encoded(torch.cat(images)))
    per_image = tiles.split([x.shape[0] for x in images])
    merge = getattr(model.config, "mm_patch_merge_type", "flat")
    if merge == "flat":
        return [x.flatten(0, 1) for x in per_image]
    if not merge.startswith("spatial"):
        raise ValueError(f"unexpected mm_patch_merge_type {merge!r}: use flat, spatial or spatial_unpad")
    return [spatial_merge(model, x, image_sizes[i] if image_sizes is not None else None, "unpad" in merge)
            for i, x in enumerate(per_image)]


def spatial_merge(model, feature: torch.Tensor, image_size, unpad: bool) -> torch.Tensor:
    """LLaVA-NeXT's anyres layout for one image: the overview tile, then the grid's tiles in reading order, cut
    back to the image's aspect ratio and ended row by row with `image_newline` when `unpad`."""
    newline = model.get_model().image_newline if unpad else None
    if feature.shape[0] == 1:
        return torch.cat((feature[0], newline[None])) if unpad else feature[0]
    tower = model.get_vision_tower()
    base, grid = feature[0], feature[1:]
    side = tower.num_patches_per_side
    if side * side != base.shape[0]:
        raise ValueError(f"the overview tile has {base.shape[0]} features, not {side}x{side}")
    if getattr(model.config, "image_aspect_ratio", "square") != "anyres":
        raise NotImplementedError("several tiles per image need --image_aspect_ratio anyres")
    cols, rows = get_anyres_image_grid_shape(image_size, model.config.image_grid_pinpoints, tower.config.image_size)
    grid = grid.view(rows, cols, side, side, -1)
    if unpad:
        grid = grid.permute(4, 0, 2, 1, 3).contiguous().flatten(1, 2).flatten(2, 3)
        grid = unpad_image(grid, image_size)
        grid = torch.cat((grid, newline[:, None, None].expand(*grid.shape[:-1], 1).to(grid.device)), dim=-1)
        grid = grid.flatten(1, 2).transpose(0, 1)
    else:
        grid = grid.permute(0, 2, 1, 3, 4).contiguous().flatten(0, 3)
    return torch.cat((base, grid))


def splice(rows, row_labels, texts, features, device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each row's text with its images' features at the <image> placeholders, in order. A row without an image
    consumes one (placeholder) image, spliced as nothing, so every sample maps to its own features."""
    embeds, labels, next_image = [], [], 0
    for ids, lab, text in zip(rows, row_labels, texts):
        at = torch.where(ids == IMAGE_TOKEN_INDEX)[0].tolist()
        if not at:
            embeds.append(torch.cat([text, features[next_image][0:0]]))
            labels.append(lab)
            next_image += 1
            continue
        pieces, piece_labels, start = [], [], 0
        for index in at:
            image = features[next_image]
            next_image += 1
            pieces += [text[start:index], image]
            piece_labels += [lab[start:index], torch.full((image.shape[0],), IGNORE_INDEX, device=lab.device,
                                                          dtype=lab.dtype)]
            start = index + 1
        pieces.append(text[start:])
        piece_labels.append(lab[start:])
        embeds.append(torch.cat([p.to(device) for p in pieces]))
        labels.append(torch.cat(piece_labels))
    return embeds, labels


def pad(embeds, labels, left: bool, mask_dtype, position_dtype):
    """Rows of different lengths into [B, L, d] with their labels, attention mask and 0-based positions."""
    length, batch = max(e.shape[0] for e in embeds), len(embeds)
    device = labels[0].device
    padded_labels = torch.full((batch, length), IGNORE_INDEX, dtype=labels[0].dtype, device=device)
    mask = torch.zeros((batch, length), dtype=mask_dtype, device=device)
    positions = torch.zeros((batch, length), dtype=position_dtype, device=device)
    rows = []
    for i, (e, lab) in enumerate(zip(embeds, labels)):
        n = e.shape[0]
        filler = torch.zeros((length - n, e.shape[1]), dtype=e.dtype, device=e.device)
        rows.append(torch.cat((filler, e) if left else (e, filler)))
        if n:
            span = slice(length - n, length) if left else slice(0, n)
            padded_labels[i, span] = lab
            mask[i, span] = True
            positions[i, span] = torch.arange(n, dtype=position_dtype, device=device)
    return torch.stack(rows), padded_labels, mask, positions
