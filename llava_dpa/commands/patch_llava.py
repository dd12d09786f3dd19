"""`llava-dpa patch-llava`: apply, check or revert patches/ (`llava_dpa.patching`). It must run before llava is
patched, so it imports nothing that imports llava."""
from __future__ import annotations

from llava_dpa import patching


def _patch_llava(args) -> int:
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


def register(sub) -> None:
    p = sub.add_parser("patch-llava", help="apply patches/ to the installed llava (idempotent)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="report each patch's state; exit 1 unless all applied")
    group.add_argument("--revert", action="store_true", help="undo the patches")
    p.add_argument("--llava-dir", metavar="DIR", default=None,
                   help="the folder that contains the llava/ package to work on, e.g. a copy "
                        "(default: the llava this Python imports)")
    p.set_defaults(func=_patch_llava)
