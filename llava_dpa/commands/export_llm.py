"""`llava-dpa export-llm`: its arguments; the work is `llava_dpa.text_path`'s."""
from __future__ import annotations

from llava_dpa.text_path import export_language_model


def register(sub) -> None:
    p = sub.add_parser("export-llm", help="write a checkpoint's target LLM as a plain language model "
                                          "(for text-only harnesses such as lm-evaluation-harness)")
    p.add_argument("checkpoint")
    p.add_argument("output")
    p.add_argument("--model-base", default=None, help="the base LLM, for LoRA or projector-only checkpoints")
    p.set_defaults(func=lambda a: print(export_language_model(a.checkpoint, a.output, a.model_base)))
