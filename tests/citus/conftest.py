"""Fixtures for the Citus run (`make test-citus`): one Citus cluster, one distributed database.

The session starts a coordinator and two workers (tests/citus/harness.py) and stops
every node at the end. Its one database has the citus extension on every node and the
workers registered, and is migrated once by `migrations.migrate`, which distributes
user_sync_data by user_id itself. The root conftest's fixtures are overridden so that
every test's `database_url` is that database, emptied (TRUNCATE) before the test: a fresh
database per test (`createdb -T`) would need the extension and the node registration
again each time.

The modules here named after a root test module (test_contract.py, ...) import its tests,
which then run under these fixtures. Tests that make databases of their own, or drop the
test's database, are skipped with the reason; so are those a module lists in CITUS_SKIPS.

tests/citus is collected only when asked for (`pytest tests/citus`, or
LOGIKIDS_TEST_CITUS=1), so `make test` does not run the modules twice.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from service import migrations
from tests.citus.harness import CitusCluster, CitusUnavailable, citus_cluster
from tests.conftest import Server, test_queries

HERE = Path(__file__).resolve().parent
DATABASE = "logikids_citus"

NO_OWN_DATABASES = (
    "makes databases of its own or drops the test's database: on Citus each database needs "
    "the extension on every node and the workers registered, so the Citus run shares one "
    "distributed database"
)


def _asked_for(config: pytest.Config) -> bool:
    if os.environ.get("LOGIKIDS_TEST_CITUS") == "1":
        return True
    base = config.invocation_params.dir
    for arg in config.args:
        path = (base / arg.split("::", 1)[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave tests/citus out of a run that did not ask for it (`make test`)."""
    return None if _asked_for(config) else True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests a Citus module lists in CITUS_SKIPS ({test name: reason}), item by
    item: the functions are shared with the root module, so they are not marked."""
    for item in items:
        if HERE not in item.path.parents:
            continue
        skips = getattr(item.module, "CITUS_SKIPS", {})
        name = getattr(item, "originalname", item.name)
        if name in skips:
            item.add_marker(pytest.mark.skip(reason=f"on Citus: {skips[name]}"))


class CitusServer(Server):
    """The coordinator, for tests that ask for `pg_server`; it makes and drops no database."""

    def createdb(self, name: str, template: str | None = None) -> None:
        pytest.skip(f"on Citus: {NO_OWN_DATABASES}")

    def dropdb(self, name: str) -> None:
        pytest.skip(f"on Citus: {NO_OWN_DATABASES}")


@pytest.fixture(scope="session")
def citus() -> Iterator[CitusCluster]:
    """The coordinator and two workers, for the whole session."""
    try:
        with citus_cluster() as cluster:
            yield cluster
    except CitusUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


_names = itertools.count()


@pytest.fixture(scope="session")
def citus_database_factory(citus: CitusCluster) -> Any:
    """Databases of their own on the cluster, for the tests of the Citus setup itself:
    `make(workers=False)` leaves the workers unregistered, `make(citus_extension=False)` makes a
    plain PostgreSQL database on the coordinator (no extension)."""

    def make(*, citus_extension: bool = True, workers: bool = True) -> str:
        name = f"logikids_citus_{os.getpid()}_{next(_names)}"
        if not citus_extension:
            return citus.create_plain_database(name)
        return citus.create_database(name, workers=workers)

    return make


def migrate(url: str, directory: Path | None = None) -> list[str]:
    """`migrations.migrate` on `url`, as `logikids-sync migrate` runs it."""

    async def run() -> list[str]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            if directory is None:
                return await migrations.migrate(conn)
            return await migrations.migrate(conn, directory)

    return asyncio.run(run())


@pytest.fixture(scope="session")
def citus_database(citus: CitusCluster) -> str:
    """The session's distributed database, migrated (and so distributed) once."""
    url = citus.create_database(DATABASE)
    migrate(url)
    return url


@pytest.fixture(scope="session")
def pg_server(citus: CitusCluster) -> Server:
    return CitusServer(base_url=citus.url("postgres"), cluster=citus.coordinator)


@pytest.fixture
def new_database() -> Any:
    pytest.skip(f"on Citus: {NO_OWN_DATABASES}")


@pytest.fixture
def database_url(citus_database: str) -> str:
    """The distributed database, with user_sync_data and rate_limit_hits emptied."""
    with psycopg.connect(citus_database, autocommit=True) as conn:
        test_queries.citus_truncate_all(conn)
    return citus_database
