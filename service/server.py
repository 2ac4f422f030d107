"""Running the app under uvicorn, one process or a supervisor with several workers.

Each worker builds its own app (and pool) from the environment (`app_from_env`).
"""

from __future__ import annotations

import signal
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from service.config import Settings

APP = "service.app:app_from_env"


class _Supervisor(Multiprocess):
    """uvicorn's supervisor, plus two things a sync service needs on its worst day."""

    def terminate_all(self) -> None:
        # The supervisor's copy of the listening socket would keep the kernel accepting
        # connections nobody serves; closed, new clients are refused at once and retry.
        for sock in self.sockets:
            sock.close()
        super().terminate_all()

    def startup_failed(self) -> bool:
        """A worker could not start (PostgreSQL unreachable, an edited migration)."""
        return any(process.exitcode == STARTUP_FAILURE for process in self.processes)


def run_server(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a graceful shutdown, 3 when start-up failed."""
    options: dict[str, Any] = {
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "lifespan": "on",
        "access_log": False,  # its lines hold the raw path, i.e. the user id
        "proxy_headers": False,  # the app applies FORWARDED_ALLOW_IPS itself
        "log_config": None,
        "server_header": False,
        "timeout_graceful_shutdown": max(1, round(settings.shutdown_timeout)),
    }
    if settings.workers == 1:
        # uvicorn finishes a graceful shutdown on SIGTERM, then re-raises the signal it
        # caught; this handler (which uvicorn restores first) makes that exit status 0.
        # On a failed start-up uvicorn.run itself exits with STARTUP_FAILURE (3).
        signal.signal(signal.SIGTERM, _exit_after_graceful_shutdown)
        uvicorn.run(APP, **options)
        return 0
    config = uvicorn.Config(APP, **options)
    supervisor = _Supervisor(config, sockets=[config.bind_socket()])
    supervisor.run()
    return STARTUP_FAILURE if supervisor.startup_failed() else 0


def _exit_after_graceful_shutdown(signum: int, frame: object) -> None:
    raise SystemExit(0)
