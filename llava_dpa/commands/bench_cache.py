"""`llava-dpa bench-cache`: its arguments; the work is `llava_dpa.benchmarks.feature_cache`'s."""
from __future__ import annotations

from llava_dpa.benchmarks.feature_cache import run
from llava_dpa.benchmarks.models import add_step_bench_arguments


def register(sub) -> None:
    p = sub.add_parser("bench-cache", help="stage-1 step time of DPA and its baseline, towers live and cached")
    add_step_bench_arguments(p, scale=0.25, text_tokens=361, repeats=7)
    p.set_defaults(func=run)
