"""The service as a real process (`python -m service serve`), for tests that need several
processes or real sockets."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2

from service.localpg import free_port


@contextlib.contextmanager
def service_process(
    database_url: str, *, log_file: Path | None = None, **env: str
) -> Iterator[str]:
    """`logikids-sync serve` as a real process; yields its base URL, stops it after.

    Its stderr (the logs) goes to `log_file`, or a temporary file: never a pipe nobody
    reads, which would block the service once full.
    """
    port = free_port()
    environ = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "STARTUP_TIMEOUT": "20",
        **env,
    }
    log = open(log_file, "w+b") if log_file else tempfile.TemporaryFile()  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve"],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"service exited: {log.read().decode(errors='replace')}")
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "service did not become ready"
            time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
