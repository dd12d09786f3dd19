"""`llava-dpa subset-data`: its arguments; the work is `llava_dpa.data.subset`'s."""
from __future__ import annotations

from llava_dpa.data.subset import write_subset


def register(sub) -> None:
    p = sub.add_parser("subset-data", help="write a deterministic N-record subset of a LLaVA-format json/jsonl")
    p.add_argument("--input", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True)
    p.set_defaults(func=lambda a: print(f"wrote {write_subset(a.input, a.n, a.seed, a.output)} records to {a.output}"))
