"""Cached features of a frozen tower or perceiver, for stage 1 (`llava-dpa cache-features`, `--feature_cache`).

Stage 1 trains the projector only, so the tower's (or the perceiver's) output for an image never changes;
computing it once per image instead of once per sample per epoch removes the tower from stage 1's cost.

The cache is a folder:
- `manifest.json`: what the features depend on: the tower's name, a SHA-256 of its weights and of its config,
  the preprocessing (the image processor's settings, --image_aspect_ratio, the anyres grid) and, for a
  perceiver, its prompt prefix (its template up to the image). Training refuses a cache whose manifest differs
  from its own tower, naming what differs;
- `features-NNNNN.safetensors`: the features, one tensor per image, keyed by the SHA-1 of the image file's
  bytes (so a moved or renamed file still hits, and an edited one misses); written whole, then renamed;
- `index.json`: image key -> shard and the image's size; rewritten after every shard, so an interrupted run
  resumes where it stopped.

Features are stored as the tower gives them for the image's pixels, [tokens, d] for a square image and
[tiles, tokens, d] for anyres. They reach the model as features (data/tower_features.TowerFeatures), which
`llava_integration/multimodal_inputs.image_features` takes where it would have run the tower.

The Qwen-VL perceiver reads each sample's text before its images, so its features are not a function of the
image alone: it is refused. So are the instruction context and a tower that trains in the stage.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from llava_dpa.data.dataset import image_files_of, process_image

FORMAT = 2  # 1 stored a trailing singleton axis (features shaped as pixels); rebuild such a cache


class FeatureCacheError(ValueError):
    pass


def image_key(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def tower_fingerprint(tower) -> dict:
    """SHA-256 of the tower's weights (names, shapes, dtypes and bytes) and of its config."""
    weights = hashlib.sha256()
    for name, tensor in sorted(tower.state_dict().items()):
        weights.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        weights.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    config = hashlib.sha256(json.dumps(tower.tower_config_dict, sort_keys=True, default=str).encode())
    return {"name": tower.vision_tower_name, "weights_sha256": weights.hexdigest(), "config_sha256": config.hexdigest()}


def manifest_for(tower, spec) -> dict:
    """What the cached features depend on, for this tower and data spec."""
    processor = tower.image_processor
    settings = processor.to_dict() if hasattr(processor, "to_dict") else {}
    settings = json.loads(json.dumps(settings, default=str))
    return {"format": FORMAT, "tower": tower_fingerprint(tower),
            "preprocessing": {"image_processor": settings, "image_aspect_ratio": spec.image_aspect_ratio,
                              "image_grid_pinpoints": [list(p) for p in spec.image_grid_pinpoints or []]},
            "perceiver_template": list(getattr(tower, "prefix_ids", None) or []) if tower.is_perceiver else None}


def refuse_unsupported(tower, instruction_context: bool = False) -> None:
    if tower.is_perceiver and tower.per_image_features:
        raise FeatureCacheError("the Qwen-VL perceiver reads each sample's text before its images, so its features "
                                "are not a function of the image alone; train stage 1 without --feature_cache")
    if instruction_context or getattr(tower, "instruction_context", False):
        raise FeatureCacheError("--perceiver_instruction_context: the perceiver's features depend on the question; "
                                "they cannot be cached per image")


def check_manifest(found: dict, expected: dict, folder: str) -> None:
    """Refuse a cache built with another tower, preprocessing or perceiver template, naming the difference."""
    labels = {"tower": "tower (its weights or config)", "preprocessing": "preprocessing",
              "perceiver_template": "perceiver template", "format": "cache format"}

    def compared(manifest, key):  # the tower's folder name may differ; its weights and config may not
        value = manifest.get(key)
        return {k: v for k, v in value.items() if k != "name"} if key == "tower" and isinstance(value, dict) else value

    differ = [labels[k] for k in labels if compared(found, k) != compared(expected, k)]
    if differ:
        raise FeatureCacheError(f"--feature_cache {folder} does not match this run: it was built with a different "
                                f"{' and '.join(differ)}; rebuild it: llava-dpa cache-features ... --output {folder}")


