"""The service as a real process (`python -m service serve`), for tests that need real
sockets, signals or several processes. Whatever a Launcher starts, its teardown kills."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx2

from service.localpg import free_port
from tests.paths import REPO_ROOT as PROJECT_ROOT

READY_WITHIN = 60
"""Seconds a healthy start-up may take before a test gives up (never a timing claim)."""


@dataclass
class Service:
    """One `python -m service serve` process, its port, and where its logs go."""

    process: subprocess.Popen[bytes]
    port: int
    application_name: str
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = READY_WITHIN, path: str = "/health") -> float:
        """Poll `path` until 200; fail at once if the process exits. Returns the time."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"service exited with {self.process.returncode}:\n{self.logs()}"
                )
            with contextlib.suppress(httpx2.TransportError):
                if httpx2.get(f"{self.base_url}{path}", timeout=5).status_code == 200:
                    return time.monotonic()
            if time.monotonic() > deadline:
                raise AssertionError(f"service not ready after {timeout}s:\n{self.logs()}")
            time.sleep(0.05)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"service still running after {timeout}s:\n{self.logs()}"
            ) from None

    def pids(self) -> list[int]:
        """The supervisor and, with --workers, its worker processes."""
        return [self.process.pid, *children_of(self.process.pid)]

    def rss_mb(self) -> float:
        """Resident memory of the process and its workers, in MiB."""
        total_kb = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
        return total_kb / 1024

    def kill(self) -> None:
        """Kill the process and its workers (teardown only)."""
        for pid in reversed(self.pids()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)


class Launcher:
    """Starts services through the CLI and remembers them, so teardown can kill them."""

    DEFAULTS: Mapping[str, str] = {
        "STARTUP_TIMEOUT": "20",
        "SHUTDOWN_TIMEOUT": "5",
        "CLEANUP_INTERVAL": "0",
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "INFO",
    }

    def __init__(
        self, log_dir: Path, *, defaults: Mapping[str, str] | None = None, name: str = "test"
    ) -> None:
        self.log_dir = log_dir
        self.defaults = {**self.DEFAULTS, **(defaults or {})}
        self.name = name
        self.started: list[Service] = []

    def __call__(self, database_url: str, *args: str, **env: str) -> Service:
        port = free_port()
        application_name = f"{self.name}-{uuid.uuid4().hex[:12]}"
        log_path = self.log_dir / f"service-{len(self.started)}-{port}.log"
        environ = {
            **os.environ,
            **self.defaults,
            "DATABASE_URL": database_url,
            "DB_APPLICATION_NAME": application_name,
            **env,
        }
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--port", str(port), *args],
                env=environ,
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=default_signal_dispositions,
            )
        service = Service(process, port, application_name, log_path)
        self.started.append(service)
        return service

    def teardown(self) -> None:
        for service in self.started:
            if service.process.poll() is None or service.pids()[1:]:
                service.kill()


@contextlib.contextmanager
def service_process(
    database_url: str, *, log_file: Path | None = None, **env: str
) -> Iterator[str]:
    """One service, ready; yields its base URL, ends it with SIGTERM (or kills it)."""
    with tempfile.TemporaryDirectory(prefix="logikids-service-") as log_dir:
        launcher = Launcher(Path(log_dir), defaults={"LOG_LEVEL": "WARNING"})
        service = launcher(database_url, **env)
        try:
            service.wait_ready(timeout=30)
            yield service.base_url
        finally:
            service.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(AssertionError):
                service.wait_exit(timeout=15)
            launcher.teardown()
            if log_file is not None:
                log_file.write_bytes(service.log_path.read_bytes())


def children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid` (workers of a supervisor, backends of a postmaster)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def default_signal_dispositions() -> None:
    """Undo an inherited 'ignore SIGINT' (shells do that to background jobs), so the
    service meets SIGINT as it does in a terminal, wherever the test suite runs."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
