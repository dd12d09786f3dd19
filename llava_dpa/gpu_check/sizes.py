"""The check's two sizes. `full`: the paper's models with random weights, from the published configs kept in
`analysis/cost.PRESETS` (Qwen2.5-VL-3B's ViT, Qwen3-0.6B as the perceiver LM, Qwen3-4B as the target, and a
Qwen3-32B-wide target cut to a few layers for QLoRA), bf16 on CUDA. `smoke`: the same shapes shrunk by
`benchmarks/models.scaled_presets` (head widths and the vocabulary kept) on small images, so that a CPU runs
every check of the same code in seconds."""
from __future__ import annotations

from dataclasses import dataclass, field

from llava_dpa.analysis.cost import PRESETS
from llava_dpa.benchmarks.models import scale_lm, scaled_presets

FORMS = ("llava", "qwen-vl")  # the paper's LLaVA-NeXT form (perceiver on tiles); the official release's form

#: the registry entries each form trains (llava_dpa.recipes.paper): (baseline, DPA)
ENTRIES = {"llava": ("llava-next-qwen3-4b", "dpa-qwen3-4b"),
           "qwen-vl": ("llava-qwen3-4b-official-pipeline", "dpa-qwen3-4b-official-pipeline")}
QLORA_ENTRY = "dpa-qwen3-32b"


@dataclass(frozen=True)
class Size:
    name: str
    scale: float                 # benchmarks/models.scaled_presets' factor (1: the published configs)
    qlora_layers: int            # the 32B-wide target's depth
    image_size: int              # the ViT's tile (llava form) and the synthetic images' side
    pinpoints: str | None        # --image_grid_pinpoints override (None: the recipe's)
    max_pixels: int | None       # --max_pixels override for the native form (None: the recipe's)
    text_tokens: int             # the prompt's text tokens in forward / generate / bench
    generate_tokens: int
    train_samples: int           # the synthetic training set; one step of batch 2 reads two of them
    max_length: int              # --model_max_length of the training checks
    packing_samples: int         # the padded batch of the packed-against-padded check
    bench: dict = field(default_factory=dict)          # llava-dpa bench's repeats / decode steps
    bench_packing: dict = field(default_factory=dict)  # llava-dpa bench-packing's arguments
    dtype: str = "bfloat16"
    vocab_size: int | None = None  # None: the published 151,936; the smoke's tiny tokenizer needs 512
    bench_packing_in_plan: bool = True  # the smoke leaves it out: two training processes, ~50 s on 2 cores
    #: the ZeRO-3 check's model: None, the built components; a factor, components built at that scale of the
    #: paper's (it proves the multi-GPU path, launcher to gathered save, not memory at 4B: train/F measures that)
    deepspeed_scale: float | None = None
    deepspeed_precision: str = "bf16"  # the registry's; the run's --bf16 / --fp16 and the ZeRO config's "auto"


FULL = Size("full", scale=1.0, qlora_layers=4, image_size=448, pinpoints=None, max_pixels=None, text_tokens=361,
            generate_tokens=16, train_samples=8, max_length=2048, packing_samples=4,
            bench=dict(repeats=5, warmup=1, decode_steps=16),
            bench_packing=dict(preset="qwen3-4b", scale=0.25, samples=96, batch_size=8, budget=8192, image_size=448,
                               max_length=2048, text_only=0.3),
            deepspeed_scale=0.25)
SMOKE = Size("smoke", scale=0.02, qlora_layers=1, image_size=56, pinpoints="[(56, 112), (112, 56), (112, 112)]",
             max_pixels=112 * 112, text_tokens=12, generate_tokens=6, train_samples=4, max_length=512,
             packing_samples=3, bench=dict(repeats=1, warmup=0, decode_steps=2),
             bench_packing=dict(preset="qwen3-4b", scale=0.02, samples=6, batch_size=3, budget=512, image_size=56,
                                max_length=512, text_only=0.3), vocab_size=512, bench_packing_in_plan=False,
             # fp32 until training casts the projector it builds to the run's dtype under ZeRO-3: in bf16,
             # deepspeed.initialize stops at stage3's defragment (one flat buffer, one dtype; the fp32 projector
             # beside the bf16 weights zero.Init made). Then bf16, the GPU's.
             deepspeed_precision="fp32")
SIZES = {s.name: s for s in (FULL, SMOKE)}


def configs(size: Size, scale: float | None = None) -> dict:
    """{"vit", "perceiver_lm", "target", "qlora_target"}: the component configs at this size (or at `scale` of the
    paper's, with this size's vocabulary)."""

    found = scaled_presets("qwen3-4b", size.scale if scale is None else scale)
    found["qlora_target"] = dict(scale_lm(PRESETS["qwen3-32b"], size.scale), num_hidden_layers=size.qlora_layers)
    if size.vocab_size:
        for key in ("perceiver_lm", "target", "qlora_target"):
            found[key]["vocab_size"] = size.vocab_size
    return found
