"""`python -m llava_dpa.gpu_check run OUTDIR [--size smoke] ...`: the prepared GPU check (scripts/gpu/check.sh runs
it; docs/gpu.md). `python -m llava_dpa.gpu_check unit NAME ...` runs one check; the runner starts it."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile

from llava_dpa.gpu_check.runner import attn_refusal, execute, plan, select
from llava_dpa.gpu_check.runner import run as run_all

ATTN = ("sdpa", "flash_attention_2")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llava_dpa.gpu_check")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="every check; writes OUTDIR/gpu_check.json")
    run.add_argument("outdir")
    run.add_argument("--size", choices=("full", "smoke"), default="full",
                     help="full: the paper's sizes on CUDA; smoke: tiny, on a CPU")
    run.add_argument("--device", default=None, help="default: cuda for full, cpu for smoke")
    run.add_argument("--isolation", choices=("process", "inline"), default=None,
                     help="each check in its own process (default for full) or all in this one (default for smoke)")
    run.add_argument("--workdir", default=None, help="where the models are written (default: a temporary folder)")
    run.add_argument("--only", nargs="+", default=None, metavar="CHECK",
                     help=f"these checks and what they need: {' '.join(u.name for u in plan())}")
    run.add_argument("--deadline", type=float, default=None, help="seconds for the whole run")
    run.add_argument("--attn", choices=ATTN, default="sdpa",
                     help="the target's attention in the checks' models; flash_attention_2 (flash-attn installed) "
                          "runs the packed flash-attention path, with --only naming checks other than forward")
    one = sub.add_parser("unit", help="one check (the runner's child process)")
    one.add_argument("name")
    one.add_argument("--size", required=True)
    one.add_argument("--workdir", required=True)
    one.add_argument("--device", required=True)
    one.add_argument("--result", required=True)
    one.add_argument("--limit", type=float, default=None, help="the check's seconds (bounds the processes it starts)")
    one.add_argument("--attn", choices=ATTN, default="sdpa")
    args = parser.parse_args(argv)

    if args.command == "unit":
        result = execute(args.name, args.size, args.workdir, args.device, args.limit, args.attn)
        with open(args.result, "w") as f:
            json.dump(result, f, default=str)
        return 0

    device = args.device or ("cuda" if args.size == "full" else "cpu")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("gpu-check: no CUDA device here; run the CPU smoke instead (scripts/gpu/check.sh --cpu-smoke OUTDIR)",
                  file=sys.stderr)
            return 2
    try:
        units = select(plan("full") if args.only else plan(args.size), args.only)
    except ValueError as exc:
        print(f"gpu-check: {exc}", file=sys.stderr)
        return 2
    refusal = attn_refusal(args.attn, device, units)
    if refusal:
        print(f"gpu-check: {refusal}", file=sys.stderr)
        return 2
    isolation = args.isolation or ("process" if args.size == "full" else "inline")
    if args.workdir:
        return run_all(args.outdir, args.size, device, isolation, args.workdir, args.only, args.deadline, args.attn)
    with tempfile.TemporaryDirectory(prefix="llava-dpa-gpu-check-") as workdir:
        return run_all(args.outdir, args.size, device, isolation, workdir, args.only, args.deadline, args.attn)


if __name__ == "__main__":
    sys.exit(main())
