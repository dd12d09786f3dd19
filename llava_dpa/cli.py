"""`llava-dpa` command line. Each subcommand lives in the module that owns its concept; this file only
parses arguments and dispatches."""
from __future__ import annotations

import argparse
import sys


def _patch_llava(args):
    from llava_dpa.llava_integration import patching

    if args.check:
        rows = patching.report(args.llava_dir)
        for name, state, summary in rows:
            print(f"{name:24s} {state:10s} {summary}")
        version = patching.installed_llava_version(args.llava_dir)
        print(f"llava-torch {version} at {patching.llava_site_dir(args.llava_dir) / 'llava'}")
        return 0 if all(state == "applied" for _, state, _ in rows) else 1
    if args.revert:
        patching.revert_all(llava_dir=args.llava_dir)
        return 0
    patching.apply_all(llava_dir=args.llava_dir)
    return 0


def _zoo(args):
    from llava_dpa.zoo import build_zoo

    paths = build_zoo(args.output)
    for key, value in paths.items():
        print(f"{key:20s} {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llava-dpa", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("patch-llava", help="apply patches/ to the installed llava (idempotent)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="report each patch's state; exit 1 unless all applied")
    group.add_argument("--revert", action="store_true", help="undo the patches")
    p.add_argument("--llava-dir", metavar="DIR", default=None,
                   help="the folder that contains the llava/ package to work on, e.g. a copy "
                        "(default: the llava this Python imports)")
    p.set_defaults(func=_patch_llava)

    p = sub.add_parser("zoo", help="build the tiny offline model zoo and synthetic data (for tests and demos)")
    p.add_argument("--output", required=True)
    p.set_defaults(func=_zoo)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    """Subcommands that live with their feature: each module's register(subparsers)."""
    from llava_dpa import text_path
    from llava_dpa.analysis import bench, bench_cache, bench_frozen, bench_packing, commands
    from llava_dpa.data import feature_cache, subset
    from llava_dpa.perceiver import compose, extract
    from llava_dpa.eval import lmms_tasks, offline, report
    from llava_dpa.projectors import large_mlp
    from llava_dpa.recipes import commands as recipes
    from llava_dpa.official import importer

    return [recipes.register, compose.register, extract.register, subset.register, large_mlp.register, report.register, offline.register,
            lmms_tasks.register, text_path.register,
            commands.register, bench.register, importer.register, feature_cache.register,
            bench_packing.register, bench_cache.register, bench_frozen.register]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after `--` is passed through (e.g. LLaVA flags for `recipe show/run`), never parsed here.
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if passthrough:
        if not hasattr(args, "extra"):
            parser.error(f"`llava-dpa {args.command}` takes no flags after --")
        args.extra = passthrough
    try:
        return args.func(args) or 0
    except (ValueError, OSError, RuntimeError, KeyError) as exc:
        print(f"llava-dpa {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
