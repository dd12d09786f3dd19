"""Apply, check and revert the unified diffs in `patches/` against the installed llava (or a copy of it).

Why diffs and not runtime monkey-patching: a user reading `patches/` sees every change made to
LLaVA's behaviour, `--check` tells whether an installation carries them, and `--revert` restores the
pristine package. Each diff adds a marker comment `llava-dpa patch: <name>` to every file it touches;
the marker is how the state is read without importing llava (importing it would execute the very code
being checked).

Every operation takes `llava_dir`, the folder that contains the `llava/` package (a site dir); None means
the llava this Python would import. Passing it explicitly lets tests and users work on a copy without
touching the installed package.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SUPPORTED_LLAVA_VERSION = "1.2.2.post1"
_ALLOW_ENV = "LLAVA_DPA_ALLOW_UNPATCHED"


class LlavaNotPatchedError(ImportError):
    pass


def patches_dir() -> Path:
    """The repository's patches/ in a source checkout (or an editable install); the copy a built wheel
    carries next to this module otherwise. LLAVA_DPA_PATCHES names another folder."""
    env = os.environ.get("LLAVA_DPA_PATCHES")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[1] / "patches"
    if checkout.is_dir():
        return checkout
    packaged = Path(__file__).resolve().parent / "patches"
    if packaged.is_dir():
        return packaged
    raise FileNotFoundError(f"no patches folder: neither {checkout} (a source checkout) nor {packaged} (an installed "
                            f"wheel); reinstall llava-dpa or set LLAVA_DPA_PATCHES")


def _imported_site_dir() -> Path | None:
    # find_spec locates a top-level package without executing it, so this names the llava that
    # `import llava` would load (PYTHONPATH included) while leaving its code unrun.
    spec = importlib.util.find_spec("llava")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).parent


def llava_site_dir(llava_dir: str | os.PathLike | None = None) -> Path:
    """The directory that contains the `llava` package (diff paths are relative to it).

    `llava_dir` names it explicitly (e.g. a copy); None finds the llava this Python would import."""
    if llava_dir is not None:
        return _explicit_site_dir(Path(llava_dir))
    site = _imported_site_dir()
    if site is None:
        raise LlavaNotPatchedError(
            "llava is not installed. Install it with: pip install --no-deps llava-torch==1.2.2.post1 "
            "(or run `make setup`), then run `llava-dpa patch-llava`."
        )
    return site


def _explicit_site_dir(site: Path) -> Path:
    if not (site / "llava" / "__init__.py").is_file():
        hint = f" (did you mean its parent, {site.parent}?)" if (site / "__init__.py").is_file() else ""
        raise FileNotFoundError(
            f"no llava package in {site}{hint}; --llava-dir takes the folder that contains llava/, "
            "e.g. the site-packages llava-torch is installed in"
        )
    return site.resolve()


def installed_llava_version(llava_dir: str | os.PathLike | None = None) -> str | None:
    """The llava-torch version of the llava at `llava_dir` (default: the one Python imports); None if unknown."""
    site = Path(llava_dir) if llava_dir is not None else _imported_site_dir()
    if site is not None:
        # the dist-info beside the package describes that very copy, whatever else is on sys.path
        for dist in importlib.metadata.distributions(name="llava-torch", path=[str(site)]):
            return dist.version
    # no dist-info beside it (a bare copy of the package): the environment's metadata is the best we know
    try:
        return importlib.metadata.version("llava-torch")
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class Patch:
    path: Path

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def marker(self) -> str:
        return f"llava-dpa patch: {self.name}"

    @property
    def targets(self) -> list[str]:
        text = self.path.read_text()
        return [m.group(1) for m in re.finditer(r"^\+\+\+ b/(\S+)", text, flags=re.M)]

    @property
    def summary(self) -> str:
        for line in self.path.read_text().splitlines():
            if line.startswith("Summary:"):
                return line.split(":", 1)[1].strip()
        return ""

    def state(self, site: Path) -> str:
        """'applied', 'unapplied', or 'partial' (some target files carry the marker, some do not)."""
        marks = []
        for target in self.targets:
            f = site / target
            marks.append(f.exists() and self.marker in f.read_text())
        if all(marks):
            return "applied"
        if not any(marks):
            return "unapplied"
        return "partial"


def all_patches() -> list[Patch]:
    d = patches_dir()
    if not d.is_dir():
        raise FileNotFoundError(f"patches folder not found at {d}; set LLAVA_DPA_PATCHES to the repository's patches/")
    return [Patch(p) for p in sorted(d.glob("*.patch"))]


def _run_patch(patch: Patch, site: Path, *, reverse: bool, dry_run: bool) -> subprocess.CompletedProcess:
    if shutil.which("patch") is None:
        raise RuntimeError("GNU patch is required (apt-get install patch)")
    cmd = ["patch", "-p1", "--batch", "--forward" if not reverse else "-R", "-d", str(site), "-i", str(patch.path)]
    cmd.append("--no-backup-if-mismatch")
    if dry_run:
        cmd.append("--dry-run")
    return subprocess.run(cmd, capture_output=True, text=True)


def _drop_bytecode(site: Path, patch: Patch) -> None:
    for target in patch.targets:
        cache = (site / target).parent / "__pycache__"
        stem = Path(target).stem
        for pyc in cache.glob(f"{stem}.*.pyc"):
            pyc.unlink(missing_ok=True)


def check_version(llava_dir: str | os.PathLike | None = None) -> None:
    if llava_dir is not None:
        llava_site_dir(llava_dir)  # a wrong folder is reported as such, not as a version mismatch
    version = installed_llava_version(llava_dir)
    if version != SUPPORTED_LLAVA_VERSION:
        where = f" at {llava_dir}" if llava_dir is not None else ""
        raise RuntimeError(
            f"patches/ are written against llava-torch {SUPPORTED_LLAVA_VERSION}, but {version!r} is installed{where}. "
            f"Run: pip install --no-deps llava-torch=={SUPPORTED_LLAVA_VERSION}"
        )


def _print_results(results: list[tuple[str, str]]) -> None:
    for name, action in results:
        print(f"{name}: {action}")


def apply_all(verbose: bool = True, *, llava_dir: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """Apply every patch that is not applied yet to the llava at `llava_dir`. Idempotent. Returns (name, action) pairs."""
    check_version(llava_dir)
    site = llava_site_dir(llava_dir)
    results = []
    for patch in all_patches():
        state = patch.state(site)
        if state == "applied":
            results.append((patch.name, "already applied"))
            continue
        if state == "partial":
            raise RuntimeError(f"{patch.name}: only some of {patch.targets} are patched; reinstall llava-torch "
                               f"(pip install --force-reinstall --no-deps llava-torch=={SUPPORTED_LLAVA_VERSION}) and retry")
        dry = _run_patch(patch, site, reverse=False, dry_run=True)
        if dry.returncode != 0:
            raise RuntimeError(f"{patch.name} does not apply cleanly to {site}/llava:\n{dry.stdout}{dry.stderr}")
        _run_patch(patch, site, reverse=False, dry_run=False).check_returncode()
        _drop_bytecode(site, patch)
        results.append((patch.name, "applied"))
    if verbose:
        _print_results(results)
    return results


def revert_all(verbose: bool = True, *, llava_dir: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """Undo every applied patch on the llava at `llava_dir`, last first. Returns (name, action) pairs."""
    site = llava_site_dir(llava_dir)
    results = []
    for patch in reversed(all_patches()):
        if patch.state(site) == "unapplied":
            results.append((patch.name, "not applied"))
            continue
        dry = _run_patch(patch, site, reverse=True, dry_run=True)
        if dry.returncode != 0:
            raise RuntimeError(f"{patch.name} cannot be reverted cleanly:\n{dry.stdout}{dry.stderr}")
        _run_patch(patch, site, reverse=True, dry_run=False).check_returncode()
        _drop_bytecode(site, patch)
        results.append((patch.name, "reverted"))
    if verbose:
        _print_results(results)
    return results


def report(llava_dir: str | os.PathLike | None = None) -> list[tuple[str, str, str]]:
    """(name, state, summary) of every patch on the llava at `llava_dir`."""
    site = llava_site_dir(llava_dir)
    return [(p.name, p.state(site), p.summary) for p in all_patches()]


def _invoked_as_patch_tool() -> bool:
    # `llava-dpa patch-llava` must be able to import this package before llava is patched.
    return len(sys.argv) > 1 and sys.argv[1] == "patch-llava"


def require_patched_llava(llava_dir: str | os.PathLike | None = None) -> bool:
    """Raise unless llava carries every patch; False when the check is skipped (the patch tool itself).

    The default checks the llava that `import llava` will load, so a PYTHONPATH pointing elsewhere is
    checked too, not just site-packages."""
    if os.environ.get(_ALLOW_ENV) == "1" or _invoked_as_patch_tool():
        return False
    site = llava_site_dir(llava_dir)
    try:
        patches = all_patches()
    except FileNotFoundError as exc:
        raise LlavaNotPatchedError(str(exc)) from None
    missing = [p.name for p in patches if p.state(site) != "applied"]
    if missing:
        raise LlavaNotPatchedError(
            f"the llava at {site / 'llava'} lacks llava-dpa's patches {missing}. "
            "Run `llava-dpa patch-llava` (or `make setup`) and retry; `llava-dpa patch-llava --check` shows the state."
        )
    return True
