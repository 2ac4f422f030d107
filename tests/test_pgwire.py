"""The batcher's libpq exchange (service/pgwire.py) on a real PostgreSQL: parameters and
columns in text format, one Parse per statement and connection, and errors that stay
with their own statement."""

from __future__ import annotations

import asyncio
import datetime
import uuid

import psycopg
import pytest

from service.batching import StatementBatcher
from service.db import create_pool, queries
from tests.conftest import test_queries

TYPES = test_queries.batching_types.sql
PREPARED_HERE = test_queries.batching_prepared_here.sql
MISSING_TABLE = test_queries.batching_missing_table.sql
ONE = test_queries.batching_one.sql


async def _on_one_connection(settings, body, **options):
    """`body(batcher, pool)` with a pool of one connection: every batch shares it."""
    pool = create_pool(settings.with_changes(pool_min=1, pool_max=1))
    await pool.open(wait=True)
    try:
        batcher = StatementBatcher(pool, max_batches=1, queue_timeout=5, max_waiting=100, **options)
        return await body(batcher, pool)
    finally:
        await pool.close()


@pytest.mark.parametrize("pipelined", [True, False])
def test_every_type_goes_and_comes_back_as_python_would_have_it(settings, pipelined):
    when = datetime.datetime(2026, 12, 2, 10, 30, 15, 123456, tzinfo=datetime.UTC)
    version = uuid.uuid4()
    params = {
        "b": True, "i": 2**62, "t": 'quote " backslash \\ ünïcode', "u": version,
        "ts": when, "a": [uuid.uuid4(), uuid.uuid4()], "f": 0.25,
    }  # fmt: skip

    async def body(batcher, pool):
        return await batcher.fetchone(TYPES, params)

    row = asyncio.run(_on_one_connection(settings, body, pipelined=pipelined))
    assert row == (True, 2**62, params["t"], version, when, 2, 0.25, params["t"])


def test_each_statement_is_prepared_once_per_connection(settings):
    async def body(batcher, pool):
        for _ in range(3):
            await asyncio.gather(*(batcher.fetchone(ONE, {}) for _ in range(5)))
        return await batcher.fetchone(PREPARED_HERE, {})

    (prepared,) = asyncio.run(_on_one_connection(settings, body))
    assert prepared == 2  # ONE and PREPARED_HERE, whatever the number of runs


def test_without_prepared_statements_nothing_is_prepared(settings):
    """prepare=False: PgBouncer in transaction mode (DB_PREPARE_THRESHOLD=off)."""

    async def body(batcher, pool):
        await asyncio.gather(*(batcher.fetchone(ONE, {}) for _ in range(5)))
        return await batcher.fetchone(PREPARED_HERE, {})

    (prepared,) = asyncio.run(_on_one_connection(settings, body, prepare=False))
    assert prepared == 0


def test_a_failed_parse_is_its_own_statements_error_and_the_batch_goes_on(settings):
    """A statement whose Parse fails hears the Parse's error (not "pipeline aborted"),
    the others of its batch run, and the next batch parses it afresh."""

    async def body(batcher, pool):
        calls = [batcher.fetchone(ONE, {}), batcher.fetchone(MISSING_TABLE, {})]
        calls += [batcher.fetchone(MISSING_TABLE, {}), batcher.fetchone(ONE, {})]
        first = await asyncio.gather(*calls, return_exceptions=True)
        again = await asyncio.gather(batcher.fetchone(MISSING_TABLE, {}), return_exceptions=True)
        return first, again[0]

    results, again = asyncio.run(_on_one_connection(settings, body))
    assert results[0] == (1,) and results[3] == (1,)
    assert isinstance(results[1], psycopg.errors.UndefinedTable)
    assert isinstance(results[2], psycopg.errors.UndefinedTable)  # the first one's Parse
    assert isinstance(again, psycopg.errors.UndefinedTable)


@pytest.mark.parametrize("pipelined", [True, False])
def test_statements_dropped_behind_its_back_are_prepared_again(settings, pipelined):
    async def body(batcher, pool):
        await batcher.fetchone(ONE, {})
        async with pool.connection() as conn:
            await conn.execute(test_queries.batching_deallocate_all.sql, prepare=False)
        lost = await asyncio.gather(batcher.fetchone(ONE, {}), return_exceptions=True)
        return lost[0], await batcher.fetchone(ONE, {})

    lost, again = asyncio.run(_on_one_connection(settings, body, pipelined=pipelined))
    assert isinstance(lost, psycopg.OperationalError)  # the connection's state: a 503
    assert again == (1,)


def test_a_nul_in_a_text_parameter_fails_that_statement_alone(settings):
    async def body(batcher, pool):
        calls = [
            batcher.fetchone(test_queries.batching_length.sql, {"text": "a\x00b"}),
            batcher.fetchone(ONE, {}),
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    bad, good = asyncio.run(_on_one_connection(settings, body))
    assert isinstance(bad, psycopg.DataError)
    assert good == (1,)


def test_a_parse_cancelled_behind_a_lock_is_a_503_for_every_statement_relying_on_it(settings, db):
    """Parsing a statement on a locked table waits for the lock; past the batch deadline
    the watchdog cancels it. The batch's later statements of that kind were sent without
    a Parse of their own, and must hear the cancellation (a 503), never "prepared
    statement does not exist" (which would be a 500)."""
    store = queries.store_record.sql

    async def body(batcher, pool):
        with psycopg.connect(settings.database_url) as locker:
            test_queries.faults_lock_records(locker)
            calls = [batcher.fetchone(store, _record()) for _ in range(3)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            locker.rollback()
        return results, await batcher.fetchone(store, _record())

    results, after = asyncio.run(_on_one_connection(settings, body, batch_deadline=0.5))
    assert all(isinstance(r, psycopg.errors.QueryCanceled) for r in results), results
    assert after is not None  # prepared afresh on a new connection, and stored


def _record() -> dict[str, object]:
    return {
        "user_id": uuid.uuid4(), "encrypted_blob": "AAAA", "iv": "MTIzNDU2Nzg5MGFi",
        "timestamp": 1, "checksum": "a" * 64, "blob_size": 3, "version": uuid.uuid4(),
    }  # fmt: skip


def test_a_batch_of_large_reads_and_writes_does_not_deadlock(settings):
    """A batch whose reads answer more than the socket buffers hold, queued with uploads
    that take several writes: the batcher reads while it waits to write (libpq's
    pipeline-mode advice). Over loopback TCP libpq's own read-when-the-write-blocks
    usually saves even a writer that only waits for writable, so this guards the large
    mixed batch as a whole rather than reproducing the deadlock every time."""
    blob = "QUFB" * 330_000  # 1.32 MB of base64: a record near the limit
    users = [uuid.uuid4() for _ in range(16)]

    def record(user) -> dict[str, object]:
        return {**_record(), "user_id": user, "encrypted_blob": blob, "blob_size": 990_000}

    async def body(batcher, pool):
        await asyncio.gather(
            *(batcher.fetchone(queries.store_record.sql, record(u)) for u in users)
        )
        reads = [
            batcher.fetchone(
                queries.fetch_record.sql,
                {"user_id": u, "known_versions": None, "any_version": False},
            )
            for u in users
        ]
        writes = [batcher.fetchone(queries.store_record.sql, record(u)) for u in users[:12]]
        return await asyncio.wait_for(asyncio.gather(*reads, *writes), timeout=30)

    results = asyncio.run(
        _on_one_connection(settings, body, max_batch_size=64, max_batch_bytes=64 * 1024 * 1024)
    )
    assert [r[0] for r in results[:16]] == [blob] * 16
