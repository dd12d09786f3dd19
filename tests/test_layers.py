"""The package map of docs/design.md holds: imports only go down (import-linter's layers contract in
.importlinter, every import statement, those inside functions included), the commands live in the top layer, and
an import of llava_dpa inside a function exists only to keep something heavy or not yet patched lazy, saying so."""
import ast
import contextlib
import io
import re
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

from conftest import REPO

pytestmark = pytest.mark.fast

PACKAGE = REPO / "llava_dpa"


def sources():
    return sorted(PACKAGE.rglob("*.py"))


def test_imports_only_go_down():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = lint_imports(config_filename=str(REPO / ".importlinter"), no_cache=True)
    print(out.getvalue())
    assert code == 0, out.getvalue()


def test_the_contract_names_every_package():
    """A new package must take its place in the map; otherwise the contract would not see it."""
    text = (REPO / ".importlinter").read_text()
    layers = text.split("layers =", 1)[1]
    named = set(re.findall(r"[a-z_]+", layers))
    present = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    present |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert present <= named, f"packages missing from .importlinter's layers: {sorted(present - named)}"


def in_function_imports(path: Path):
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [module or ""]
            if isinstance(node, (ast.Import, ast.ImportFrom)) and any(n.startswith("llava_dpa") for n in names):
                # the statement's own lines and the comment lines right above it
                start = node.lineno - 1
                while start > 0 and lines[start - 1].strip().startswith("#"):
                    start -= 1
                yield node.lineno, "\n".join(lines[start:node.end_lineno])


def test_in_function_imports_of_the_package_say_why_they_are_lazy():
    unexplained = [f"{path.relative_to(REPO)}:{line}" for path in sources()
                   for line, text in in_function_imports(path) if "lazy" not in text.lower()]
    assert not unexplained, f"import these at module level, or say why they must stay lazy: {unexplained}"


def test_only_the_commands_layer_defines_subcommands():
    allowed = {PACKAGE / "cli.py", PACKAGE / "gpu_check" / "__main__.py"}  # gpu_check: `python -m`, its own CLI
    found = [str(p.relative_to(REPO)) for p in sources()
             if ".add_parser(" in p.read_text() and p not in allowed and p.parent.name != "commands"]
    assert not found, f"subcommands belong in llava_dpa/commands/: {found}"
