"""`llava-dpa bench`: its arguments; the work is `llava_dpa.benchmarks.throughput`'s."""
from __future__ import annotations

from llava_dpa.benchmarks.throughput import _DTYPES, OPS, run


def register(sub) -> None:
    p = sub.add_parser("bench", help="prefill / decode / train-step cost of DPA vs its baseline: measured, analytic")
    p.add_argument("--preset", default=None, help="target preset (qwen3-4b, qwen3-32b) built with random weights")
    p.add_argument("--scale", type=float, default=1.0,
                   help="--preset: shrink widths, heads and depths by this factor (e.g. 0.25 on a CPU)")
    p.add_argument("--perceiver", default="llava", help="--preset: the perceiver's form, llava (the paper's, on "
                   "tiles) or qwen-vl (the official release's, whole images at native resolution, both models)")
    p.add_argument("--dpa", default=None, help="a DPA checkpoint")
    p.add_argument("--baseline", default=None, help="its controlled baseline checkpoint")
    p.add_argument("--model-base", default=None)
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="bfloat16")
    p.add_argument("--image-size", type=int, default=448,
                   help="the synthetic image's side: --preset's ViT tile, and the whole image for native-resolution towers")
    p.add_argument("--text-tokens", type=int, default=256)
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), help="the operations to time (default: all)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="also write the results as JSON here")
    p.set_defaults(func=run)
