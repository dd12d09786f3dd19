"""`llava-dpa import-official`: its arguments; the work is `llava_dpa.official.importer`'s."""
from __future__ import annotations

from llava_dpa.official.importer import import_official


def register(sub) -> None:
    p = sub.add_parser("import-official", help="convert an official DPA checkpoint (DPA-4B, DPA-4B-init) to LLaVA format")
    p.add_argument("source", help="the official checkpoint folder (merged layout) or the split layout's root")
    p.add_argument("--output", required=True)
    p.add_argument("--vit-config", default=None, help="folder with the Qwen2.5-VL config.json (vit_path)")
    p.add_argument("--perceiver-lm-config", default=None, help="folder with the perceiver LM's config.json (llm_path)")
    p.add_argument("--target-config", default=None, help="folder with the target's config.json (thinker_name_or_path)")
    p.add_argument("--target-tokenizer", default=None, help="the target's (Qwen3) tokenizer folder")
    p.add_argument("--perceiver-tokenizer", default=None, help="the perceiver's (Qwen2.5-VL) tokenizer folder")
    p.add_argument("--perceiver-system-prompt", default=None,
                   help="a system prompt for the perceiver (default none, as the official training; its evaluation "
                        "uses 'You are a helpful assistant.')")
    p.set_defaults(func=lambda a: print(import_official(
        a.source, a.output, vit_config=a.vit_config, perceiver_lm_config=a.perceiver_lm_config,
        target_config=a.target_config, target_tokenizer=a.target_tokenizer, perceiver_tokenizer=a.perceiver_tokenizer,
        perceiver_system_prompt=a.perceiver_system_prompt)))
