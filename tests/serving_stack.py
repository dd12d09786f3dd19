"""Helpers of tests/test_serving.py: LLaVA's controller, model workers and gradio web server as subprocesses on
127.0.0.1 (their default host, which the tests check) and free ports, each stopped with its whole process group,
every wait bounded."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
from conftest import free_port  # noqa: F401  (race-free between xdist workers; callers import it from here too)

PY = sys.executable
ENV = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "GRADIO_ANALYTICS_ENABLED": "False",
       "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


class Server:
    """A server subprocess in its own process group, its output in `log`."""

    def __init__(self, name: str, args: list, cwd: Path, port: int):
        self.name, self.port, self.cwd = name, port, Path(cwd)
        self.url = f"http://127.0.0.1:{port}"
        self.log = self.cwd / f"{name}.out"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([str(a) for a in args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                         env=dict(os.environ, **ENV), start_new_session=True)

    def output(self, tail: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} output (last {tail} chars) ---\n{text[-tail:]}"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}\n{self.output()}")

    def rss_bytes(self) -> int:
        """Resident memory of the server process (the worker: one Python process)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass


def listening_addresses(port: int) -> set[str]:
    """The local addresses on which some process listens on TCP `port` (from /proc/net/tcp and tcp6)."""
    import ipaddress

    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(str(ipaddress.ip_address(raw)))
    return found


def wait_until(what: str, ready, servers: list[Server], timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        for server in servers:
            server.check_alive()
        try:
            value = ready()
            if value:
                return value
        except (requests.RequestException, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready after {timeout} s\n" + "\n".join(s.output() for s in servers))
        time.sleep(0.3)


def start_controller(cwd: Path) -> Server:
    port = free_port()
    server = Server("controller", [PY, "-m", "llava.serve.controller", "--port", port], cwd, port)
    wait_until("controller", lambda: requests.post(server.url + "/list_models", timeout=2).ok, [server], 60)
    return server


def start_worker(name: str, controller: Server, model_path, cwd: Path, extra=()) -> Server:
    port = free_port()
    return Server(name, [PY, "-m", "llava.serve.model_worker", "--port", port,
                         "--worker-address", f"http://127.0.0.1:{port}", "--controller-address", controller.url,
                         "--model-path", model_path, "--device", "cpu", "--limit-model-concurrency", "4", *extra],
                  cwd, port)


def wait_for_models(controller: Server, workers: list[Server], names: list[str], timeout: float = 240) -> None:
    def listed():
        # a worker registers before its HTTP server starts: wait for both
        models = requests.post(controller.url + "/list_models", timeout=5).json()["models"]
        return set(names) <= set(models) and all(
            requests.post(w.url + "/worker_get_status", timeout=5).ok for w in workers)

    wait_until(f"workers {names}", listed, [controller, *workers], timeout)


def start_web(controller: Server, cwd: Path, mode: str) -> Server:
    port = free_port()
    server = Server(f"web-{mode}", [PY, "-m", "llava.serve.gradio_web_server", "--controller-url", controller.url,
                                    "--port", port, "--model-list-mode", mode], cwd, port)
    return server


def wait_for_web(server: Server, timeout: float = 120) -> None:
    wait_until(server.name, lambda: requests.get(server.url + "/", timeout=5).status_code == 200, [server], timeout)
