"""`llava-dpa export-hf`: its arguments; the work is `llava_dpa.export.hf`'s."""
from __future__ import annotations

from llava_dpa.export.hf import DTYPES, export_hf


def register(sub) -> None:
    p = sub.add_parser("export-hf", help="write a checkpoint as a transformers model folder (safetensors, remote "
                                         "code: AutoModelForImageTextToText / AutoProcessor with trust_remote_code)")
    p.add_argument("checkpoint", help="a llava-dpa checkpoint: baseline, DPA (either perceiver), LoRA (merged)")
    p.add_argument("output", help="a new (or empty) folder")
    p.add_argument("--model-base", default=None, help="the base LLM, for LoRA checkpoints")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="the weights' dtype in the export")
    p.set_defaults(func=lambda a: export_hf(a.checkpoint, a.output, a.model_base, a.dtype))
