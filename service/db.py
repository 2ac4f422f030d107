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
from service.batching import StatementBatcher
from service.config import Settings

logger = logging.getLogger(__name__)

queries: Any = aiosql.from_path(QUERIES_DIR, "apsycopg")
"""Every statement the service runs, loaded from queries/*.sql."""


MINIMUM_SERVER_VERSION = 150000
"""PostgreSQL 15: the oldest release the suite runs on (docs/operations.md)."""


class DatabaseUnreachable(RuntimeError):
    """PostgreSQL did not answer within STARTUP_TIMEOUT, or is older than the service
    supports."""


def check_server_version(version_num: int, version: str) -> None:
    """Refuse a server older than MINIMUM_SERVER_VERSION with one clear line, rather than
    fail later on some statement it does not know."""
    if version_num < MINIMUM_SERVER_VERSION:
        raise DatabaseUnreachable(
            f"PostgreSQL {version} is too old: logikids-sync needs PostgreSQL 15 or newer"
        )


def connection_kwargs(settings: Settings, *, for_requests: bool = True) -> dict[str, Any]:
    """Options for every connection the service opens.

    statement_timeout bounds how long a request can wait on a lock or a slow server (the
    request then gets a 503); migrations and maintenance (`for_requests=False`) may take
    longer. TCP keepalives notice a peer that vanished without a reset.
    """
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "application_name": settings.application_name,
        "prepare_threshold": settings.prepare_threshold,
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    if for_requests and settings.statement_timeout_ms:
        kwargs["options"] = f"-c statement_timeout={settings.statement_timeout_ms}"
    return kwargs


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
        check_server_version(info[2], info[0])
        return {"server_version": info[0], "database": info[1]}


async def maintenance_connection(settings: Settings) -> psycopg.AsyncConnection:
    """A connection of its own for migrations, cleanup and imports: autocommit, and no
    request statement_timeout, since their work may rightly take longer. Use it as
    `async with await maintenance_connection(settings) as conn:`."""
    return await psycopg.AsyncConnection.connect(
        settings.database_url, **connection_kwargs(settings, for_requests=False)
    )


def create_pool(settings: Settings) -> AsyncConnectionPool:
    """A closed pool; the lifespan opens it once PostgreSQL answers."""
    return AsyncConnectionPool(
        settings.database_url,
        min_size=settings.pool_min,
        max_size=settings.pool_max,
        timeout=settings.pool_timeout,
        max_waiting=settings.pool_max_waiting,
        # A reconnect attempt that has failed for this long is dropped, and the next request
        # that needs a connection starts a fresh one at once: without this, psycopg_pool's
        # backoff (1, 3, 7, 15, 31 s...) delays recovery after a long outage by up to as
        # long again. The pool never gives up for good: requests keep asking.
        reconnect_timeout=max(settings.pool_timeout, 5.0),
        kwargs=connection_kwargs(settings),
        name="logikids-sync",
        open=False,
    )


def create_batcher(pool: AsyncConnectionPool, settings: Settings) -> StatementBatcher:
    """The requests' statements, batched over `pool` within the pool's own bounds: as
    many batches as connections, the same queue timeout and waiting limit."""
    return StatementBatcher(
        pool,
        max_batches=settings.pool_max,
        queue_timeout=settings.pool_timeout,
        max_waiting=settings.pool_max_waiting,
        batch_deadline=settings.statement_timeout_ms / 1000 or None,
        pipelined=settings.pipeline,
        prepare=settings.prepare_threshold is not None,
        max_batch_size=settings.batch_max_statements,
    )


async def exchange_counts(conn: psycopg.AsyncConnection, **bindings: object) -> list[Any]:
    """queries.exchange_counts (the rate limiter's exchange) on `conn`, planned afresh
    each time rather than prepared.

    Why: the statement filters the other processes' buckets with `<> ALL` of the buckets
    sent (hundreds). Planned with their values, PostgreSQL hashes that array; the generic
    plan of a prepared statement (psycopg prepares after five runs) compares each row
    with every element instead. Measured side by side, an exchange of 400 buckets took
    14 ms prepared and 7 ms planned each time, of which planning is 0.3-0.6 ms
    (docs/benchmarks.md). The rows are fetched at once, not one by one through aiosql."""
    cursor = await conn.execute(queries.exchange_counts.sql, bindings, prepare=False)
    return await cursor.fetchall()


_pool_checks: set[asyncio.Task[None]] = set()


def schedule_pool_check(pool: AsyncConnectionPool) -> None:
    """After a connection failed, test the pool's idle connections in the background.

    When PostgreSQL restarts, every idle connection in the pool is dead; without this,
    each would fail one more request before being discarded. One check at a time.
    """
    if _pool_checks or pool.closed:
        return
    task = asyncio.get_running_loop().create_task(_check(pool))
    _pool_checks.add(task)
    task.add_done_callback(_pool_checks.discard)


async def _check(pool: AsyncConnectionPool) -> None:
    try:
        await pool.check()
    except Exception as exc:  # the next failure schedules another check
        logger.debug("Pool check failed: %s", type(exc).__name__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
