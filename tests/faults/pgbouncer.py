"""PgBouncer in transaction pooling mode in front of a test cluster (Debian's `pgbouncer`).

PgBouncer refuses to run as root, so as root it runs as `postgres` through `runuser`, with
its configuration in a folder that user owns. Only 127.0.0.1 is listened on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from service.localpg import USER, free_port
from tests.faults.harness import chown_to_postgres
from tests.processes import children_of


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None
    )


CONFIG = """\
[databases]
* = host=127.0.0.1 port={server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 500
; psycopg sends extra_float_digits, and the service sends `options` (statement_timeout)
; unless DB_STATEMENT_TIMEOUT_MS=0; PgBouncer would refuse the connection otherwise.
ignore_startup_parameters = extra_float_digits,options
server_reset_query =
logfile = {workdir}/pgbouncer.log
pidfile = {workdir}/pgbouncer.pid
"""


@dataclass
class PgBouncer:
    port: int
    workdir: Path
    process: subprocess.Popen[bytes]

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "pgbouncer.log").read_text(errors="replace")
        return ""


@contextlib.contextmanager
def running_pgbouncer(
    *, server_port: int, database: str, pool_size: int = 3
) -> Iterator[PgBouncer]:
    """Start PgBouncer (skip the test when it is not installed); stop it after."""
    import pytest

    binary = pgbouncer_binary()
    if binary is None:
        pytest.skip("pgbouncer is not installed (Debian: apt-get install -y pgbouncer)")
    workdir = Path(tempfile.mkdtemp(prefix="logikids-faults-pgbouncer-"))
    port = free_port()
    (workdir / "userlist.txt").write_text(f'"{USER}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        CONFIG.format(server_port=server_port, port=port, workdir=workdir, pool_size=pool_size)
    )
    for path in (workdir, workdir / "userlist.txt", workdir / "pgbouncer.ini"):
        chown_to_postgres(path)
    command = [binary, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    bouncer = PgBouncer(port, workdir, process)
    try:
        _wait_until_serving(bouncer, database)
        yield bouncer
    finally:
        _stop(bouncer)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_until_serving(bouncer: PgBouncer, database: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if bouncer.process.poll() is not None:
            raise AssertionError(f"pgbouncer exited:\n{bouncer.log()}")
        with contextlib.suppress(OSError, psycopg.Error):
            with socket.create_connection(("127.0.0.1", bouncer.port), timeout=1):
                pass
            with psycopg.connect(bouncer.url(database), connect_timeout=2):
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"pgbouncer not serving after {timeout}s:\n{bouncer.log()}")
        time.sleep(0.1)


def _stop(bouncer: PgBouncer) -> None:
    """SIGTERM to PgBouncer itself (under runuser it is runuser's child), then to what
    is left, by pid; never by name."""
    pids = [*children_of(bouncer.process.pid), bouncer.process.pid]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    try:
        bouncer.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        bouncer.process.wait(timeout=10)
