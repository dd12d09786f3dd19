"""What both DPA perceivers share (the LLaVA-format one in `tower.py`, the Qwen-VL-native one in
`qwen_vl_tower.py`): the `dpa:` prefix, the target's template, the two tokenizers and where the perceiver's is
found, the prompt prefix recorded as ids, saving the tokenizer into a checkpoint, and the missing-weights check.
Each perceiver holds only what differs: its model, its inputs and its features."""
from __future__ import annotations

import os
from pathlib import Path

from llava_dpa.data.tokenization import load_tokenizer
from llava_dpa.towers.base import VisionTower
from llava_dpa.towers.options import TowerOptions

DPA_PREFIX = "dpa:"
#: where a trained checkpoint keeps the perceiver's tokenizer
TOKENIZER_FOLDER = "perceiver_tokenizer"


class PerceiverError(ValueError):
    pass


def strip_prefix(name: str) -> str:
    return name[len(DPA_PREFIX):] if name.startswith(DPA_PREFIX) else name


class PerceiverTowerBase(VisionTower):
    encoder_name = "perceiver"  # checkpoint keys model.vision_tower.perceiver.*
    is_perceiver = True
    #: the error this perceiver raises (each names its own kind)
    error: type[Exception] = PerceiverError

    @property
    def source_path(self) -> str:
        return strip_prefix(self.vision_tower_name)

    def read_perceiver_options(self, options: TowerOptions) -> None:
        """The settings both perceivers share (towers/options.py: from LLaVA's arguments or a checkpoint's config)."""
        # the target's template (its turn ends delimit the text the perceiver reads): LLaVA's flag, or the config's
        self.conv_version = options.conv_version
        self.target_tokenizer = None
        self.perceiver_tokenizer = None
        # The prefix stays a list, made into a tensor where it is used: a non-persistent buffer is not in the
        # checkpoint, and transformers 5 builds models on the meta device, so it would come back uninitialised.
        recorded = options.mm_perceiver_prefix_ids
        self.prefix_ids = list(recorded) if recorded is not None else None

    def find_perceiver_tokenizer(self, *folders: str | None):
        """The first of `folders` (then the perceiver's own, then a checkpoint's copy) holding a tokenizer, loaded;
        None when none does. Returns (tokenizer, folder)."""
        candidates = [c for c in (*folders, self.source_path, os.path.join(self.source_path, TOKENIZER_FOLDER)) if c]
        source = next((c for c in candidates if (Path(c) / "tokenizer_config.json").is_file()), None)
        return (load_tokenizer(source), source) if source is not None else (None, candidates)

    def keeps_perceiver_tokenizer(self) -> bool:
        """Whether a trained checkpoint needs the perceiver's tokenizer beside it."""
        return self.perceiver_tokenizer is not None

    def save_extras(self, output_dir: str) -> None:
        if self.keeps_perceiver_tokenizer():
            self.perceiver_tokenizer.save_pretrained(os.path.join(output_dir, TOKENIZER_FOLDER))

    def check_weights(self, found: set[str], needed: set[str], hint: str = "") -> None:
        missing = sorted(needed - found)
        if missing:
            raise self.error(f"{self.source_path} lacks perceiver weights {missing[:3]}{hint}")
