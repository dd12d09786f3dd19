"""`llava-dpa extract-vit`: its arguments; the work is `llava_dpa.convert.vit`'s."""
from __future__ import annotations

from llava_dpa.convert.vit import extract_vit


def register(sub) -> None:
    p = sub.add_parser("extract-vit", help="write a perceiver's ViT (fine-tuned) as a plain tower checkpoint")
    p.add_argument("checkpoint", help="a perceiver VLM folder or a DPA checkpoint")
    p.add_argument("--output", required=True)
    p.set_defaults(func=lambda a: print(extract_vit(a.checkpoint, a.output)))
