"""The plan of checks and its run: every check has its own time limit, one check's failure or timeout does not
stop the others (only those that need what it builds are skipped), the whole run ends by a deadline, and the
JSON is rewritten after every check, so that a run killed from outside still leaves what it had.

Isolation: `process` (the default on a GPU) runs each check in its own Python process, killed at its limit,
so a hang, a crash or CUDA memory left behind stays with that check; `inline` (the CPU smoke's default) runs
them in this process with an alarm as the limit, paying the imports once.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import llava_dpa
from llava_dpa.gpu_check import checks
from llava_dpa.gpu_check.models import remove_form
from llava_dpa.gpu_check.processes import run_command
from llava_dpa.gpu_check.schema import PACKAGES, SCHEMA, STATUSES, problems
from llava_dpa.gpu_check.sizes import FORMS, SIZES

REPORT, LOG = "gpu_check.json", "gpu_check.log"
#: seconds per check on the GPU; the smoke's are its own
LIMITS = {"build": 150, "qlora": 90, "zero3": 120, "assemble": 90, "forward": 45, "generate": 45, "packing": 45,
          "bench": 75, "train": 150, "bench_packing": 120}
SMOKE_LIMITS = {name: 150 for name in LIMITS}  # ~10 s each on 2 idle cores; generous for a machine under load
# zero3 starts a fresh training process (imports, zero.Init, the save): 15-45 s here, the rest ~3 s each
SMOKE_LIMITS["zero3"] = 300
#: the whole run's deadline (the GPU's 8 minutes less the install), and the smoke's
DEADLINE_S = {"full": 440, "smoke": 900}
PAIR_CHECKS = ("forward", "generate", "packing", "bench")
#: a check is not started with less time than this left
MIN_LIMIT_S = 5


@dataclass(frozen=True)
class Unit:
    name: str
    check: str
    form: str | None = None
    needs: str | None = None   # the unit whose success this one needs


def plan(size: str = "full") -> list[Unit]:
    """In order of value per second: what would most change the next GPU run comes first."""
    units = [Unit("build", "build"), Unit("qlora", "qlora", needs="build"), Unit("zero3", "zero3", needs="build")]
    for form in FORMS:
        units.append(Unit(f"assemble/{form}", "assemble", form, needs="build"))
        units += [Unit(f"{c}/{form}", c, form, needs=f"assemble/{form}") for c in PAIR_CHECKS]
        units.append(Unit(f"train/{form}", "train", form, needs="build"))
    if SIZES[size].bench_packing_in_plan:
        units.append(Unit("bench-packing", "bench_packing"))
    return units


def select(units: list[Unit], only: list[str] | None) -> list[Unit]:
    """The named checks and what they need."""
    if not only:
        return units
    by_name, wanted = {u.name: u for u in units}, set()
    unknown = [n for n in only if n not in by_name]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; choose from {list(by_name)}")
    for name in only:
        while name:
            wanted.add(name)
            name = by_name[name].needs
    return [u for u in units if u.name in wanted]


def attn_refusal(attn: str, device: str, units: list[Unit]) -> str | None:
    """Why the run cannot use this attention (None: it can). flash_attention_2 is for a machine with flash-attn:
    its packed path (the mask dropped, the positions restarting per sample) runs in no other configuration."""
    if attn == "sdpa":
        return None
    if attn != "flash_attention_2":
        return f"--attn {attn}: use sdpa or flash_attention_2"
    import importlib.util

    if not device.startswith("cuda"):
        return "--attn flash_attention_2 needs a CUDA device (flash-attn has no CPU kernels)"
    if importlib.util.find_spec("flash_attn") is None:
        return "--attn flash_attention_2: flash-attn is not installed here (pip install flash-attn for this torch and CUDA)"
    fp32 = [u.name for u in units if u.check == "forward"]
    if fp32:
        return (f"--attn flash_attention_2: {', '.join(fp32)} compares with an fp32 run, which flash-attention does "
                "not compute; choose the checks with --only (e.g. --only packing/llava packing/qwen-vl)")
    return None


# ---- where it ran -----------------------------------------------------------------------------------------
def _version(package: str) -> str | None:
    from importlib import metadata

    for name in (package, package.replace("-", "_"), package.capitalize()):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _commit() -> str | None:
    if os.environ.get("LLAVA_DPA_COMMIT"):
        return os.environ["LLAVA_DPA_COMMIT"]
    repo = Path(__file__).resolve().parents[2]
    if shutil.which("git") and (repo / ".git").exists():
        try:
            proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=30, check=False)
        except subprocess.TimeoutExpired:
            return None
        return proc.stdout.strip() or None
    return None


def _bundle() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the gpu_bundle the run was installed from: check.sh names its manifest.json in
    LLAVA_DPA_BUNDLE_MANIFEST (read as JSON); (None, None) without one."""
    path = os.environ.get("LLAVA_DPA_BUNDLE_MANIFEST")
    if not path or not Path(path).is_file():
        return None, None
    try:
        manifest = json.loads(Path(path).read_text())
    except ValueError:
        return None, None
    commit, dirty = manifest.get("commit"), manifest.get("dirty")
    return (commit if isinstance(commit, str) and commit else None), (dirty if isinstance(dirty, bool) else None)