class FeatureCacheReader:
    def __init__(self, folder: str, expected_manifest: dict):
        self.folder = Path(folder)
        path = self.folder / "manifest.json"
        if not path.is_file():
            raise FeatureCacheError(f"--feature_cache {folder}: no manifest.json; build it with llava-dpa cache-features")
        self.manifest = json.loads(path.read_text())
        check_manifest(self.manifest, expected_manifest, folder)
        index = self.folder / "index.json"
        self.index = json.loads(index.read_text()) if index.is_file() else {}
        self._shards: dict = {}
        self._keys: dict = {}

    def features(self, path: str) -> tuple[torch.Tensor, tuple[int, int]]:
        from safetensors import safe_open

        stat = os.stat(path)  # hash a file once per process, not once per sample per epoch
        known = (path, stat.st_size, stat.st_mtime_ns)
        key = self._keys.get(known) or self._keys.setdefault(known, image_key(path))
        entry = self.index.get(key)
        if entry is None:
            raise KeyError(f"image {path} is not in --feature_cache {self.folder}; run llava-dpa cache-features on "
                           f"this dataset (it resumes and adds the missing images)")
        shard = self._shards.get(entry["shard"])
        if shard is None:
            shard = self._shards[entry["shard"]] = safe_open(str(self.folder / entry["shard"]), "pt")
        return shard.get_tensor(key), tuple(entry["size"])

    def dummy(self) -> torch.Tensor:
        """A text-only sample's placeholder image, shaped like a square image's features."""
        shape = self.manifest["placeholder_shape"]
        return torch.zeros(shape)


def build_cache(tower, spec, records: list[dict], output: str, shard_size: int = 256, log=print) -> dict:
    """Compute and store the features of every image of `records` not yet in the cache; returns counts."""
    from safetensors.torch import save_file
    from tqdm import tqdm


    refuse_unsupported(tower)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    manifest = manifest_for(tower, spec)
    manifest_path, index_path = out / "manifest.json", out / "index.json"
    if manifest_path.is_file():
        check_manifest(json.loads(manifest_path.read_text()), manifest, output)
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    shards = sorted(out.glob("features-*.safetensors"))
    next_shard = len(shards)
    files = sorted({os.path.join(spec.image_folder or "", f) for r in records for f in image_files_of(r)})
    done = skipped = 0
    pending: dict = {}
    from PIL import Image

    def flush():
        nonlocal next_shard, pending
        if not pending:
            return
        name = f"features-{next_shard:05d}.safetensors"
        tmp = out / (name + ".partial")
        save_file({k: v for k, (v, _) in pending.items()}, str(tmp))
        os.replace(tmp, out / name)
        for k, (_, size) in pending.items():
            index[k] = {"shard": name, "size": list(size)}
        tmp_index = index_path.with_suffix(".json.partial")
        tmp_index.write_text(json.dumps(index))
        os.replace(tmp_index, index_path)
        next_shard, pending = next_shard + 1, {}

    placeholder = None
    tower.eval()
    with torch.no_grad():
        for path in tqdm(files, desc="cache-features"):
            if not os.path.isfile(path):
                skipped += 1
                continue
            key = image_key(path)
            if key in index or key in pending:
                continue
            with Image.open(path) as img:
                image = img.convert("RGB")
            pixels = process_image(image, spec.image_processor, spec)
            batch = pixels if pixels.ndim == 4 else pixels.unsqueeze(0)  # tiles, or the one image
            features = tower.features(batch).detach().to("cpu", torch.float32)
            features = features if pixels.ndim == 4 else features[0]
            pending[key] = (features.contiguous(), image.size)
            if placeholder is None:
                placeholder = list(features.shape[-2:])
            done += 1
            if len(pending) >= shard_size:
                flush()
        flush()
    if placeholder is None and "placeholder_shape" in (json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}):
        placeholder = json.loads(manifest_path.read_text())["placeholder_shape"]
    manifest["placeholder_shape"] = placeholder
    manifest_path.write_text(json.dumps(manifest, indent=1))
    log(f"cache-features: {done} images computed, {len(index)} in {out}, {skipped} missing files skipped")
    return {"computed": done, "total": len(index), "missing_files": skipped}
