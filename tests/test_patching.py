"""patches/ are applied idempotently, reported, reverted, and required by `import llava_dpa`.

Every apply/revert here works on a copy of llava in a temporary folder (`--llava-dir`), never on the
installed one: reverting site-packages mid-session would break the other tests importing llava meanwhile.
"""
import contextlib
import hashlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PY, REPO, run

pytestmark = pytest.mark.fast

PATCHES = sorted((REPO / "patches").glob("*.patch"))


def installed_site() -> Path:
    # found without importing llava: the very code whose patches are being checked
    spec = importlib.util.find_spec("llava")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llava is not installed; run `make setup` first")
    return Path(list(spec.submodule_search_locations)[0]).parent


INSTALLED = installed_site()


def fingerprint(site: Path) -> dict[str, str]:
    """sha256 of every llava source file under `site`; bytecode aside, since any import may rewrite it."""
    files = (f for f in sorted((site / "llava").rglob("*")) if f.is_file() and "__pycache__" not in f.parts)
    return {str(f.relative_to(site)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def llava_dpa_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`llava-dpa ARGS` in this process (the console script's own function), its exit code and output."""
    from llava_dpa.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    done = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    assert not check or code == 0, (args, done.stdout, done.stderr)
    return done


def patch_tool(site: Path, *args: str, check: bool = True):
    return llava_dpa_cli("patch-llava", "--llava-dir", str(site), *args, check=check)


def assert_all(site: Path, state: str) -> None:
    """`--check` on `site` reports every patch in `state`, with the exit status that goes with it."""
    report = patch_tool(site, "--check", check=False)
    assert report.returncode == (0 if state == "applied" else 1), report.stdout + report.stderr
    for patch in PATCHES:
        assert re.search(rf"^{patch.stem}\s+{state}\s", report.stdout, flags=re.M), report.stdout
    # the version came from the copy's own dist-info, and the report names the copy
    assert f"llava-torch 1.2.2.post1 at {site / 'llava'}" in report.stdout, report.stdout


def count_actions(output: str, action: str) -> int:
    return len(re.findall(rf"^\S+: {action}$", output, flags=re.M))


@pytest.fixture(scope="module")
def installed_before():
    """The installed llava's files and `--check` report before this module touches anything."""
    return fingerprint(INSTALLED), llava_dpa_cli("patch-llava", "--check", check=False).stdout


@pytest.fixture(scope="module")
def llava_copy(tmp_path_factory, installed_before):
    """A site dir holding a copy of the installed llava and its dist-info (the version check reads it)."""
    site = tmp_path_factory.mktemp("llava_site").resolve()
    shutil.copytree(INSTALLED / "llava", site / "llava", ignore=shutil.ignore_patterns("__pycache__"))
    for dist_info in INSTALLED.glob("llava_torch-*.dist-info"):
        shutil.copytree(dist_info, site / dist_info.name)
    return site


def test_every_patch_is_small_documented_and_marked():
    assert len(PATCHES) >= 9
    for patch in PATCHES:
        text = patch.read_text()
        assert text.startswith("Summary: "), patch.name
        assert "Against: llava-torch 1.2.2.post1" in text
        added = [line for line in text.splitlines() if line.startswith("+") and not line.startswith("+++")]
        files = re.findall(r"^\+\+\+ b/(\S+)", text, flags=re.M)
        # every touched file carries the marker the state check reads
        assert text.count(f"llava-dpa patch: {patch.stem}") >= len(files), patch.name
        assert len(added) < 40, f"{patch.name} adds {len(added)} lines; logic belongs in llava_dpa/"


def test_apply_reports_all_applied_and_is_idempotent(llava_copy):
    # the copy starts as patched as the installed llava: revert it so that apply has work to do
    patch_tool(llava_copy, "--revert")
    assert_all(llava_copy, "unapplied")
    applied = patch_tool(llava_copy)
    assert count_actions(applied.stdout, "applied") == len(PATCHES), applied.stdout
    assert_all(llava_copy, "applied")
    again = patch_tool(llava_copy)
    assert count_actions(again.stdout, "already applied") == len(PATCHES), again.stdout


def test_revert_makes_import_fail_with_instructions_then_reapply(llava_copy):
    patch_tool(llava_copy)  # a patched copy to start from, whichever test ran before
    reverted = patch_tool(llava_copy, "--revert")
    assert count_actions(reverted.stdout, "reverted") == len(PATCHES), reverted.stdout
    assert_all(llava_copy, "unapplied")
    # PYTHONPATH puts the copy ahead of site-packages: the guard must check the llava Python imports
    pythonpath = os.pathsep.join(filter(None, [str(llava_copy), os.environ.get("PYTHONPATH")]))
    imported = run([PY, "-c", "import llava_dpa"], env={"PYTHONPATH": pythonpath}, check=False)
    assert imported.returncode != 0
    assert "Run `llava-dpa patch-llava`" in imported.stderr
    assert str(llava_copy / "llava") in imported.stderr, imported.stderr
    patch_tool(llava_copy)
    assert_all(llava_copy, "applied")


def test_version_is_read_from_the_copys_dist_info(tmp_path):
    (tmp_path / "llava").mkdir()
    (tmp_path / "llava" / "__init__.py").write_text("")
    dist_info = tmp_path / "llava_torch-0.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: llava-torch\nVersion: 0.0\n")
    refused = patch_tool(tmp_path, check=False)
    assert refused.returncode == 2
    assert "but '0.0' is installed" in refused.stderr, refused.stderr
    assert "pip install --no-deps llava-torch==1.2.2.post1" in refused.stderr


def test_a_folder_without_llava_is_refused_with_the_fix(tmp_path):
    refused = patch_tool(tmp_path, "--check", check=False)
    assert refused.returncode == 2
    assert "--llava-dir takes the folder that contains llava/" in refused.stderr, refused.stderr


def test_installed_llava_is_untouched(llava_copy, installed_before):
    # a full cycle on the copy here too, so the check means something whatever order the tests run in
    patch_tool(llava_copy, "--revert")
    patch_tool(llava_copy)
    files, report = installed_before
    assert fingerprint(INSTALLED) == files
    assert llava_dpa_cli("patch-llava", "--check", check=False).stdout == report
