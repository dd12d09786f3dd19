"""`llava-dpa` command line: the top of the house. It only builds the parser from the modules in
`llava_dpa/commands/` (one per concept) and dispatches; nothing in the library imports it."""
from __future__ import annotations

import argparse
import sys

from llava_dpa.commands import patch_llava


def build_parser(patch_tool_only: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llava-dpa", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    patch_llava.register(sub)
    if not patch_tool_only:
        for command in _library_commands():
            command.register(sub)
    return parser


def _library_commands():
    # Lazy: `llava-dpa patch-llava` runs on a llava not yet patched, and these
    # commands import llava (through the model classes) when they load.
    from llava_dpa.commands import (analyze, bench, bench_cache, bench_frozen, bench_packing, cache_features,
                                    eval as eval_command, export_hf, export_llm, extract_vit, import_official,
                                    lmms_task, perceiver, projector_budget, recipe, report, score, serve,
                                    study, subset_data, zoo)

    return [zoo, recipe, eval_command, perceiver, extract_vit, subset_data, projector_budget, report, score, lmms_task,
            export_llm, export_hf, serve, analyze, bench, import_official, cache_features, bench_packing, bench_cache,
            bench_frozen, study]


#: the optional extras of setup.py, by the top-level module each one installs: a command that needs a module
#: that is missing names the extra to install instead of ending in a traceback (tests/test_cli_extras.py
#: checks this table against the installed package's metadata)
EXTRA_OF_MODULE = {
    "fastapi": "serve", "uvicorn": "serve", "openai": "serve", "gradio": "serve", "playwright": "serve",
    "lmms_eval": "eval", "matplotlib": "analysis", "bitsandbytes": "qlora", "deepspeed": "deepspeed",
    "flash_attn": "flash-attn", "vllm": "vllm",
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The extra whose module `exc` found missing, or None when it is not an optional extra's."""
    return EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after `--` is passed through (e.g. LLaVA flags for `recipe show/run`), never parsed here.
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = build_parser(patch_tool_only=argv[:1] == ["patch-llava"])
    args = parser.parse_args(argv)
    if passthrough:
        if not hasattr(args, "extra"):
            parser.error(f"`llava-dpa {args.command}` takes no flags after --")
        args.extra = passthrough
    try:
        return args.func(args) or 0
    except ModuleNotFoundError as exc:
        extra = missing_extra(exc)
        if extra is None:
            raise
        print(f"llava-dpa {args.command}: error: this command needs {exc.name!r}, which is not installed; it comes "
              f"with the {extra!r} extra: pip install 'llava-dpa[{extra}]'", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError, KeyError) as exc:
        print(f"llava-dpa {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
