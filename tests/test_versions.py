"""The supported versions the docs state are the ones the code checks: Python 3.11+ in
pyproject.toml, PostgreSQL 15+ at start-up."""

from __future__ import annotations

import sys
import tomllib

import psycopg
import pytest

from service.db import MINIMUM_SERVER_VERSION, DatabaseUnreachable, check_server_version
from tests.paths import REPO_ROOT


def test_the_package_requires_the_python_the_suite_runs_on():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    assert sys.version_info >= (3, 11)


def test_a_server_older_than_postgresql_15_is_refused_with_one_clear_line():
    with pytest.raises(DatabaseUnreachable, match=r"PostgreSQL 14\.10 is too old"):
        check_server_version(140010, "14.10")
    check_server_version(150000, "15.0")
    assert MINIMUM_SERVER_VERSION == 150000


def test_the_server_under_test_is_supported(db: psycopg.Connection):
    check_server_version(db.info.server_version, "under test")
