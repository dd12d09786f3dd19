"""patches/ are applied idempotently, reported, reverted, and required by `import llava_dpa`."""
import re

from conftest import PY, REPO, run

CLI = [PY, "-m", "llava_dpa.cli"]
PATCHES = sorted((REPO / "patches").glob("*.patch"))


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


def test_check_reports_all_applied_and_apply_is_idempotent():
    check = run(CLI + ["patch-llava", "--check"])
    for patch in PATCHES:
        assert re.search(rf"^{patch.stem}\s+applied", check.stdout, flags=re.M), check.stdout
    again = run(CLI + ["patch-llava"])
    assert again.stdout.count("already applied") == len(PATCHES)


def test_revert_makes_import_fail_with_instructions_then_reapply():
    try:
        run(CLI + ["patch-llava", "--revert"])
        check = run(CLI + ["patch-llava", "--check"], check=False)
        assert check.returncode == 1 and "unapplied" in check.stdout
        imported = run([PY, "-c", "import llava_dpa"], check=False)
        assert imported.returncode != 0
        assert "Run `llava-dpa patch-llava`" in imported.stderr
    finally:
        run(CLI + ["patch-llava"])
    assert run(CLI + ["patch-llava", "--check"]).returncode == 0
