"""The perceiver's auxiliary language-modelling loss (Table 4, "w/ untrained perceiver + multi-task").

With `--perceiver_aux_loss_weight λ`, the perceiver is also run as a standalone VLM, with its own LM head,
on the same conversation in its own tokenization and template; the answer tokens are its labels. The
training loss is target_loss + λ * perceiver_aux_loss; both parts are logged (`target_loss`,
`perceiver_aux_loss`). `--perceiver_aux_loss_stages` (default "2", as the paper reports) chooses the stages.
In a stage-1 run with the loss, the perceiver trains as well (otherwise the loss reaches no trainable weight).
"""
from __future__ import annotations

from dataclasses import dataclass

from llava_dpa.templates import CHAT_TEMPLATE_VERSIONS


def active_in_stage(model_args) -> bool:
    weight = float(getattr(model_args, "perceiver_aux_loss_weight", 0.0) or 0.0)
    if weight <= 0:
        return False
    stages = {s.strip() for s in str(getattr(model_args, "perceiver_aux_loss_stages", "2")).split(",") if s.strip()}
    unknown = stages - {"1", "2"}
    if unknown:
        raise ValueError(f"--perceiver_aux_loss_stages {sorted(unknown)}: use 1, 2 or '1,2'")
    stage = "1" if model_args.tune_mm_mlp_adapter else "2"
    return stage in stages


@dataclass
class PerceiverAuxData:
    """Tokenizes a conversation for the perceiver (its tokenizer, its chat template)."""
    tokenizer: object
    version: str

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def tokenize(self, conversations, has_image: bool, name: str):
        from llava.conversation import conv_templates
        from llava.train.train import preprocess_plain

        from llava_dpa.data.preprocess import preprocess_chat

        if self.version in CHAT_TEMPLATE_VERSIONS:
            out = preprocess_chat([conversations], self.tokenizer, conv_templates[self.version])
        else:
            out = preprocess_plain([[dict(t) for t in conversations]], self.tokenizer)
        return out["input_ids"][0], out["labels"][0]


def aux_data_for(tower, model_args):
    """The data-side helper for a run whose stage uses the loss, else None."""
    if not active_in_stage(model_args):
        return None
    if not hasattr(tower, "perceiver"):
        raise ValueError("--perceiver_aux_loss_weight needs a DPA perceiver as --vision_tower")
    version = tower.tower_config_dict.get("conv_version")
    if version not in CHAT_TEMPLATE_VERSIONS:
        version = "plain" if model_args.version == "plain" else model_args.version
    if model_args.version == "plain":
        version = "plain"
    return PerceiverAuxData(tower.perceiver_tokenizer, version)
