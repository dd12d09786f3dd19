"""LLaVA's shipped scripts use flags that current transformers renamed or rejects on CPU."""
from __future__ import annotations

import sys
import warnings

import torch

RENAMED = {"--evaluation_strategy": "--eval_strategy"}


def _value_after(argv, flag):
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _drop(argv, flag):
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == flag:
            skip = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
    return out


def normalize(argv: list[str]) -> list[str]:
    argv = list(argv)
    for old, new in RENAMED.items():
        for i, a in enumerate(argv):
            if a == old or a.startswith(old + "="):
                argv[i] = a.replace(old, new, 1)
                warnings.warn(f"{old} is now {new} in transformers; translated")
    if not torch.cuda.is_available():
        if _value_after(argv, "--tf32") not in (None, "False", "false"):
            argv = _drop(argv, "--tf32")
            warnings.warn("--tf32 needs a CUDA GPU; ignored on this CPU machine")
        if _value_after(argv, "--bf16") in ("True", "true") and _value_after(argv, "--use_cpu") is None:
            argv += ["--use_cpu", "True"]
    return argv


def parse(parser, argv=None):
    argv = normalize(sys.argv[1:] if argv is None else argv)
    return parser.parse_args_into_dataclasses(args=argv)