def environment(device: str, dtype: str, attn: str = "sdpa") -> dict:
    import torch

    driver = None
    if device.startswith("cuda") and shutil.which("nvidia-smi"):
        try:
            proc = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=60, check=False)
            driver = proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else None
        except subprocess.TimeoutExpired:  # a driver that does not answer is recorded as unknown
            driver = None
    cuda = device.startswith("cuda")
    versions = {p: _version(p) for p in PACKAGES}
    if versions["llava-dpa"] is None:  # run from the source tree (PYTHONPATH), not installed
        versions["llava-dpa"] = getattr(llava_dpa, "__version__", None) or "source tree"
    bundle_commit, bundle_dirty = _bundle()
    return {"device": torch.cuda.get_device_name() if cuda else "cpu", "driver": driver,
            "cuda": torch.version.cuda if cuda else None,
            "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 2) if cuda else None,
            "python": platform.python_version(), "platform": platform.platform(), "commit": _commit(),
            "bundle_commit": bundle_commit, "bundle_dirty": bundle_dirty, "dtype": dtype,
            "attn_implementation": attn, "versions": versions}


# ---- one check --------------------------------------------------------------------------------------------
def execute(name: str, size_name: str, workdir: str, device: str, limit: float | None = None,
            attn: str = "sdpa") -> dict:
    """Run one check in this process: {"passed", "figures"}. `limit`: its seconds, for the processes it starts."""

    unit = {u.name: u for u in plan()}[name]
    ctx = checks.Context(SIZES[size_name], Path(workdir), device,
                         deadline=time.monotonic() + limit if limit is not None else None, attn=attn)
    fn = getattr(checks, unit.check)
    return fn(ctx, unit.form) if unit.form else fn(ctx)


class _Alarm(BaseException):
    """Not an Exception: a check's own `except Exception` (train's per-run one) must not swallow its limit."""


def _inline(unit: Unit, size: str, workdir: str, device: str, limit: float,
            attn: str) -> tuple[str, dict, str | None]:
    def ring(*_):
        raise _Alarm()

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(limit, 1))
    try:
        result = execute(unit.name, size, workdir, device, limit, attn)
        return ("passed" if result["passed"] else "failed"), result["figures"], None
    except _Alarm:
        return "timeout", {}, f"no result within its limit of {limit:.0f} s"
    except Exception:
        return "error", {}, traceback.format_exc()[-4000:]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _process(unit: Unit, size: str, workdir: str, device: str, limit: float,
             attn: str) -> tuple[str, dict, str | None]:
    folder = Path(workdir) / "results"
    folder.mkdir(parents=True, exist_ok=True)
    result, log = folder / f"{unit.name.replace('/', '_')}.json", folder / f"{unit.name.replace('/', '_')}.log"
    result.unlink(missing_ok=True)
    command = [sys.executable, "-m", "llava_dpa.gpu_check", "unit", unit.name, "--size", size, "--workdir", workdir,
               "--device", device, "--result", str(result), "--limit", str(limit), "--attn", attn]
    # killed at its limit with whatever it started (the check's own limits on its children come first)
    finished = run_command(command, limit, log, tail_lines=40)
    sys.stdout.write(log.read_text(errors="replace"))
    sys.stdout.flush()
    if finished.timed_out:
        return "timeout", {}, f"killed at its limit of {limit:.0f} s; its output ended:\n{finished.output}"
    if finished.returncode != 0 or not result.is_file():
        return "error", {}, f"exit status {finished.returncode}; its output ended:\n{finished.output}"
    found = json.loads(result.read_text())
    return ("passed" if found["passed"] else "failed"), found["figures"], None


