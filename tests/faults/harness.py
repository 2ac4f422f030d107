"""The pieces every fault scenario is built from: a PostgreSQL cluster the test may crash,
the service as a real process started through its CLI, and a report of the numbers.

Everything a helper starts it also ends: the cluster's processes are remembered by pid
and killed at teardown if a crash left them behind, and service processes are killed by
the fixture that launched them.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import psycopg

from service import PROJECT_ROOT
from service.localpg import LocalCluster, free_port
from tests.conftest import test_queries

READY_WITHIN = 60
"""Seconds a healthy start-up may take before a test gives up (never a timing claim)."""


def chown_to_postgres(path: Path) -> None:
    """As root the cluster (and PgBouncer) run as `postgres`, who must own their folders."""
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a crashed postmaster's orphans are
    reaped by init, so /proc tells the truth sooner than kill(pid, 0) would)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def _is_postgres(pid: int) -> bool:
    try:
        return b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class FaultCluster:
    """A LocalCluster of the test's own, with the faults a test injects into it.

    It runs with PostgreSQL's durable defaults (fsync, synchronous_commit on): the suite
    asserts that acknowledged writes survive a crash, which is only a claim about the
    service when the database keeps its side of the bargain.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pg = LocalCluster(workdir / "data")
        self.seen_pids: set[int] = set()

    @property
    def port(self) -> int:
        return self.pg.port

    def url(self, database: str) -> str:
        return self.pg.url(database)

    def init(self) -> None:
        self.pg.init()

    def start(self) -> float:
        """Start (or restart after a crash) and wait until it accepts connections; return
        the monotonic time at which it did."""
        self.pg.start()
        self._remember()
        return time.monotonic()

    def stop_fast(self) -> None:
        """A clean restart's first half: sessions are told to end, then the server stops."""
        self._remember()
        self.pg.stop(mode="fast")

    def crash(self) -> None:
        """`kill -9` the postmaster, as the OOM killer or a pulled plug would.

        Its backends notice within moments that their parent died and exit, and the next
        start runs crash recovery from the WAL. A start needs every old backend gone
        (they still hold the shared memory), so wait for them, bounded, and kill any that
        linger (a backend stuck in a long statement would).
        """
        pid = self.pg.postmaster_pid()
        assert pid is not None, "no postmaster to crash"
        children = _children_of(pid)
        self.seen_pids.update([pid, *children])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in [pid, *children]) and time.monotonic() < deadline:
            time.sleep(0.02)
        for leftover in [p for p in children if _alive(p) and _is_postgres(p)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.02)

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database (the service migrates it on start); its URL."""
        name = name or f"faults_{uuid.uuid4().hex[:10]}"
        self.pg.ensure_database(name)
        return self.url(name)

    def _remember(self) -> None:
        pid = self.pg.postmaster_pid()
        if pid is not None:
            self.seen_pids.update([pid, *_children_of(pid)])

    def teardown(self) -> None:
        """Stop the server however it is, then kill any process of it still alive."""
        with contextlib.suppress(Exception):
            self._remember()
            self.pg.stop(mode="immediate")
        for pid in self.seen_pids:
            if _alive(pid) and _is_postgres(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def query(database_url: str, name: str, **params: object) -> object:
    """Run one of the tests' named queries (tests/sql) on a short-lived connection."""
    with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
        result = getattr(test_queries, name)(conn, **params)
        # Select queries answer with a generator: read it before the connection closes.
        return list(result) if hasattr(result, "__next__") else result


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
            raise AssertionError(f"service still running after {timeout}s") from None

    def pids(self) -> list[int]:
        """The supervisor and, with --workers, its worker processes."""
        return [self.process.pid, *_children_of(self.process.pid)]

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


def _default_signal_dispositions() -> None:
    """Undo an inherited 'ignore SIGINT' (shells do that to background jobs)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Launcher:
    """Starts services through the CLI and remembers them, so teardown can kill them."""

    DEFAULTS = {
        "STARTUP_TIMEOUT": "20",
        "SHUTDOWN_TIMEOUT": "5",
        "CLEANUP_INTERVAL": "0",
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "INFO",
    }

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Service] = []

    def __call__(self, database_url: str, *args: str, **env: str) -> Service:
        port = free_port()
        application_name = f"faults-{uuid.uuid4().hex[:12]}"
        log_path = self.log_dir / f"service-{len(self.started)}-{port}.log"
        environ = {
            **os.environ,
            **self.DEFAULTS,
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
                preexec_fn=_default_signal_dispositions,
            )
        service = Service(process, port, application_name, log_path)
        self.started.append(service)
        return service

    def teardown(self) -> None:
        for service in self.started:
            if service.process.poll() is None or service.pids()[1:]:
                service.kill()


@dataclass
class Report:
    """The numbers each scenario measured, written as JSON as they come in, so a run
    (`make test-faults PYTEST_ARGS=-s`) regenerates RELIABILITY.md's tables."""

    path: Path
    scenarios: dict[str, dict[str, object]] = field(default_factory=dict)

    def record(self, scenario: str, numbers: dict[str, object]) -> None:
        self.scenarios[scenario] = numbers
        text = json.dumps(self.scenarios, indent=2, sort_keys=True, default=str)
        self.path.write_text(text + "\n")
        extra = os.environ.get("FAULTS_REPORT")
        if extra:
            Path(extra).write_text(text + "\n")
        print(f"\n[faults] {scenario}: {json.dumps(numbers, sort_keys=True, default=str)}")
