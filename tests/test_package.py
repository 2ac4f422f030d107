"""The built wheel is the service: installed (not editable) into a fresh virtualenv from
the lock, it migrates, serves, stores and answers, and prints its SQL, run from a folder
that has nothing of the checkout in it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from service.localpg import free_port
from tests.paths import REPO_ROOT
from tests.processes import Service
from tests.test_smoke import PAYLOAD

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built with the locked setuptools (no build isolation)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(REPO_ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (built,) = out.glob("logikids_sync-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the runtime lock and the wheel; returns its bin folder."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps"]
    lock = REPO_ROOT / "requirements" / "main.txt"
    subprocess.run([*pip, "--require-hashes", "-r", str(lock)], check=True, timeout=600)
    subprocess.run([*pip, str(wheel)], check=True, timeout=120)
    return venv / "bin"


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory with nothing of the checkout in it."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def _env(database_url: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return {**keep, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"}


def test_the_wheel_carries_the_sql_and_nothing_of_the_tests(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    shipped_queries = {Path(n).name for n in names if n.startswith("service/queries/")}
    shipped_migrations = {Path(n).name for n in names if n.startswith("service/migrations/")}
    assert shipped_queries == {p.name for p in (REPO_ROOT / "queries").glob("*.sql")}
    assert shipped_migrations == {p.name for p in (REPO_ROOT / "migrations").glob("*.sql")}
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]


def test_the_installed_wheel_prints_its_sql_without_a_database(installed: Path, elsewhere):
    result = subprocess.run(
        [str(installed / "logikids-sync"), "sql", "--print", "store_record"],
        cwd=elsewhere, env=_env(""), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "INSERT INTO user_sync_data" in result.stdout


def test_the_installed_wheel_migrates_serves_stores_and_answers(
    installed: Path, elsewhere: Path, database_url: str
):
    env = _env(database_url)
    cli = str(installed / "logikids-sync")
    status = subprocess.run(
        [cli, "migrate", "--status"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert status.returncode == 0, status.stderr  # the template already applied them all
    migrated = subprocess.run(
        [cli, "migrate"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stderr
    assert "up to date" in migrated.stdout
    with _serving(cli, elsewhere, env) as base:
        user = "550e8400-e29b-41d4-a716-446655440000"
        assert httpx2.put(f"{base}/api/sync/{user}", json=PAYLOAD).status_code == 200
        response = httpx2.get(f"{base}/api/sync/{user}")
    assert response.status_code == 200
    assert response.json() == {key: PAYLOAD[key] for key in response.json()}


def test_the_installed_wheel_migrates_an_empty_database(
    installed: Path, elsewhere: Path, new_database
):
    url = new_database(migrated=False)
    result = subprocess.run(
        [str(installed / "logikids-sync"), "migrate"],
        cwd=elsewhere, env=_env(url), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Applied: 001_init")


@contextlib.contextmanager
def _serving(cli: str, cwd: Path, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    log_path = cwd / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [cli, "serve", "--port", str(port)], cwd=cwd, env=env,
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        service = Service(process, port, "wheel", log_path)
        service.wait_ready(timeout=30)
        yield service.base_url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
