"""Child processes with a time limit. Each starts a session of its own, and its whole process group is killed
when it ends, at its limit or when the caller is interrupted (the inline runner's alarm): DeepSpeed's launcher
starts the training ranks itself, and a rank left running would hold the GPU through the checks after it."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Finished:
    returncode: int | None  # None: killed at its limit
    seconds: float
    output: str             # the end of what it printed (stdout and stderr together)

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to the group the child leads (it and whatever it started), then reap the child."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group has ended already
        pass
    proc.wait()


def tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_command(argv: list[str], timeout: float, log: str | Path, env: dict | None = None,
                tail_lines: int = 60) -> Finished:
    """Run `argv` with its output in `log`, for at most `timeout` seconds."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            code = None
        finally:  # also when the wait is interrupted: nothing it started outlives it
            kill_group(proc)
    return Finished(code, round(time.monotonic() - start, 2), tail(log, tail_lines))
