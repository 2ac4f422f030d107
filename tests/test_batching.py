"""The statement batcher: concurrent statements share round trips, yet each one is its
own transaction with its own answer, and waiting is bounded as the pool bounded it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg_pool import PoolTimeout, TooManyRequests

from service import pgwire
from service.batching import StatementBatcher
from service.db import create_pool, queries
from tests.conftest import new_user_id, test_queries

STORE = queries.store_record.sql
VERSION = queries.record_version.sql
ONE = test_queries.batching_one.sql
SLEEP = test_queries.batching_sleep.sql
DIVIDE = test_queries.batching_divide.sql
LENGTH = test_queries.batching_length.sql
BACKEND_PID = test_queries.batching_backend_pid.sql


def store_params(user_id: str) -> dict[str, object]:
    """A small record for `user_id`: a statement that writes and answers one row."""
    return {
        "user_id": user_id, "encrypted_blob": "AAAA", "iv": "MTIzNDU2Nzg5MGFi",
        "timestamp": 1, "checksum": "a" * 64, "blob_size": 3, "version": uuid.uuid4(),
    }  # fmt: skip


def stored_users(db) -> set[str]:
    return {str(row[0]) for row in test_queries.all_records(db)}


@contextlib.contextmanager
def counting_pipelines(opened: list[int]) -> Iterator[None]:
    """Append to `opened` each time a batch is run in pipeline mode (one round trip)."""
    original = pgwire.run_batch

    async def counting_run_batch(conn, batch, *, prepare, pipelined):
        if pipelined:
            opened.append(len(batch))
        return await original(conn, batch, prepare=prepare, pipelined=pipelined)

    pgwire.run_batch = counting_run_batch
    try:
        yield
    finally:
        pgwire.run_batch = original


async def with_batcher(settings, body, *, pool_max=2, **kwargs):
    pool = create_pool(settings.with_changes(pool_min=1, pool_max=pool_max))
    await pool.open(wait=True)
    try:
        options = {"max_batches": 2, "queue_timeout": 5.0, "max_waiting": 100, **kwargs}
        return await body(StatementBatcher(pool, **options), pool)
    finally:
        await pool.close()


def test_concurrent_statements_share_round_trips_and_each_gets_its_own_row(settings, db):
    users = [new_user_id() for _ in range(50)]
    executes: list[int] = []

    async def body(batcher, pool):
        with counting_pipelines(executes):
            return await asyncio.gather(*(batcher.fetchone(STORE, params[u]) for u in users))

    params = {u: store_params(u) for u in users}
    rows = asyncio.run(with_batcher(settings, body))
    assert [tuple(r) for r in rows] == [(params[u]["version"],) for u in users]
    assert len(executes) < 50  # batched: fewer pipelines than statements
    assert stored_users(db) == set(users)


def test_a_failing_statement_fails_alone_and_the_others_still_commit(settings, db):
    users = [new_user_id() for _ in range(9)]

    async def body(batcher, pool):
        calls = [batcher.fetchone(STORE, store_params(u)) for u in users[:5]]
        calls.append(batcher.fetchone(VERSION, {"user_id": "not-a-uuid"}))
        calls += [batcher.fetchone(STORE, store_params(u)) for u in users[5:]]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(with_batcher(settings, body))
    assert isinstance(results[5], psycopg.errors.InvalidTextRepresentation)
    assert all(isinstance(r, tuple) for i, r in enumerate(results) if i != 5)
    assert stored_users(db) == set(users)  # none rolled back with the failure


def test_each_failing_statement_of_a_batch_hears_its_own_error(settings):
    """A pipeline raises only the first error it reads; the second failure of the same
    batch must not be answered with it (a 400 for a timeout, say)."""

    async def body(batcher, pool):
        calls = [
            batcher.fetchone(ONE, {}),
            batcher.fetchone(VERSION, {"user_id": "not-a-uuid"}),
            batcher.fetchone(ONE, {}),
            batcher.fetchone(DIVIDE, {"divisor": 0}),
            batcher.fetchone(DIVIDE, {"divisor": 1}),
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    opened: list[int] = []
    with counting_pipelines(opened):
        results = asyncio.run(with_batcher(settings, body, max_batches=1))
    assert len(opened) == 1  # one batch, so the two failures shared a pipeline
    assert isinstance(results[1], psycopg.errors.InvalidTextRepresentation)
    assert isinstance(results[3], psycopg.errors.DivisionByZero)
    assert [tuple(results[i]) for i in (0, 2, 4)] == [(1,), (1,), (1,)]


def test_a_parameter_that_cannot_be_sent_fails_its_own_statement_mid_batch(settings):
    """A parameter that cannot be sent fails its own statement before anything is sent;
    the rest of the batch runs as one."""
    pipelines: list[int] = []

    async def body(batcher, pool):
        with counting_pipelines(pipelines):
            calls = [batcher.fetchone(ONE, {}) for _ in range(2)]
            calls.append(batcher.fetchone(LENGTH, {"text": object()}))
            calls += [batcher.fetchone(ONE, {}) for _ in range(2)]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(with_batcher(settings, body, max_batches=1))
    assert isinstance(results[2], psycopg.ProgrammingError)
    assert [tuple(results[i]) for i in (0, 1, 3, 4)] == [(1,)] * 4
    assert pipelines == [4]


def test_a_batch_holds_at_most_max_batch_bytes_of_parameters_but_at_least_one(settings):
    """A batch is handed to libpq whole, whose buffer keeps the largest batch's size:
    large uploads must not all share one batch."""
    pipelines: list[int] = []

    async def body(batcher, pool):
        with counting_pipelines(pipelines):
            texts = ["x" * 1000] * 6 + ["y" * 5000]  # the last alone exceeds the bound
            return await asyncio.gather(*(batcher.fetchone(LENGTH, {"text": t}) for t in texts))

    rows = asyncio.run(with_batcher(settings, body, max_batches=1, max_batch_bytes=2500))
    assert [tuple(r) for r in rows] == [(1000,)] * 6 + [(5000,)]
    assert len(pipelines) == 4  # 2 + 2 + 2 statements, then the large one by itself


def test_a_statement_nobody_takes_in_time_is_a_pool_timeout(settings):
    async def body(batcher, pool):
        slow = asyncio.ensure_future(batcher.fetchone(SLEEP, {"seconds": 1}))
        await asyncio.sleep(0.1)
        with pytest.raises(PoolTimeout):
            await batcher.fetchone(VERSION, {"user_id": new_user_id()})
        await slow

    asyncio.run(with_batcher(settings, body, max_batches=1, queue_timeout=0.3))


def test_too_many_waiting_statements_are_refused_at_once(settings):
    async def body(batcher, pool):
        slow = asyncio.ensure_future(batcher.fetchone(SLEEP, {"seconds": 0.5}))
        await asyncio.sleep(0.1)
        waiting = [asyncio.ensure_future(batcher.fetchone(ONE, {})) for _ in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(TooManyRequests):
            await batcher.fetchone(ONE, {})
        assert [tuple(r) for r in await asyncio.gather(*waiting)] == [(1,)] * 3
        await slow

    asyncio.run(with_batcher(settings, body, max_batches=1, max_waiting=3))


def test_a_broken_connection_fails_every_statement_of_its_batch_as_operational(settings, pg_server):
    async def body(batcher, pool):
        await asyncio.gather(*(batcher.fetchone(ONE, {}) for _ in range(4)))  # connections up
        with psycopg.connect(settings.database_url, autocommit=True) as killer:
            test_queries.batching_terminate_other_sessions(killer)
        return await asyncio.gather(
            *(batcher.fetchone(ONE, {}) for _ in range(5)), return_exceptions=True
        )

    results = asyncio.run(with_batcher(settings, body))
    failed = [r for r in results if isinstance(r, Exception)]
    assert failed  # the batch on a broken connection heard it
    assert all(isinstance(r, psycopg.OperationalError) for r in failed)
    assert all(tuple(r) == (1,) for r in results if not isinstance(r, Exception))


def test_a_batch_past_its_deadline_has_its_statements_cancelled_not_queued(settings):
    """PostgreSQL runs a batch's statements in turn: without the deadline, three
    one-second statements would answer after 1, 2 and 3 seconds."""

    async def body(batcher, pool):
        started = asyncio.get_running_loop().time()
        results = await asyncio.gather(
            *(batcher.fetchone(SLEEP, {"seconds": 1}) for _ in range(3)),
            return_exceptions=True,
        )
        return results, asyncio.get_running_loop().time() - started

    results, elapsed = asyncio.run(with_batcher(settings, body, max_batches=1, batch_deadline=0.3))
    assert all(isinstance(r, psycopg.errors.QueryCanceled) for r in results), results
    assert elapsed < 1.0


def test_a_connection_that_was_sent_a_cancel_is_closed_not_reused(settings):
    """A cancel request still on its way when its batch ends would cancel whatever that
    connection runs next: another request's statement. Such a connection is closed, and
    the pool opens another; one that met its deadline stays in the pool."""

    async def body(batcher, pool):
        kept = [(await batcher.fetchone(BACKEND_PID, {}))[0] for _ in range(2)]
        late = await asyncio.gather(
            *(batcher.fetchone(SLEEP, {"seconds": 1}) for _ in range(2)), return_exceptions=True
        )
        after = await asyncio.gather(*(batcher.fetchone(BACKEND_PID, {}) for _ in range(20)))
        again = await batcher.fetchone(BACKEND_PID, {})
        return kept, late, [row[0] for row in after], again[0]

    kept, late, after, again = asyncio.run(
        with_batcher(settings, body, max_batches=1, batch_deadline=0.2, pool_max=1)
    )
    assert kept[0] == kept[1]  # no cancel sent: the connection went back to the pool
    assert all(isinstance(r, psycopg.errors.QueryCanceled) for r in late), late
    assert len(set(after)) == 1  # the next batch ran whole, nothing of it cancelled
    assert after[0] != kept[0]  # ... on a new connection, not the one sent the cancels
    assert again == after[0]


def test_unpipelined_each_statement_is_its_own_round_trip_and_still_isolated(settings):
    """DB_PIPELINE=off (PgBouncer before 1.21): no pipeline mode, same answers."""
    pipelines: list[int] = []

    async def body(batcher, pool):
        with counting_pipelines(pipelines):
            calls = [batcher.fetchone(STORE, store_params(new_user_id())) for _ in range(4)]
            calls.append(batcher.fetchone(VERSION, {"user_id": "not-a-uuid"}))
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(with_batcher(settings, body, pipelined=False))
    assert pipelines == []
    assert all(isinstance(r, tuple) for r in results[:4])
    assert isinstance(results[4], psycopg.errors.InvalidTextRepresentation)
