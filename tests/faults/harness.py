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
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from service.localpg import LocalCluster, bindir
from tests.conftest import test_queries
from tests.processes import READY_WITHIN, Launcher, Service, children_of

__all__ = ["READY_WITHIN", "Launcher", "Service"]


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


def _is_postgres(pid: int) -> bool:
    try:
        return b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class FaultCluster:
    """A LocalCluster of the test's own, with the faults a test injects into it.

    It runs with PostgreSQL's durable defaults (fsync, synchronous_commit on): the suite
    asserts that acknowledged writes survive a crash, which is only a claim about the
    service when the database keeps its side of the bargain. It runs the system's
    PostgreSQL (`bindir(system=True)`), not the embedded wheel: the numbers in
    docs/reliability.md were measured on it, and Citus is built into it.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pg = LocalCluster(workdir / "data", binaries=bindir(system=True))
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
        children = children_of(pid)
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
            self.seen_pids.update([pid, *children_of(pid)])

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
class Report:
    """The numbers each scenario measured, written as JSON as they come in, so a run
    (`make test-faults PYTEST_ARGS=-s`) regenerates docs/reliability.md's tables."""

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
