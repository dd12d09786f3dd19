"""Every training the paper reports, as typed entries of one registry.

Each entry is a frozen dataclass that extends the entry it differs from and declares only the difference.
Every hyperparameter carries its source in its field's metadata ("source"), which `llava-dpa recipe show`
prints. An entry names the table rows it is (`rows`); a row that two tables share is one entry listed in
both. An entry whose stage 1 is the very training another entry already runs says so with
`stage1_shared_with`, so no training runs twice (tests/test_recipe_registry.py proves no two entries
resolve to the same training).

Sources: "§n" is a paper section, "Table n" a paper table, "official <script>" the authors' release
(THUMAI-Lab/Deep-Pre-Alignment, ms-swift/scripts/*_DPA_4node.sh; see docs/recipes.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional, Union

from llava_dpa.data.native_resolution import OFFICIAL_MAX_PIXELS


def sourced(default, source: str):
    """A hyperparameter with where it comes from."""
    return field(default=default, metadata={"source": source})


# ---- where a run's vision tower comes from ----------------------------------------------------------------
@dataclass(frozen=True)
class ViT:
    """A ViT checkpoint named in the cluster settings (`vit`: the Qwen2.5-VL vision encoder)."""
    path_key: str = "vit"


@dataclass(frozen=True)
class PerceiverOf:
    """The perceiver VLM another entry produces (its output folder)."""
    entry: str


@dataclass(frozen=True)
class ViTOf:
    """The ViT inside the perceiver another entry produces (`llava-dpa extract-vit`)."""
    entry: str


@dataclass(frozen=True)
class QwenVLPerceiverAt:
    """A Qwen-VL-native perceiver folder named in the cluster settings (`official_perceiver`: the perceiver of
    DPA-4B-init, converted by `llava-dpa import-official`), passed as `dpa:<folder>`."""
    path_key: str = "official_perceiver"


Tower = Union[ViT, PerceiverOf, ViTOf, QwenVLPerceiverAt]


# ---- how a perceiver entry's output is made when it is not a stage-2 training ----------------------------
@dataclass(frozen=True)
class Compose:
    """`llava-dpa make-perceiver`: the ViT and the perceiver LM joined by a projector, random unless
    `projector_from_stage1` (the entry's own stage-1 projector)."""
    projector_from_stage1: bool = False


@dataclass(frozen=True)
class ReinitialiseLM:
    """`llava-dpa reinit-perceiver-lm`: another entry's perceiver with its LM blocks re-initialised."""
    entry: str
    seed: int = 0


@dataclass(frozen=True)
class LoRA:
    r: int = sourced(32, "official SFT_DPA_lora_4node.sh (--lora_rank 32)")
    alpha: int = sourced(32, "official SFT_DPA_lora_4node.sh (--lora_alpha 32)")
    dropout: float = sourced(0.0, "official SFT_DPA_lora_4node.sh (--lora_dropout 0)")
    bits: int = sourced(4, "project brief: QLoRA (4-bit target) for Qwen3-32B")
    # The official script puts LoRA on all linear layers of the target, the perceiver (ViT, merger, LM) and
    # the aligner; here the alignment projector trains in full, as LLaVA's LoRA does (docs/recipes.md).
    parts: tuple[str, ...] = sourced(("language_model", "vision_tower"),
                                     "official SFT_DPA_lora_4node.sh (--target_modules all-linear)")


@dataclass(frozen=True)
class Recipe:
    """The controlled baseline LLaVA-NeXT-Qwen3-4B: the root every entry extends."""
    name: str = "llava-next-qwen3-4b"
    rows: tuple[tuple[str, str], ...] = (("Table 1", "LLaVA-NeXT-Qwen3-4B"), ("Table 4", "LLaVA-NeXT-Qwen3-4B"))
    description: str = "controlled baseline: Qwen2.5-VL ViT -> MLP -> Qwen3-4B, LLaVA-NeXT anyres"

    llm: str = sourced("qwen3_4b", "§3.1 (target LLM)")
    tower: Tower = sourced(ViT(), "§3.1 (controlled baseline: LLaVA-NeXT with the Qwen2.5-VL ViT)")
    template: str = sourced("qwen_3", "the target's chat template (Qwen3, non-thinking)")
    projector: str = sourced("mlp2x_gelu", "§2.1, LLaVA-NeXT's projector")
    vision_select_layer: int = sourced(-1, "Qwen2.5-VL's merger output")
    image_aspect_ratio: str = sourced("anyres", "§3.1 (LLaVA-NeXT architecture)")
    image_grid_pinpoints: tuple[tuple[int, int], ...] = sourced(
        ((448, 896), (896, 448), (896, 896), (448, 1344), (1344, 448)), "LLaVA-NeXT grids in 448-pixel tiles")
    patch_merge: str = sourced("spatial_unpad", "LLaVA-NeXT")
    max_pixels: Optional[int] = sourced(None, "native resolution only (--image_aspect_ratio native); None: tiles")
    weight_decay: float = sourced(0.01, "Table 6")
    adam_beta2: float = sourced(0.98, "official PT_DPA_4node.sh / SFT_DPA_4node.sh (--adam_beta2 0.98)")

    # stage 1: alignment, the projector only, on 558K captions
    stage1_data: str = sourced("stage1", "§3.1 (558K LLaVA-Pretrain captions)")
    stage1_template: Optional[str] = sourced(
        None, "official PT_DPA_4node.sh: the caption instruction through the chat template (None: `template`; "
              "'plain' is LLaVA's caption-only format)")
    stage1_learning_rate: float = sourced(1e-3, "§3.1, Table 6")
    stage1_scheduler: str = sourced("warmup_stable_decay", "Table 6")
    stage1_warmup_steps: int = sourced(440, "Table 6")
    stage1_decay_steps: int = sourced(1170, "official PT_DPA_4node.sh (WSD decay 1,170 of 2,180 steps)")
    stage1_global_batch: int = sourced(512, "§3.1")
    stage1_epochs: float = sourced(2, "§3.1, Table 6")
    stage1_max_length: int = sourced(2048, "official PT_DPA_4node.sh (--max_length 2048)")
    stage1_shared_with: Optional[str] = None

    # stage 2: instruction tuning, everything trains, on 1M instructions
    stage2_data: str = sourced("stage2", "§3.1 (1M MAmmoTH-VL instructions)")
    stage2_subset: Optional[int] = None
    subset_seed: int = 0
    stage2_learning_rate: float = sourced(1e-5, "§3.1, Table 6 (LLM)")
    stage2_projector_lr: float = sourced(1e-5, "Table 6 (LLM/Proj); official register_DPA.py (aligner 1e-5)")
    stage2_vision_lr: float = sourced(2e-6, "Table 6 (ViT); official register_DPA.py")
    stage2_perceiver_lr: Optional[float] = sourced(
        None, "official register_DPA.py: the perceiver LM is in the LLM's group (None: the LLM's rate)")
    stage2_scheduler: str = sourced("cosine", "§3.1, Table 6")
    stage2_warmup_steps: int = sourced(500, "Table 6")
    stage2_global_batch: int = sourced(256, "§3.1")
    stage2_epochs: float = sourced(2, "§3.1, Table 6")
    stage2_max_length: int = sourced(8192, "official SFT_DPA_4node.sh (--max_length 8192)")
    train_vision_tower: bool = sourced(True, "Table 6 (stage 2 trains the full model, the ViT at 2e-6)")
    lora: Optional[LoRA] = None

    # the variants of Tables 2-4
    stages: tuple[int, ...] = (1, 2)       # the stages this entry trains (a stage-1-only perceiver: (1,))
    output_from: Union[None, Compose, ReinitialiseLM] = None   # a perceiver made, not trained by stage 2
    projector_budget: Optional[int] = None
    projector_depth: Optional[int] = None
    freeze_perceiver: bool = False
    instruction_context: bool = False
    aux_loss_weight: float = 0.0
    aux_loss_stages: tuple[int, ...] = sourced(
        (2,), "§4.3: the auxiliary loss helps in stage 1 but hinders in stage 2, and is reported in stage 2 only")

    @classmethod
    def source_of(cls, name: str) -> str:
        return next((f.metadata.get("source", "") for f in fields(cls) if f.name == name), "")


# ---- Table 1 ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LLaVANeXTLLaMA3_2_3B(Recipe):
    name: str = "llava-next-llama3.2-3b"
    rows: tuple = (("Table 1", "LLaVA-NeXT-LLaMA-3.2-3B"),)
    description: str = "controlled baseline on LLaMA-3.2-3B"
    llm: str = sourced("llama3_2_3b", "§3.1 (LLaMA-3.2-3B target)")
    template: str = sourced("llama_3", "the target's chat template (Llama 3)")


@dataclass(frozen=True)
class LLaVANeXTQwen3_32B(Recipe):
    name: str = "llava-next-qwen3-32b"
    rows: tuple = (("Table 1", "LLaVA-NeXT-Qwen3-32B"),)
    description: str = "controlled baseline on Qwen3-32B; stage 2 with QLoRA"
    llm: str = sourced("qwen3_32b", "§3.1 (32B target)")
    stage2_learning_rate: float = sourced(2e-4, "Table 6 (LoRA: LLM/Proj 2e-4)")
    stage2_projector_lr: float = sourced(2e-4, "Table 6 (LoRA: LLM/Proj 2e-4)")
    stage2_vision_lr: float = sourced(4e-5, "Table 6 (LoRA: ViT 4e-5)")
    stage2_epochs: float = sourced(3, "§3.1, Appendix A (3 epochs for 32B)")
    lora: Optional[LoRA] = sourced(LoRA(), "Table 6 (32B stage 2 trains LoRA weights)")


@dataclass(frozen=True)
class PerceiverQwen3_0_6B(Recipe):
    """The perceiver VLM: the baseline pipeline on Qwen3-0.6B, trained on all 1M instructions."""
    name: str = "perceiver-qwen3-0.6b"
    rows: tuple = (("Table 2", "stage 1 + stage 2 (1M)"),)
    description: str = "the perceiver VLM (LLaVA-Qwen3-0.6B), the perceiver of every DPA model"
    llm: str = sourced("qwen3_0_6b", "§3.1 DPA configuration (a Qwen3-0.6B perceiver, same ViT, same hyperparameters)")
    stage1_shared_with: Optional[str] = "perceiver-stage1-only"


@dataclass(frozen=True)
class DPAQwen3_4B(Recipe):
    name: str = "dpa-qwen3-4b"
    rows: tuple = (("Table 1", "DPA-Qwen3-4B"), ("Table 3", "stage 1 + stage 2 (1M)"), ("Table 4", "DPA-Qwen3-4B"))
    description: str = "DPA: the 1M perceiver VLM as the vision tower of Qwen3-4B"
    tower: Tower = sourced(PerceiverOf("perceiver-qwen3-0.6b"), "§2, §3.1 (the perceiver replaces the ViT)")


@dataclass(frozen=True)
class DPALLaMA3_2_3B(LLaVANeXTLLaMA3_2_3B):
    name: str = "dpa-llama3.2-3b"
    rows: tuple = (("Table 1", "DPA-LLaMA-3.2-3B"),)
    description: str = "DPA on LLaMA-3.2-3B (the Qwen3-0.6B perceiver)"
    tower: Tower = sourced(PerceiverOf("perceiver-qwen3-0.6b"), "§3.1")


@dataclass(frozen=True)
class DPAQwen3_32B(LLaVANeXTQwen3_32B):
    name: str = "dpa-qwen3-32b"
    rows: tuple = (("Table 1", "DPA-Qwen3-32B"),)
    description: str = "DPA on Qwen3-32B; stage 2 with QLoRA on the target and LoRA on the perceiver"
    tower: Tower = sourced(PerceiverOf("perceiver-qwen3-0.6b"), "§3.1")
    lora: Optional[LoRA] = sourced(
        LoRA(parts=("language_model", "perceiver_vit", "perceiver_projector", "perceiver_lm")),
        "Table 6 (LoRA weights); official SFT_DPA_lora_4node.sh (LoRA on the perceiver too)")


# ---- Table 2: the perceiver levels ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PerceiverUntrained(PerceiverQwen3_0_6B):
    name: str = "perceiver-untrained"
    rows: tuple = (("Table 2", "untrained"),)
    description: str = "pretrained ViT + Qwen3-0.6B joined by a randomly initialised projector (not trained)"
    stages: tuple = ()
    stage1_shared_with: Optional[str] = None
    output_from: Union[None, Compose, ReinitialiseLM] = sourced(Compose(), "§4.1 (randomly initialised projection)")


@dataclass(frozen=True)
class PerceiverStage1Only(PerceiverQwen3_0_6B):
    name: str = "perceiver-stage1-only"
    rows: tuple = (("Table 2", "stage 1 only"),)
    description: str = "the perceiver after its stage 1 only (558K captions)"
    stages: tuple = (1,)
    stage1_shared_with: Optional[str] = None
    output_from: Union[None, Compose, ReinitialiseLM] = sourced(Compose(projector_from_stage1=True), "§4.1")


@dataclass(frozen=True)
class Perceiver10K(PerceiverQwen3_0_6B):
    name: str = "perceiver-10k"
    rows: tuple = (("Table 2", "stage 1 + stage 2 (10K)"),)
    description: str = "the perceiver with stage 2 on a 10K subset"
    stage2_subset: Optional[int] = sourced(10_000, "Tables 2 and 3 (10K)")


@dataclass(frozen=True)
class Perceiver250K(PerceiverQwen3_0_6B):
    name: str = "perceiver-250k"
    rows: tuple = (("Table 2", "stage 1 + stage 2 (250K)"),)
    description: str = "the perceiver with stage 2 on a 250K subset (a superset of the 10K one)"
    stage2_subset: Optional[int] = sourced(250_000, "Tables 2 and 3 (250K)")


# ---- Table 3: DPA-Qwen3-4B on each perceiver level --------------------------------------------------------
@dataclass(frozen=True)
class DPAUntrainedPerceiver(DPAQwen3_4B):
    name: str = "dpa-qwen3-4b-untrained-perceiver"
    rows: tuple = (("Table 3", "untrained"), ("Table 4", "w/ untrained perceiver"))
    description: str = "DPA-Qwen3-4B with the untrained perceiver"
    tower: Tower = sourced(PerceiverOf("perceiver-untrained"), "§4.1")


@dataclass(frozen=True)
class DPAStage1OnlyPerceiver(DPAQwen3_4B):
    name: str = "dpa-qwen3-4b-stage1-only-perceiver"
    rows: tuple = (("Table 3", "stage 1 only"),)
    description: str = "DPA-Qwen3-4B with the stage-1-only perceiver"
    tower: Tower = sourced(PerceiverOf("perceiver-stage1-only"), "§4.1")


@dataclass(frozen=True)
class DPA10KPerceiver(DPAQwen3_4B):
    name: str = "dpa-qwen3-4b-10k-perceiver"
    rows: tuple = (("Table 3", "stage 1 + stage 2 (10K)"),)
    description: str = "DPA-Qwen3-4B with the 10K perceiver"
    tower: Tower = sourced(PerceiverOf("perceiver-10k"), "§4.1")


@dataclass(frozen=True)
class DPA250KPerceiver(DPAQwen3_4B):
    name: str = "dpa-qwen3-4b-250k-perceiver"
    rows: tuple = (("Table 3", "stage 1 + stage 2 (250K)"),)
    description: str = "DPA-Qwen3-4B with the 250K perceiver"
    tower: Tower = sourced(PerceiverOf("perceiver-250k"), "§4.1")


# ---- Table 4: ablations ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LargeMLP(Recipe):
    name: str = "llava-next-qwen3-4b-large-mlp"
    rows: tuple = (("Table 4", "w/ large MLP"),)
    description: str = "the baseline with an alignment MLP as large as Qwen3-0.6B"
    projector: str = sourced("large_mlp", "§4.5 (an MLP the size of Qwen3-0.6B)")
    projector_budget: Optional[int] = sourced(596_049_920, "§4.5 (Qwen3-0.6B's parameter count)")
    projector_depth: Optional[int] = sourced(5, "§4.5 (5x the hidden width: depth fixed, width solved)")


@dataclass(frozen=True)
class WithoutPerceiverLMBlocks(Recipe):
    name: str = "llava-next-qwen3-4b-perceiver-vit"
    rows: tuple = (("Table 4", "w/o perceiver LM blocks"),)
    description: str = "the baseline pipeline on the ViT trained inside the 1M perceiver"
    tower: Tower = sourced(ViTOf("perceiver-qwen3-0.6b"), "§4.2 (only the ViT weights trained in the perceiver)")


@dataclass(frozen=True)
class PerceiverRandomLM(PerceiverQwen3_0_6B):
    """The 1M perceiver with its LM blocks re-initialised. The paper does not say which ViT this row
    starts from; §4.2 runs its ablations "using the weights from our full perceiver trained with 1M visual
    instructions", so the ViT and projector keep the 1M perceiver's weights (docs/recipes.md)."""
    name: str = "perceiver-random-lm"
    rows: tuple = ()
    description: str = "the 1M perceiver with its LM blocks re-initialised (built, not trained)"
    stages: tuple = ()
    stage1_shared_with: Optional[str] = None
    output_from: Union[None, Compose, ReinitialiseLM] = sourced(ReinitialiseLM("perceiver-qwen3-0.6b"), "§4.2")


@dataclass(frozen=True)
class WithoutPerceiverLMPretraining(DPAQwen3_4B):
    name: str = "dpa-qwen3-4b-random-perceiver-lm"
    rows: tuple = (("Table 4", "w/o perceiver LM pre-training"),)
    description: str = "DPA-Qwen3-4B with randomly initialised perceiver LM blocks"
    tower: Tower = sourced(PerceiverOf("perceiver-random-lm"), "§4.2")


@dataclass(frozen=True)
class WithInstructionContext(DPAQwen3_4B):
    name: str = "dpa-qwen3-4b-instruction-context"
    rows: tuple = (("Table 4", "w/ instruction context"),)
    description: str = "the perceiver reads the question before the image (stage 2 and inference)"
    instruction_context: bool = sourced(True, "§4.3 (early fusion, training and evaluation)")
    stage1_shared_with: Optional[str] = "dpa-qwen3-4b"  # stage 1's text is the caption: no context there


@dataclass(frozen=True)
class WithPerceiverFrozen(DPAQwen3_4B):
    name: str = "dpa-qwen3-4b-frozen-perceiver"
    rows: tuple = (("Table 4", "w/ perceiver frozen"),)
    description: str = "the perceiver stays frozen in stage 2"
    freeze_perceiver: bool = sourced(True, "§4.3")
    stage1_shared_with: Optional[str] = "dpa-qwen3-4b"  # stage 1 freezes the perceiver anyway


@dataclass(frozen=True)
class UntrainedPerceiverMultiTask(DPAUntrainedPerceiver):
    name: str = "dpa-qwen3-4b-untrained-perceiver-multitask"
    rows: tuple = (("Table 4", "w/ untrained perceiver + multi-task"),)
    description: str = "the untrained perceiver with its own LM loss added in stage 2"
    aux_loss_weight: float = sourced(1.0, "§4.3 (the paper states no weight; 1.0)")
    stage1_shared_with: Optional[str] = "dpa-qwen3-4b-untrained-perceiver"


# ---- the official pipeline, end to end (the release's construction of the visual tokens) ----------------------
@dataclass(frozen=True)
class OfficialPipelineBaseline(Recipe):
    """The controlled baseline as the release builds it (modeling_llava_baseline.py): the whole image at native
    resolution, the ViT's merger MLP rebuilt at the target's width as the projector. The release's baseline LM
    reads M-RoPE positions (LB 355-362); here the target is the stock Qwen3-4B with 1-D positions, as its DPA
    target is (docs/official_dpa.md)."""
    name: str = "llava-qwen3-4b-official-pipeline"
    rows: tuple = (("official pipeline", "LLaVA-Qwen3-4B (controlled baseline)"),)
    description: str = "the baseline of the official pipeline: native resolution, merger MLP as the projector"
    image_aspect_ratio: str = sourced("native", "official release: whole images, smart resize to multiples of 28")
    image_grid_pinpoints: tuple = sourced((), "official release: no tiles")
    patch_merge: str = sourced("flat", "official release: no image_newline")
    projector: str = sourced("qwen_merger", "official modeling_llava_baseline.py 559-570 (merger MLP at the LLM width)")
    max_pixels: Optional[int] = sourced(OFFICIAL_MAX_PIXELS, "official PT_DPA_4node.sh / SFT_DPA_4node.sh line 14 (MAX_PIXELS)")


@dataclass(frozen=True)
class OfficialPipelineDPA(OfficialPipelineBaseline):
    """DPA-Qwen3-4B as the release trains it from DPA-4B-init: the Qwen-VL-native perceiver (N + 2 features per
    image, delimiters included), the official aligner, the official stage-1 prompt and schedules."""
    name: str = "dpa-qwen3-4b-official-pipeline"
    rows: tuple = (("official pipeline", "DPA-Qwen3-4B"),)
    description: str = "DPA-Qwen3-4B on the official pipeline, from DPA-4B-init's perceiver"
    tower: Tower = sourced(QwenVLPerceiverAt(), "official release: the DPA-4B-init perceiver (import-official)")
    projector: str = sourced("dpa_aligner", "official modeling_forward_visual_tokens_llava_arch.py 128-136")


ENTRIES: tuple[Recipe, ...] = tuple(cls() for cls in (
    Recipe, LLaVANeXTQwen3_32B, LLaVANeXTLLaMA3_2_3B, DPAQwen3_4B, DPAQwen3_32B, DPALLaMA3_2_3B,
    PerceiverQwen3_0_6B, PerceiverUntrained, PerceiverStage1Only, Perceiver10K, Perceiver250K,
    DPAUntrainedPerceiver, DPAStage1OnlyPerceiver, DPA10KPerceiver, DPA250KPerceiver,
    LargeMLP, WithoutPerceiverLMBlocks, PerceiverRandomLM, WithoutPerceiverLMPretraining, WithInstructionContext,
    WithPerceiverFrozen, UntrainedPerceiverMultiTask, OfficialPipelineBaseline, OfficialPipelineDPA))

REGISTRY: dict[str, Recipe] = {entry.name: entry for entry in ENTRIES}


def get(name: str) -> Recipe:
    if name not in REGISTRY:
        raise KeyError(f"unknown recipe {name!r}; `llava-dpa recipe list` shows the {len(REGISTRY)} entries")
    return REGISTRY[name]


def table(name: str) -> list[tuple[str, Recipe]]:
    """(row, entry) for every row of a paper table, in registry order."""
    return [(row, entry) for entry in ENTRIES for t, row in entry.rows if t == name]

