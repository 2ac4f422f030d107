"""Fixtures of the fault suite: a PostgreSQL cluster per test module that tests may crash
and restart, a launcher of service processes, and the report of measured numbers.

The cluster is the module's own (never the session's shared server of tests/conftest.py),
because its tests kill it. Its folder lives outside pytest's tmp dir, which root keeps
private: the `postgres` user running the server must be able to reach it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import FaultCluster, Launcher, Report, chown_to_postgres


@pytest.fixture(scope="module")
def cluster() -> Iterator[FaultCluster]:
    workdir = Path(tempfile.mkdtemp(prefix="logikids-faults-pg-"))
    chown_to_postgres(workdir)
    fault_cluster = FaultCluster(workdir)
    try:
        fault_cluster.init()
        fault_cluster.start()
        yield fault_cluster
    finally:
        fault_cluster.teardown()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def running_cluster(cluster: FaultCluster) -> FaultCluster:
    """The module's cluster, started again if an earlier test left it down."""
    if not cluster.pg.running():
        cluster.start()
    return cluster


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    """Start the service through its CLI; whatever still runs at teardown is killed."""
    launcher = Launcher(tmp_path, name="faults")
    try:
        yield launcher
    finally:
        launcher.teardown()


@pytest.fixture(scope="session")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    """Numbers per scenario in <pytest basetemp>/faults-report.json (and $FAULTS_REPORT)."""
    return Report(tmp_path_factory.getbasetemp() / "faults-report.json")
