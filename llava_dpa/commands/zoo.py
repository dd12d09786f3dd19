"""`llava-dpa zoo`: build the tiny offline model zoo (`llava_dpa.zoo`)."""
from __future__ import annotations

from llava_dpa.zoo import build_zoo


def _zoo(args) -> int:
    paths = build_zoo(args.output)
    for key, value in paths.items():
        print(f"{key:20s} {value}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("zoo", help="build the tiny offline model zoo and synthetic data (for tests and demos)")
    p.add_argument("--output", required=True)
    p.set_defaults(func=_zoo)
