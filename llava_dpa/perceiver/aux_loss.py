"""The perceiver's auxiliary language-modelling loss (Table 4, "w/ untrained perceiver + multi-task").

With `--perceiver_aux_loss_weight λ`, the perceiver is also run as a standalone VLM, with its own LM head,
on the same conversation in its own tokenization and template; the answer tokens are its labels. The
training loss is target_loss + λ * perceiver_aux_loss; both parts are logged (`target_loss`,
`perceiver_aux_loss`). `--perceiver_aux_loss_stages` (default 2, as the paper reports) chooses the stages;
the run configuration resolves the weight for the run's stage (0 when off) and records it in the model's
config. In a stage-1 run with the loss the perceiver trains as well (otherwise the loss would reach no
trainable weight).
"""
from __future__ import annotations

from dataclasses import dataclass

from llava_dpa.data.preprocess import preprocess
from llava_dpa.templates import CHAT_TEMPLATE_VERSIONS


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


        out = preprocess([[dict(t) for t in conversations]], self.tokenizer, conv_templates[self.version], has_image)
        return out["input_ids"][0], out["labels"][0]


#: the batch keys that carry the perceiver's own conversation (data/dataset.py); the trainer takes them out
AUX_KEYS = ("perceiver_input_ids", "perceiver_labels", "perceiver_attention_mask")


def perceiver_lm_loss(tower, aux_inputs: dict, images, image_sizes=None):
    """The perceiver's own LM loss on its tokenization of the conversation, with the same images."""
    return tower.perceiver(input_ids=aux_inputs["perceiver_input_ids"],
                           attention_mask=aux_inputs["perceiver_attention_mask"], labels=aux_inputs["perceiver_labels"],
                           images=images, image_sizes=image_sizes, use_cache=False).loss


def aux_data_for(tower, run):
    """The data-side helper: the perceiver's tokenizer and template (the target's when the perceiver has no
    chat template of its own, and LLaVA's plain format when the run uses it)."""
    version = tower.tower_config_dict.get("conv_version")
    if version not in CHAT_TEMPLATE_VERSIONS or run.model.version == "plain":
        version = run.model.version
    return PerceiverAuxData(tower.perceiver_tokenizer, version)
