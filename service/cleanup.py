"""GDPR cleanup: erase records not accessed for INACTIVE_DAYS (docs/operations.md).

The erasure runs in small batches, each its own autocommit statement, so it never holds
many row locks or one long transaction, and requests keep being served meanwhile. A
session advisory lock makes one replica (or one `cleanup` command) do the work while the
others skip the round; session locks need a real session, so this does not work through
PgBouncer in transaction mode (run the scheduled cleanup against PostgreSQL directly).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import psycopg
from psycopg_pool import AsyncConnectionPool

from service import metrics
from service.config import Settings
from service.db import (
    DatabaseUnreachable,
    maintenance_connection,
    queries,
    wait_for_database,
)

logger = logging.getLogger(__name__)

LOCK_KEY = int.from_bytes(b"lkclean!", "big") >> 1
"""Advisory lock id of the cleanup (ASCII, halved to fit a signed BIGINT); not the
migrations' id, so a cleanup never delays a start-up."""

BATCH_SIZE = 1000
"""Records erased per statement: big enough to be quick, small enough to lock briefly."""


async def erase_inactive(
    conn: psycopg.AsyncConnection,
    *,
    inactive_days: int,
    batch_size: int = BATCH_SIZE,
    on_batch: Callable[[int], object] | None = None,
) -> int:
    """Erase records not accessed for `inactive_days`, batch by batch; return how many.

    Goes on while a whole batch was chosen (records read or stored meanwhile are kept,
    and the next batch takes the next oldest), and stops after the first batch smaller
    than `batch_size`: nothing old is left. The statement (queries/cleanup.sql) also
    runs on Citus, over every shard.
    """
    if not conn.autocommit:
        raise ValueError("erase_inactive needs an autocommit connection: a batch per commit")
    if inactive_days < 1 or batch_size < 1:
        raise ValueError("inactive_days and batch_size must be at least 1")
    total = 0
    while True:
        erased, chosen = await queries.erase_inactive_records(
            conn, inactive_days=inactive_days, batch_size=batch_size
        )
        total += erased
        if on_batch is not None:
            on_batch(erased)
        if chosen < batch_size:
            return total


async def cleanup_once(
    pool_or_conn: AsyncConnectionPool | psycopg.AsyncConnection,
    settings: Settings,
    *,
    inactive_days: int | None = None,
    batch_size: int = BATCH_SIZE,
) -> int | None:
    """Run one cleanup under the advisory lock; None when another session holds it.

    One connection is held for the whole run: the lock belongs to the session, so it
    must be taken and released on the same connection.
    """
    days = settings.inactive_days if inactive_days is None else inactive_days
    if isinstance(pool_or_conn, psycopg.AsyncConnection):
        return await _locked_cleanup(pool_or_conn, inactive_days=days, batch_size=batch_size)
    async with pool_or_conn.connection() as conn:
        return await _locked_cleanup(conn, inactive_days=days, batch_size=batch_size)


async def _locked_cleanup(
    conn: psycopg.AsyncConnection, *, inactive_days: int, batch_size: int
) -> int | None:
    if not await queries.try_cleanup_lock(conn, lock_key=LOCK_KEY):
        return None
    try:
        return await erase_inactive(conn, inactive_days=inactive_days, batch_size=batch_size)
    finally:
        try:
            await queries.release_cleanup_lock(conn, lock_key=LOCK_KEY)
        except psycopg.Error:
            # A pooled session must not keep the lock, or no replica would clean up again;
            # closing it makes the server drop the lock and the pool discard the session.
            logger.warning("Could not release the cleanup lock; closing its connection")
            await conn.close()


async def scheduled_cleanup(pool: AsyncConnectionPool, settings: Settings) -> None:
    """The periodic job (CLEANUP_INTERVAL): one round, logged; errors go to the caller."""
    erased = await cleanup_once(pool, settings)
    if erased is None:
        logger.debug("Cleanup skipped: another replica holds the cleanup lock")
    elif erased:
        metrics.CLEANUP_ERASED.inc(erased)
        logger.info(
            "Cleanup erased %s (not accessed for %d days)",
            _records(erased).replace("record", "inactive record"),
            settings.inactive_days,
        )


async def run_cleanup_command(settings: Settings, *, inactive_days: int, dry_run: bool) -> int:
    """`logikids-sync cleanup`: erase (or with `dry_run` count) and report; exit status."""
    if inactive_days < 1:
        print(
            f"logikids-sync: cleanup: --inactive-days must be at least 1, not {inactive_days}",
            file=sys.stderr,
        )
        return 2
    try:
        await wait_for_database(settings)
        async with await maintenance_connection(settings) as conn:
            if dry_run:
                count = await queries.count_inactive_records(conn, inactive_days=inactive_days)
                print(f"Would erase {_records(count)} not accessed for {inactive_days} days.")
                return 0
            erased = await cleanup_once(conn, settings, inactive_days=inactive_days)
    except (DatabaseUnreachable, psycopg.Error) as exc:
        print(f"logikids-sync: cleanup failed: {exc}", file=sys.stderr)
        return 1
    if erased is None:
        print(
            "logikids-sync: cleanup: another cleanup is running (advisory lock held); "
            "nothing erased, try again later",
            file=sys.stderr,
        )
        return 1
    print(f"Erased {_records(erased)} not accessed for {inactive_days} days.")
    return 0


def _records(count: int) -> str:
    return f"{count} record" if count == 1 else f"{count} records"
