"""The named queries and the connection pool's lifecycle.

Connections run in autocommit: every request is one statement, so it is atomic on its
own, and autocommit saves the BEGIN and COMMIT round trips a transaction would add.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiosql
import psycopg
from psycopg_pool import AsyncConnectionPool

from service import QUERIES_DIR
from service.config import Settings

logger = logging.getLogger(__name__)

queries: Any = aiosql.from_path(QUERIES_DIR, "apsycopg")
"""Every statement the service runs, loaded from queries/*.sql."""


class DatabaseUnreachable(RuntimeError):
    """PostgreSQL did not answer within STARTUP_TIMEOUT."""


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    """Options for every connection the service opens."""
    return {"autocommit": True, "application_name": settings.application_name}


async def wait_for_database(settings: Settings) -> dict[str, str]:
    """Connect with bounded retries until STARTUP_TIMEOUT; return the server's identity.

    A database that comes up a few seconds after the service (docker compose, a restart)
    is normal, so failures are retried with backoff; past the deadline, raise
    DatabaseUnreachable with the last error (never the password).
    """
    deadline = time.monotonic() + settings.startup_timeout
    delay = 0.25
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        try:
            conn = await psycopg.AsyncConnection.connect(
                settings.database_url,
                connect_timeout=max(1, min(5, int(remaining))),
                **connection_kwargs(settings),
            )
        except psycopg.Error as exc:
            reason = _first_line(exc)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DatabaseUnreachable(
                    f"cannot connect to PostgreSQL after {attempt} attempts in "
                    f"{settings.startup_timeout:g}s: {reason}"
                ) from None
            logger.warning("PostgreSQL not reachable yet (attempt %d): %s", attempt, reason)
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 2.0)
            continue
        async with conn:
            info = await queries.server_info(conn)
        return {"server_version": info[0], "database": info[1]}


def create_pool(settings: Settings) -> AsyncConnectionPool:
    """A closed pool; the lifespan opens it once PostgreSQL answers."""
    return AsyncConnectionPool(
        settings.database_url,
        min_size=settings.pool_min,
        max_size=settings.pool_max,
        timeout=settings.pool_timeout,
        kwargs=connection_kwargs(settings),
        name="logikids-sync",
        open=False,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
