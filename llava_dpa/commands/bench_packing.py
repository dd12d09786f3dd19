"""`llava-dpa bench-packing`: its arguments; the work is `llava_dpa.benchmarks.packing`'s."""
from __future__ import annotations

from llava_dpa.benchmarks.models import add_training_bench_arguments
from llava_dpa.benchmarks.packing import run


def register(sub) -> None:
    p = sub.add_parser("bench-packing", help="training samples/s with and without --packing_budget")
    add_training_bench_arguments(p, image_size=112, batch_help="the padded run's --per_device_train_batch_size")
    p.add_argument("--budget", type=int, default=4096, help="the packed run's --packing_budget")
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--text-only", type=float, default=0.3, help="share of text-only samples")
    p.set_defaults(func=run)
