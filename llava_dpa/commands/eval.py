"""`llava-dpa eval list | show | run`: the paper's evaluation protocols (`llava_dpa/recipes/evaluation.py`),
as `llava-dpa recipe` is for its trainings. scripts/eval/run_paper_suite.sh is `eval run --from-environment`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields

from llava_dpa.recipes import evaluation

PLACEHOLDER = "CHECKPOINT"
TYPES = {"num_processes": int, "limit": evaluation.number, "mm_tasks": evaluation.task_list,
         "text_tasks": evaluation.task_list}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_options(parser) -> None:
    """One flag per field of EvalOptions (default None: the field's own default applies)."""
    group = parser.add_argument_group("options (each an environment variable of run_paper_suite.sh)")
    env = {var.flag: var.name for var in evaluation.ENVIRONMENT}
    for f in fields(evaluation.EvalOptions):
        flag = _flag(f.name)
        help = f"{f.metadata['help']} ({env[flag]}; default: {f.default})"
        if f.type in (bool, "bool"):
            group.add_argument(flag, action="store_true", default=None, help=help)
        else:
            group.add_argument(flag, type=TYPES.get(f.name, str), default=None, help=help)


def _options(args) -> evaluation.EvalOptions:
    given = {f.name: getattr(args, f.name) for f in fields(evaluation.EvalOptions)}
    return evaluation.EvalOptions(**{k: v for k, v in given.items() if v is not None})


def _value(value) -> str:
    return ",".join(value) if isinstance(value, tuple) else repr(value)


def _list(args) -> int:
    print(f"{'protocol':<10} description")
    for protocol in evaluation.PROTOCOLS:
        print(f"{protocol.name:<10} {protocol.description}")
    return 0


def _show(args) -> int:
    protocol, options = evaluation.get(args.protocol), _options(args)
    checkpoint = args.checkpoint or PLACEHOLDER
    output = args.output or (None if args.checkpoint else "OUT")
    steps = evaluation.render(protocol, checkpoint, output, options)
    rows = evaluation.settings_table(protocol)
    if args.json:
        print(json.dumps({"protocol": protocol.name, "description": protocol.description,
                          "settings": [{"setting": n, "value": v, "source": s} for n, v, s in rows],
                          "commands": [list(step.command) for step in steps]}, indent=2))
        return 0
    print(f"{protocol.name}: {protocol.description}")
    print("\nsettings (value, source; None: the task's or the harness's own):")
    for name, value, source in rows:
        print(f"  {name:<30} {_value(value):<32} {source}")
    print(f"\ncommands ({checkpoint} -> {output or evaluation.default_output(checkpoint)}):")
    for step in steps:
        print(f"  # {step.description}\n  {evaluation.shell_line(step.command)[2:]}")
    return 0


def _from_environment(args, parser) -> None:
    """Fill every option not given on the command line from run_paper_suite.sh's environment variables."""
    positional = [args.checkpoint] + ([args.output] if args.output else [])
    env = parser.parse_args(evaluation.environment_arguments(os.environ) + positional)
    for name in [f.name for f in fields(evaluation.EvalOptions)] + ["protocol", "dry_run"]:
        if getattr(args, name) in (None, False):
            setattr(args, name, getattr(env, name))


def _run(args) -> int:
    if args.from_environment:
        _from_environment(args, args.run_parser)
    try:
        evaluation.run(args.protocol or "default", args.checkpoint, args.output, _options(args),
                       dry_run=bool(args.dry_run))
    except evaluation.CommandFailed as exc:
        print(f"llava-dpa eval: {exc}", file=sys.stderr)
        return exc.returncode
    except evaluation.EvalError as exc:
        print(f"llava-dpa eval: error: {exc}", file=sys.stderr)
        return exc.code
    return 0


def _environment_table() -> str:
    rows = "\n".join(f"  {var.name:<18} {var.flag}" + (" (any non-empty value)" if var.switch else "")
                     for var in evaluation.ENVIRONMENT)
    return ("with --from-environment (scripts/eval/run_paper_suite.sh), these variables give the flags not given "
            f"on the command line (an empty one counts as unset):\n{rows}")


def register(sub) -> None:
    p = sub.add_parser("eval", help="the paper's evaluation protocols: list, show, run (Table 1's 11 benchmarks)")
    esub = p.add_subparsers(dest="eval_command", required=True)

    q = esub.add_parser("list", help="the protocols")
    q.set_defaults(func=_list)

    q = esub.add_parser("show", help="a protocol's settings with their sources, and its commands")
    q.add_argument("protocol", help="default or official (llava-dpa eval list)")
    q.add_argument("--checkpoint", help=f"render the commands for this checkpoint (default: {PLACEHOLDER})")
    q.add_argument("--output", help="its output folder (default: OUT, or eval_results/<checkpoint's name>)")
    q.add_argument("--json", action="store_true")
    _add_options(q)
    q.set_defaults(func=_show)

    q = esub.add_parser("run", help="evaluate a checkpoint (= scripts/eval/run_paper_suite.sh)",
                        epilog=_environment_table(), formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("checkpoint")
    q.add_argument("output", nargs="?", help="the output folder (default: eval_results/<checkpoint's name>)")
    q.add_argument("--protocol", default=None, help="default (each task's own settings) or official (the release's)")
    q.add_argument("--dry-run", action="store_true", default=None, help="print the commands only")
    q.add_argument("--from-environment", action="store_true",
                   help="read the flags not given from run_paper_suite.sh's environment variables (below)")
    _add_options(q)
    q.set_defaults(func=_run, run_parser=q)
