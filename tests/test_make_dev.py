"""`make dev`, as the README promises it: a local PostgreSQL of its own, migrated, the
service serving on it. CI runs the suite with the system PostgreSQL hidden, so this also
shows `make dev` needs nothing installed but what the lock brings."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import httpx2
import pytest

from service.localpg import free_port
from tests.paths import REPO_ROOT
from tests.processes import Service
from tests.test_smoke import PAYLOAD

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_dev_starts_postgresql_migrates_and_serves():
    workdir = Path(tempfile.mkdtemp(prefix="logikids-make-dev-"))
    workdir.chmod(0o755)  # as root the cluster runs as another user, who must enter it
    pgdata, port = workdir / "postgres", free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MAKEFLAGS")}
    env.update({"PORT": str(port), "LOG_LEVEL": "WARNING"})
    args = [f"PGDATA_DEV={pgdata}", f"VENV={REPO_ROOT / '.venv'}"]
    log_path = workdir / "make-dev.log"
    with log_path.open("wb") as log:
        dev = subprocess.Popen(
            ["make", "--no-print-directory", "dev", *args], cwd=REPO_ROOT, env=env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        Service(dev, port, "make-dev", log_path).wait_ready(timeout=120)
        user = "550e8400-e29b-41d4-a716-446655440000"
        assert httpx2.put(f"{base}/api/sync/{user}", json=PAYLOAD).status_code == 200
        assert httpx2.get(f"{base}/api/sync/{user}").json()["iv"] == PAYLOAD["iv"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(dev.pid, signal.SIGTERM)
        try:
            dev.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
        subprocess.run(
            ["make", "--no-print-directory", "dev-db-stop", *args], cwd=REPO_ROOT, env=env,
            capture_output=True, timeout=120,
        )  # fmt: skip
        stopped = not (pgdata / "postmaster.pid").exists()
        shutil.rmtree(workdir, ignore_errors=True)
    assert stopped, "make dev-db-stop left the dev cluster running"
