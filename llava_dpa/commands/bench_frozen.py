"""`llava-dpa bench-frozen`: its arguments; the work is `llava_dpa.benchmarks.frozen`'s."""
from __future__ import annotations

from llava_dpa.benchmarks.frozen import run
from llava_dpa.benchmarks.models import add_step_bench_arguments


def register(sub) -> None:
    p = sub.add_parser("bench-frozen", help="a frozen tower's cost in a training step, with and without no_grad")
    add_step_bench_arguments(p, scale=0.1, text_tokens=256, repeats=3)
    p.set_defaults(func=run)