# ---- the run ----------------------------------------------------------------------------------------------
def _write(outdir: Path, report: dict) -> None:
    report["summary"] = {s: sum(1 for c in report["checks"] if c["status"] == s) for s in STATUSES}
    tmp = outdir / (REPORT + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(outdir / REPORT)


def run(outdir: str | Path, size: str, device: str, isolation: str, workdir: str | Path,
        only: list[str] | None = None, deadline_s: float | None = None, attn: str = "sdpa") -> int:
    """Every check of the plan (or `only` these and what they need); writes OUTDIR/gpu_check.json. Exit status
    (check.sh's): 0 when every planned check passed; 1 otherwise: a check failed, errored, timed out or was
    skipped, or the report departs from its schema. (2 is check.sh's: the run could not start.)"""
    outdir, workdir = Path(outdir), Path(workdir)
    outdir.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    deadline = deadline_s if deadline_s is not None else DEADLINE_S[size]
    limits = LIMITS if size == "full" else SMOKE_LIMITS
    units = select(plan("full") if only else plan(size), only)
    start = time.monotonic()
    report = {"schema": SCHEMA, "mode": "gpu" if size == "full" else "cpu-smoke", "size": size,
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "seconds": 0.0,
              "deadline_s": deadline, "complete": False, "environment": environment(device, SIZES[size].dtype, attn),
              "checks": [], "summary": {}}
    env = report["environment"]
    print(f"[gpu-check] {report['mode']} on {env['device']} (driver {env['driver']}, CUDA {env['cuda']}), torch "
          f"{env['versions']['torch']}, transformers {env['versions']['transformers']}; {len(units)} checks, "
          f"deadline {deadline:.0f} s", flush=True)
    _write(outdir, report)
    status_of = {}
    for i, unit in enumerate(units):
        left = deadline - (time.monotonic() - start)
        limit = min(limits[unit.check], left)
        t0 = time.monotonic()
        if unit.needs and status_of.get(unit.needs) != "passed":
            status, figures, error = "skipped", {}, f"needs {unit.needs}, which {status_of.get(unit.needs, 'did not run')}"
        elif limit < MIN_LIMIT_S:
            status, figures, error = "skipped", {}, f"out of time: {left:.0f} s of the {deadline:.0f} s deadline left"
        else:
            print(f"[gpu-check] {unit.name}: start (limit {limit:.0f} s)", flush=True)
            runner = _process if isolation == "process" else _inline
            status, figures, error = runner(unit, size, str(workdir), device, limit, attn)
        seconds = round(time.monotonic() - t0, 2)
        status_of[unit.name] = status
        report["checks"].append({"name": unit.name, "status": status, "seconds": seconds,
                                 "time_limit_s": round(limits[unit.check], 1), "figures": figures, "error": error})
        print(f"[gpu-check] {unit.name}: {status} in {seconds:.1f} s" + (f"\n{error}" if error else ""), flush=True)
        last_of_pair = unit.form and unit.check in PAIR_CHECKS and not any(
            u.form == unit.form and u.check in PAIR_CHECKS for u in units[i + 1:])
        if last_of_pair:  # a form's pair takes ~19 GB at the full size: gone before the next is assembled
            remove_form(workdir, unit.form)
        report["seconds"] = round(time.monotonic() - start, 2)
        _write(outdir, report)
    report["complete"] = True
    report["seconds"] = round(time.monotonic() - start, 2)
    _write(outdir, report)
    found = problems(json.loads((outdir / REPORT).read_text()))
    summary = ", ".join(f"{n} {s}" for s, n in report["summary"].items() if n)
    print(f"[gpu-check] done in {report['seconds']:.0f} s: {summary}; wrote {outdir / REPORT}", flush=True)
    if found:
        print("[gpu-check] the report departs from its schema:\n  " + "\n  ".join(found), flush=True)
        return 1
    return 0 if report["summary"]["passed"] == len(report["checks"]) else 1
