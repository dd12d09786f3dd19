"""`llava-dpa projector-budget`: its arguments; the work is `llava_dpa.projectors.large_mlp`'s."""
from __future__ import annotations

from llava_dpa.projectors.large_mlp import plan


def register(sub) -> None:
    p = sub.add_parser("projector-budget", help="width/depth of a large_mlp projector matching a parameter budget")
    p.add_argument("--in", dest="d_in", type=int, required=True, help="mm_hidden_size (the ViT's output width)")
    p.add_argument("--out", dest="d_out", type=int, required=True, help="the target LLM's hidden size")
    p.add_argument("--budget", type=int, required=True, help="parameters to match, e.g. Qwen3-0.6B's 596049920")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--depth", type=int, default=None)

    def show(a):
        result = plan(a.d_in, a.d_out, a.budget, a.width, a.depth)
        print(" ".join(f"{k}={v:.4%}" if k == "relative_error" else f"{k}={v}" for k, v in result.items()))
        if abs(result["relative_error"]) > 0.01:
            raise ValueError(f"no {('depth' if a.width else 'width')} reaches the budget within 1%: {result}")
        print(f"flags: --mm_projector_type large_mlp --mm_projector_width {result['width']} "
              f"--mm_projector_depth {result['depth']}")

    p.set_defaults(func=show)
