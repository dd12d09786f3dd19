"""`llava-dpa subset-data`: a deterministic subset of a LLaVA-format file (the perceiver ladder's
10K / 250K / 1M stage-2 sets).

The records are ranked once by a seeded permutation and the first N are kept, in their original order:
the same seed gives the same subset, and a larger N is a superset of a smaller N.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from llava_dpa.data.dataset import load_records


def subset_indices(total: int, n: int, seed: int) -> list[int]:
    if n <= 0:
        raise ValueError(f"--n must be positive (got {n})")
    if n > total:
        raise ValueError(f"--n {n} is larger than the {total} records in the input")
    order = list(range(total))
    random.Random(seed).shuffle(order)
    return sorted(order[:n])


def write_subset(input_path: str, n: int, seed: int, output_path: str) -> int:
    records = load_records(input_path)
    chosen = [records[i] for i in subset_indices(len(records), n, seed)]
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "w") as f:
        if output_path.endswith(".jsonl"):
            f.writelines(json.dumps(r) + "\n" for r in chosen)
        else:
            json.dump(chosen, f)
    tmp.replace(out)
    return len(chosen)
