"""`llava-dpa recipe list | show | run | output`: the paper's runs from the registry."""
from __future__ import annotations

import json
from dataclasses import fields

from llava_dpa.recipes import paper
from llava_dpa.recipes.render import output_dir, shared_stage1_owner, stage1_dir, stage_command
from llava_dpa.recipes.runner import run_entry
from llava_dpa.recipes.settings import load_settings

TABLES = ("Table 1", "Table 2", "Table 3", "Table 4")
SKIP = {"name", "rows", "description"}


def _list(args) -> int:
    entries = [e for _, e in paper.table(args.table)] if args.table else list(paper.ENTRIES)
    if args.names:
        print("\n".join(dict.fromkeys(e.name for e in entries)))
        return 0
    print(f"{'entry':<44} {'stages':<7} rows")
    for entry in dict.fromkeys(entries):
        rows = "; ".join(f"{t}: {r}" for t, r in entry.rows) or "(built for another row)"
        stages = ",".join(map(str, entry.stages)) or "built"
        print(f"{entry.name:<44} {stages:<7} {rows}")
        print(f"{'':<44} {'':<7} {entry.description}")
    return 0


def _hyperparameters(entry) -> list[tuple[str, str, str]]:
    root = paper.Recipe()
    rows = []
    for f in fields(entry):
        if f.name in SKIP:
            continue
        value = getattr(entry, f.name)
        inherited = "" if value == getattr(root, f.name) or type(entry) is paper.Recipe else " (differs from the root)"
        rows.append((f.name, repr(value), f.metadata.get("source", "") + inherited))
    return rows


def _show(args) -> int:
    entry = paper.get(args.name)
    settings = load_settings(args.settings)
    stages = [args.stage] if args.stage else list(entry.stages)
    if args.json:
        payload = {"entry": entry.name, "rows": entry.rows, "stages": {}}
        for s in stages:
            cmd = stage_command(entry, s, settings, args.extra)
            payload["stages"][str(s)] = {"command": cmd.command, "output": str(cmd.output),
                                         "arguments": resolved_arguments(cmd.argv)}
        print(json.dumps(payload, indent=2, default=str))
        return 0
    print(f"{entry.name}: {entry.description}")
    print("rows: " + ("; ".join(f"{t}: {r}" for t, r in entry.rows) or "none (built for another row)"))
    print(f"output: {output_dir(entry, settings)}")
    print("\nhyperparameters (value, source):")
    for name, value, source in _hyperparameters(entry):
        print(f"  {name:<24} {value:<40} {source}")
    for s in stages:
        cmd = stage_command(entry, s, settings, args.extra)
        owner = shared_stage1_owner(entry)
        note = f" (the same training as {owner.name}'s stage 1, at {stage1_dir(entry, settings)})" \
            if s == 1 and owner is not entry else ""
        print(f"\nstage {s}{note}:\n  {cmd.shell()}")
        print("  resolved: " + json.dumps(resolved_arguments(cmd.argv), default=str))
    if not stages:
        print(f"\n{entry.name} is built, not trained: `llava-dpa recipe run {entry.name} --dry-run` shows how")
    return 0


def resolved_arguments(argv: list[str]) -> dict:
    """The training arguments the command sets, as LLaVA's parser reads them (every other one is LLaVA's or
    transformers' default)."""
    import transformers

    # Lazy: LLaVA's training arguments import peft and with it bitsandbytes (3 s at every `llava-dpa` start);
    # only `recipe show` reads them.
    from llava_dpa.training import flags, resolution

    ModelArguments = flags.ModelArguments
    parser = transformers.HfArgumentParser((ModelArguments, flags.DataArguments, flags.TrainingArguments))
    namespace, _ = parser.parse_known_args(argv)
    given = {a.dest for a in parser._actions if any(opt in argv for opt in a.option_strings)}
    values = {k: v for k, v in vars(namespace).items() if k in given}
    model = ModelArguments(**{k: v for k, v in values.items() if k in {f.name for f in fields(ModelArguments)}})
    return {"stage": int(resolution.decide_stage(model)), **values}


def _run(args) -> int:
    run_entry(args.name, load_settings(args.settings), stage=args.stage, extra=args.extra,
              with_prerequisites=args.with_prerequisites, dry_run=args.dry_run)
    return 0


def _output(args) -> int:
    print(output_dir(paper.get(args.name), load_settings(args.settings)))
    return 0


def register(sub) -> None:
    p = sub.add_parser("recipe", help="the paper's runs: list, show, run (see docs/recipes.md)")
    rsub = p.add_subparsers(dest="recipe_command", required=True)

    q = rsub.add_parser("list", help="every entry of the registry, with its table rows")
    q.add_argument("--table", choices=TABLES, help="only the entries of one table")
    q.add_argument("--names", action="store_true", help="names only, one per line (for scripts)")
    q.set_defaults(func=_list)

    def common(q, extra=True):
        q.add_argument("name", help="a registry entry (llava-dpa recipe list)")
        q.add_argument("--settings", help="cluster settings YAML (default: $LLAVA_DPA_SETTINGS; LLAVA_DPA_* overrides)")
        if extra:
            q.add_argument("--stage", type=int, choices=(1, 2), help="one stage only")
            q.set_defaults(extra=[])  # LLaVA flags after `--` replace or extend the recipe's (llava_dpa.cli.main)

    q = rsub.add_parser("show", help="the full command and resolved configuration of an entry")
    common(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_show)

    q = rsub.add_parser("run", help="train an entry (skips complete steps; resumes a stage in progress)")
    common(q)
    q.add_argument("--with-prerequisites", action="store_true",
                   help="also train the entries it needs (e.g. the perceiver) when their outputs are missing")
    q.add_argument("--dry-run", action="store_true", help="print the steps without running them")
    q.set_defaults(func=_run)

    q = rsub.add_parser("output", help="the folder an entry writes")
    common(q, extra=False)
    q.set_defaults(func=_output)

