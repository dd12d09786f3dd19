"""The tiny offline model zoo: tokenizers, language models, towers and data built in seconds, with no
download. Tests and the demo use it; the code paths are those real checkpoints take."""
from __future__ import annotations

import json
from pathlib import Path

from llava_dpa.zoo import models
from llava_dpa.zoo.data import corpus_lines, write_dataset
from llava_dpa.zoo.tokenizers import llama3_style_tokenizer, qwen3_style_tokenizer

ZOO_VERSION = 4


def build_zoo(output: str | Path, seed: int = 0) -> dict[str, str]:
    """Build (or reuse, when complete) the zoo under `output`; returns name -> path."""
    root = Path(output)
    manifest = root / "zoo.json"
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        if found.get("version") == ZOO_VERSION:
            return found["paths"]
    root.mkdir(parents=True, exist_ok=True)
    corpus = corpus_lines()
    paths = {name: str(root / name) for name in
             ("qwen3_lm", "qwen3_lm_b", "llama_lm", "clip", "siglip", "qwen2_5_vl_vit",
                                                     "native_perceiver", "qwen2_5_vl", "qwen3_vl")}
    models.tiny_qwen3(qwen3_style_tokenizer(corpus), Path(paths["qwen3_lm"]), seed=seed)
    # A second Qwen3 LM with other weights (a stand-in for the perceiver LM next to the target LM).
    models.tiny_qwen3(qwen3_style_tokenizer(corpus), Path(paths["qwen3_lm_b"]), seed=seed + 1)
    models.tiny_llama(llama3_style_tokenizer(corpus), Path(paths["llama_lm"]), seed=seed)
    models.tiny_clip(Path(paths["clip"]), seed=seed)
    models.tiny_siglip(Path(paths["siglip"]), seed=seed)
    models.tiny_qwen2_5_vl_vision(Path(paths["qwen2_5_vl_vit"]), seed=seed)
    models.tiny_native_perceiver(qwen3_style_tokenizer(corpus), Path(paths["native_perceiver"]), seed=seed + 2)
    models.tiny_qwen2_5_vl(qwen3_style_tokenizer(corpus), Path(paths["qwen2_5_vl"]), seed=seed + 3)
    models.tiny_qwen3_vl(qwen3_style_tokenizer(corpus), Path(paths["qwen3_vl"]), seed=seed + 4)
    data = write_dataset(root / "data", seed=seed)
    paths.update({"images": data["images"], "stage1_data": data["stage1"], "stage2_data": data["stage2"],
                  "benchmark": data["benchmark"]})
    manifest.write_text(json.dumps({"version": ZOO_VERSION, "paths": paths}, indent=1))
    return paths
