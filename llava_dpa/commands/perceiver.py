"""`llava-dpa make-perceiver` and `llava-dpa reinit-perceiver-lm`: its arguments; the work is `llava_dpa.convert.perceiver`'s."""
from __future__ import annotations

from llava_dpa.convert.perceiver import make_perceiver, make_qwen_vl_perceiver, reinitialise_perceiver_lm


def register(sub) -> None:
    p = sub.add_parser("make-perceiver", help="compose an untrained perceiver VLM from a ViT and an LM")
    p.add_argument("--vision", required=True, help="ViT folder (CLIP, SigLIP, SigLIP2, Qwen2.5-VL vision)")
    p.add_argument("--language-model", required=True, help="LM folder, e.g. Qwen3-0.6B")
    p.add_argument("--output", required=True)
    p.add_argument("--projector", default="mlp2x_gelu", help="LLaVA projector type (default mlp2x_gelu)")
    p.add_argument("--version", default=None, help="the perceiver's template (default: its LM family's)")
    p.add_argument("--select-layer", type=int, default=-1, help="ViT feature layer (-1 for Qwen2.5-VL)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-lm-init", action="store_true", help="re-initialise the LM blocks (ablation)")
    p.add_argument("--projector-weights", default=None, help="a stage-1 mm_projector.bin to load into the projector")
    p.add_argument("--native", action="store_true",
                   help="a Qwen-VL-native perceiver (the official release's: merger MLP at the LM width, M-RoPE LM); "
                        "use it as --vision_tower dpa:OUTPUT")
    p.add_argument("--rope-theta", type=float, default=None, help="--native: the perceiver LM's rotary base (default: its own)")
    p.add_argument("--mrope-section", type=int, nargs=3, default=None, help="--native: for a vision-only ViT config")

    def compose(a):
        if a.native:
            return print(make_qwen_vl_perceiver(a.vision, a.language_model, a.output, a.seed, a.rope_theta, a.mrope_section))
        print(make_perceiver(a.vision, a.language_model, a.output, a.projector, a.version, a.select_layer, a.seed,
                             a.random_lm_init, a.projector_weights))

    p.set_defaults(func=compose)

    p = sub.add_parser("reinit-perceiver-lm", help="a trained perceiver with its LM blocks re-initialised (ablation)")
    p.add_argument("perceiver", help="a trained perceiver VLM folder")
    p.add_argument("--output", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda a: print(reinitialise_perceiver_lm(a.perceiver, a.output, a.seed)))
