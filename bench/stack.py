"""What a benchmark runs against: a durable PostgreSQL, the service as production runs it,
and the seeded users.

PostgreSQL keeps fsync and synchronous_commit on, so a PUT costs the WAL flush it costs in
production; only memory and checkpoint spacing are sized for the machine, as an operator
would. The service is the real CLI (`python -m service serve`) with uvicorn workers.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiosql
import httpx2
import psycopg

from service.localpg import DATABASE, USER, free_port, throwaway_cluster

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent

POSTGRES_SETTINGS = {
    "shared_buffers": "1GB",
    "max_connections": "100",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
}
"""Sized for a 24 GB machine; durability settings stay at their safe defaults."""

seed_queries = aiosql.from_path(Path(__file__).with_name("seed.sql"), "psycopg")


def user_id(n: int) -> str:
    """The id of seeded user n, as bench/seed.sql and bench/wrk/sync.lua build it."""
    return f"00000000-0000-4000-8000-{n:012x}"


@dataclass(frozen=True)
class Payload:
    """A valid PUT body for a blob of `size` random bytes."""

    size: int

    def fields(self) -> dict[str, object]:
        blob = os.urandom(self.size)
        return {
            "encryptedBlob": base64.b64encode(blob).decode(),
            "iv": base64.b64encode(os.urandom(12)).decode(),
            "timestamp": int(time.time() * 1000),
            "checksum": hashlib.sha256(blob).hexdigest(),
        }

    def write(self, path: Path) -> dict[str, object]:
        fields = self.fields()
        path.write_bytes(json.dumps(fields).encode())
        return fields


@contextlib.contextmanager
def database(*, unix_socket: bool = False) -> Iterator[str]:
    """BENCH_DATABASE_URL when given, else a durable throwaway cluster, reached over TCP on
    loopback or, with `unix_socket`, over a Unix socket (how a service on the database's
    own host would connect)."""
    given = os.environ.get("BENCH_DATABASE_URL")
    if given:
        yield given
        return
    with throwaway_cluster("logikids-bench-pg-", start=False) as cluster:
        settings = dict(POSTGRES_SETTINGS)
        socket_dir = cluster.datadir.parent  # owned by the server's user, gone afterwards
        if unix_socket:
            settings["unix_socket_directories"] = str(socket_dir)
        cluster.start(fast_and_unsafe=False, settings=settings)
        cluster.ensure_database()
        if unix_socket:
            yield f"postgresql://{USER}@/{DATABASE}?host={socket_dir}&port={cluster.port}"
        else:
            yield cluster.url()


def migrate(database_url: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "service", "migrate"],
        env={**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"},
        cwd=ROOT,
        check=True,
    )


def seed(database_url: str, first: int, last: int, size: int, *, age_days: int = 0) -> None:
    """Users first..last with a `size`-byte blob each, in batches of 50,000."""
    fields = Payload(size).fields()
    with psycopg.connect(database_url, autocommit=True) as conn:
        for start in range(first, last + 1, 50_000):
            seed_queries.seed_users(
                conn,
                first=start,
                last=min(last, start + 49_999),
                encrypted_blob=fields["encryptedBlob"],
                iv=fields["iv"],
                checksum=fields["checksum"],
                blob_size=size,
                age_days=age_days,
            )
        seed_queries.vacuum_analyze(conn)


def forget_rate_limits(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        seed_queries.forget_rate_limits(conn)


def quiesce(database_url: str, seconds: float = 3.0) -> None:
    """A checkpoint and a pause: the writes of earlier load runs are on disk and the
    machine is idle before a latency measured "on an idle machine"."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        try:
            seed_queries.checkpoint(conn)
        except psycopg.errors.InsufficientPrivilege:  # a BENCH_DATABASE_URL role
            print("no CHECKPOINT (needs a superuser or pg_checkpoint): only a pause")
    time.sleep(seconds)


def table_size(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return seed_queries.table_size(conn)


@dataclass
class Service:
    """A running `logikids-sync serve` and its worker processes."""

    process: subprocess.Popen
    base_url: str

    def worker_pids(self) -> list[int]:
        """The uvicorn workers (children of the supervisor), or the process itself."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = [int(p) for p in children.read_text().split()] if children.exists() else []
        return [p for p in pids if _is_worker(p)] or [self.process.pid]

    def peak_rss_mb(self) -> dict[int, float]:
        """Peak resident memory (VmHWM) of each worker since it started, in MB."""
        peaks = {}
        for pid in self.worker_pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[pid] = int(line.split()[1]) / 1024
        return peaks


def _is_worker(pid: int) -> bool:
    """A uvicorn worker, not multiprocessing's resource tracker."""
    with contextlib.suppress(OSError):
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


SERVICE_ENV = {
    "WORKERS": "2",
    "DB_POOL_MIN": "4",
    "DB_POOL_MAX": "4",
    "RATE_LIMIT_PER_HOUR": "1000000000",
    "LOG_LEVEL": "INFO",
}
"""The production shape on this 2-core machine: a worker per core, a small pool per worker
(4 gave the same throughput as 16 with a lower p99: docs/benchmarks.md), the limiter on (set
high, so it counts every request but refuses none), access logs on."""


@contextlib.contextmanager
def service(
    database_url: str, env: Mapping[str, str], log: Path, *, root: Path = ROOT
) -> Iterator[Service]:
    """`python -m service serve` from `root` (another checkout of the project, such as a
    `git worktree` of an older commit, runs its own code: `-m` imports from the cwd)."""
    port = free_port()
    command = [sys.executable, "-m", "service", "serve", "--port", str(port)]
    with serving(command, port, {"DATABASE_URL": database_url, **env}, log, cwd=root) as running:
        yield running


@contextlib.contextmanager
def serving(
    command: list[str], port: int, env: Mapping[str, str], log: Path, *, cwd: Path = ROOT
) -> Iterator[Service]:
    """Run `command` (an HTTP server on `port` with a /health route) until the block
    ends, then stop it with SIGTERM; its output goes to `log`."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command, env={**os.environ, **env}, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )
    running = Service(proc, f"http://127.0.0.1:{port}")
    try:
        try:
            _wait_healthy(running)
        except SystemExit as exc:  # say why: the log goes away with the benchmark's folder
            tail = log.read_text(errors="replace").splitlines()[-15:]
            raise SystemExit("\n".join([str(exc), *tail])) from None
        yield running
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _wait_healthy(running: Service) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise SystemExit(f"the service exited with {running.process.returncode}")
        with contextlib.suppress(httpx2.HTTPError):
            if httpx2.get(f"{running.base_url}/health", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit("the service did not become healthy within 60 s")


def rotated(items: Iterable[T], round_no: int) -> list[T]:
    """`items` starting `round_no - 1` places later (round 1 as given): benchmarks that
    run several servers in turn give each one every place in the order across rounds,
    because a place can cost by itself (docs/benchmarks.md)."""
    listed = list(items)
    shift = (round_no - 1) % len(listed) if listed else 0
    return listed[shift:] + listed[:shift]


def settle(seconds: float = 1.0) -> None:
    """Let the previous case's writes and connections drain before the next one."""
    time.sleep(seconds)
