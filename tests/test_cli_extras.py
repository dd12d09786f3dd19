"""The command line without its optional extras (issue #26 point 4): `llava-dpa --help`, every subcommand's help and
the commands that need no extra run in a process where no extra is installed, and a command whose extra is
missing names the extra to install.

"Not installed" is made in the child process the way Python itself says it: `sys.modules[name] = None` for every
top-level module an extra installs, so `import name` raises ModuleNotFoundError(name=...) and
`importlib.util.find_spec(name)` is None (what transformers and this project's checks ask). The wheel test
(tests/test_wheel.py) runs the same help in a real virtualenv installed without extras."""
import argparse
import importlib.metadata
import json
import re

import pytest

from conftest import PY, run, train_cmd
from llava_dpa.cli import EXTRA_OF_MODULE, build_parser

#: in the child: block the modules, then run each argv through cli.main in this one process (imports paid once);
#: the argv list "HELP-TREE" stands for `--help` of the top level and of every subcommand, nested ones included
CHILD = r'''
import argparse, contextlib, io, json, sys
blocked, argvs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in blocked:
    sys.modules[name] = None
from llava_dpa.cli import build_parser, main


def help_tree(parser, prefix):
    yield prefix + ["--help"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from help_tree(sub, prefix + [name])


def call(run):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run()
        except SystemExit as exc:
            code = exc.code
        except Exception as exc:  # a training refusal: its type and message
            code, err = type(exc).__name__, io.StringIO(str(exc))
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}


results = {}
for argv in argvs:
    if argv == "HELP-TREE":
        for h in help_tree(build_parser(), []):
            results[" ".join(h)] = call(lambda: main(h))
    elif argv[0] == "train":
        from llava_dpa.training.train import train
        results[" ".join(argv)] = call(lambda: train(argv=argv[1:]))
    else:
        results[" ".join(argv)] = call(lambda: main(argv))
print("RESULTS " + json.dumps({"results": results,
                               "imported": sorted(m for m in blocked if sys.modules.get(m) is not None)}))
'''

#: what each extra's own command must say when the extra is missing
NEEDS = {
    "serve": ["serve", "/no/checkpoint"],
    "analysis": ["analyze", "mir", "/no/checkpoint", "--images", "/no/images", "--texts", "/no/texts.txt",
                 "--output", "/no/out"],
}


def child(blocked, argvs) -> dict:
    proc = run([PY, "-c", CHILD, json.dumps(sorted(blocked)), json.dumps(argvs)], timeout=600)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULTS "))
    report = json.loads(line[len("RESULTS "):])
    assert report["imported"] == [], "a blocked module was imported after all"
    return report["results"]


def extra_named(result, extra):
    return f"pip install 'llava-dpa[{extra}]'" in result["err"]


@pytest.mark.fast
def test_the_table_of_extras_is_setup_pys():
    """Every module the command line names an extra for is a distribution that extra installs (read from the
    installed package's metadata, which setup.py wrote), and every extra of setup.py but dev has a module here."""
    requires = importlib.metadata.requires("llava-dpa")
    by_extra = {}
    for req in requires:
        found = re.match(r"([A-Za-z0-9_.\-]+).*extra == \"([a-z\-]+)\"", req)
        if found:
            by_extra.setdefault(found.group(2), set()).add(found.group(1).lower().replace("-", "_"))
    for module, extra in EXTRA_OF_MODULE.items():
        if extra == "vllm" and extra not in by_extra:
            continue  # the extra comes with the vLLM serving work (setup.py); checked once it is there
        assert module in by_extra.get(extra, set()), f"{module}: not installed by the {extra!r} extra ({by_extra})"
    assert set(by_extra) - {"dev"} <= set(EXTRA_OF_MODULE.values())


def test_the_cli_starts_and_answers_without_any_extra(zoo, tmp_path):
    """No extra installed: the help of every command and subcommand, and the commands that need none, run; each
    command that needs an extra stops before any work, naming the extra; so does training with --bits 4 (qlora)
    and with --deepspeed (deepspeed). (`eval run` asks the interpreter it runs lmms-eval with: its refusal is
    tests/test_eval_protocol.py's `execute_no_lmms_eval`.)"""
    common = train_cmd(zoo, tmp_path / "run", stage=2)[3:]
    argvs = ["HELP-TREE",
             ["recipe", "list"], ["recipe", "show", "dpa-qwen3-4b", "--stage", "2"], ["eval", "list"],
             ["eval", "show", "official"], ["analyze", "cost", "--target", "qwen3-4b"],
             ["projector-budget", "--in", "64", "--out", "128", "--budget", "100000"],
             *NEEDS.values(),
             ["train", *common, "--bits", "4", "--lora_enable", "True"],
             ["train", *common, "--deepspeed", "scripts/train/deepspeed/zero3.json"]]
    results = child(set(EXTRA_OF_MODULE), argvs)

    helps = {k: v for k, v in results.items() if k.endswith("--help")}
    top = results["--help"]["out"]
    commands = [name for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)
                for name in action.choices]
    assert commands and all(name in top for name in commands), top
    failed = {k: (v["code"], v["err"][-300:]) for k, v in helps.items() if v["code"] != 0 or not v["out"]}
    assert not failed, failed
    assert len(helps) > len(commands)  # nested subcommands (recipe, eval, analyze) too

    for argv in (["recipe", "list"], ["recipe", "show", "dpa-qwen3-4b", "--stage", "2"], ["eval", "list"],
                 ["eval", "show", "official"], ["analyze", "cost", "--target", "qwen3-4b"],
                 ["projector-budget", "--in", "64", "--out", "128", "--budget", "100000"]):
        r = results[" ".join(argv)]
        assert r["code"] == 0 and r["out"].strip(), (argv, r)

    for extra, argv in NEEDS.items():
        r = results[" ".join(argv)]
        assert r["code"] == 2 and extra_named(r, extra), (argv, r)
        assert "Traceback" not in r["err"]
    qlora = next(v for k, v in results.items() if k.startswith("train") and "--bits" in k)
    assert qlora["code"] == "RunConfigError" and extra_named(qlora, "qlora"), qlora
    deepspeed = next(v for k, v in results.items() if k.startswith("train") and "--deepspeed" in k)
    assert deepspeed["code"] == "RunConfigError" and extra_named(deepspeed, "deepspeed"), deepspeed
    assert not (tmp_path / "run").exists()  # refused before anything was written
