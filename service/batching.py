"""The sync statements of concurrent requests, sent to PostgreSQL in pipelined batches.

Why: on a small machine a round trip costs more CPU than the statement itself (a send,
a wake-up of the backend, a wait, a receive). Sending whatever statements are waiting
as one psycopg pipeline spends one round trip on many requests; `python -m
bench.batching` measured about twice the statements per second at half the CPU per
statement (docs/benchmarks.md).

What does not change: every statement is still its own transaction. A Sync follows each
one, so a statement that fails fails only its own request, its row locks are released
as soon as it is done, and each is committed (and durable) before its request is
answered. Up to `max_batches` batches run at once, each on a pooled connection; a
request waits in the queue at most `queue_timeout` seconds (then PoolTimeout, a 503), and
at most `max_waiting` requests wait (then TooManyRequests, a 503), as the pool did.

PostgreSQL runs a batch's statements one after another, each under its own
statement_timeout. So that a batch stuck behind a lock cannot take its size times that
timeout, a batch still running after `batch_deadline` (the statement timeout) has its
statements cancelled as they come up: each fails (rolled back, a 503) instead of waiting
its own turn to time out. A request is still only ever answered with what its own
statement did.

`pipelined=False` (DB_PIPELINE=off) sends one statement per round trip, without pipeline
mode: PgBouncer before 1.21 in transaction mode can hand a connection to another client
between the Syncs of one pipeline, and the fault suite saw requests hang that way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests


@dataclass(slots=True)
class _Waiting:
    sql: str
    params: Mapping[str, Any]
    result: asyncio.Future[tuple[Any, ...] | None]
    size: int
    timer: asyncio.TimerHandle | None = field(default=None)


class StatementBatcher:
    """Runs one-row statements for requests, many per round trip."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        max_batches: int,
        queue_timeout: float,
        max_waiting: int,
        batch_deadline: float | None = None,
        max_batch_size: int = 64,
        max_batch_bytes: int = 4 * 1024 * 1024,
        pipelined: bool = True,
    ) -> None:
        self.pool = pool
        self.pipelined = pipelined
        self.batch_deadline = batch_deadline
        self.max_batches = max_batches
        self.queue_timeout = queue_timeout
        self.max_waiting = max_waiting
        self.max_batch_size = max_batch_size if pipelined else 1
        self.max_batch_bytes = max_batch_bytes
        self._queue: deque[_Waiting] = deque()
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def fetchone(self, sql: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run `sql` (a named query's text) with `params`; its first row, or None."""
        if self.max_waiting and len(self._queue) >= self.max_waiting:
            raise TooManyRequests(f"{len(self._queue)} statements are already waiting")
        loop = asyncio.get_running_loop()
        waiting = _Waiting(sql, params, loop.create_future(), _text_bytes(params))
        waiting.timer = loop.call_later(self.queue_timeout, self._expire, waiting)
        self._queue.append(waiting)
        if self._running < self.max_batches:
            self._running += 1
            task = loop.create_task(self._run_batches())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await waiting.result

    def _expire(self, waiting: _Waiting) -> None:
        """Nobody took this statement in time: answer 503 rather than queue for ever."""
        if waiting.result.done():
            return
        try:
            self._queue.remove(waiting)
        except ValueError:  # already taken: its batch will answer
            return
        waiting.result.set_exception(
            PoolTimeout(f"no database connection within {self.queue_timeout} s")
        )

    async def _run_batches(self) -> None:
        """Take everything waiting (up to max_batch_size statements and max_batch_bytes
        of parameters, but at least one), run it, repeat until the queue is empty.

        The byte bound matters because a batch is handed to libpq whole before any of it
        is sent (`_write_queued`): libpq's buffer grows to the batch and keeps that size
        for the connection's life, so 64 one-megabyte uploads must not share a batch."""
        try:
            while self._queue:
                batch: list[_Waiting] = []
                size = 0
                while self._queue and len(batch) < self.max_batch_size:
                    if batch and size + self._queue[0].size > self.max_batch_bytes:
                        break
                    waiting = self._queue.popleft()
                    if waiting.timer is not None:
                        waiting.timer.cancel()
                    if not waiting.result.done():  # not cancelled by a departed client
                        batch.append(waiting)
                        size += waiting.size
                if batch:
                    not_sent = await self._run(batch)
                    self._queue.extendleft(reversed(not_sent))  # first in line again
        finally:
            self._running -= 1

    async def _run(self, batch: list[_Waiting]) -> list[_Waiting]:
        """Run `batch` in one pipeline and answer each request with its own row or its
        own error. Returns the statements never queued because psycopg refused an
        earlier one's parameters (they run in the next batch); on a broken connection
        every statement without a result hears the connection's error (503)."""
        sent: list[tuple[_Waiting, _StatementCursor]] = []
        failure: psycopg.Error | None = None
        try:
            async with self.pool.connection() as conn:
                watchdog = _Watchdog(conn, self.batch_deadline) if self.batch_deadline else None
                try:
                    try:
                        if not self.pipelined:  # a batch of one, as a plain statement
                            cursor = _StatementCursor(conn)
                            sent.append((batch[0], cursor))
                            await cursor.execute(batch[0].sql, batch[0].params)
                        else:
                            async with conn.pipeline() as pipeline:
                                with _exchanges_deferred(pipeline):
                                    for waiting in batch:
                                        cursor = _StatementCursor(conn)
                                        sent.append((waiting, cursor))  # queued even if it raises
                                        await cursor.execute(waiting.sql, waiting.params)
                                        _end_transaction(pipeline)
                                    _write_queued(pipeline)
                    except psycopg.Error as exc:
                        failure = exc  # an earlier statement's error, or the connection's
                    finally:
                        if watchdog is not None:
                            await watchdog.stop()
                    for waiting, cursor in sent:
                        if waiting.result.done():
                            continue
                        if not _succeeded(cursor):  # its own error; else the batch's (broken)
                            waiting.result.set_exception(cursor.error or failure or _no_result())
                            continue
                        try:  # reads the row already received: an error here is this row's
                            waiting.result.set_result(await cursor.fetchone())
                        except Exception as exc:
                            waiting.result.set_exception(exc)
                finally:
                    if watchdog is not None and watchdog.cancel_sent:
                        # Closed inside the block: the pool discards it and opens another.
                        await conn.close()
        except BaseException as exc:  # no connection, or worse: every request hears it
            _fail_all(batch, exc if isinstance(exc, Exception) else _no_result())
            if not isinstance(exc, Exception):
                raise
            return []
        return batch[len(sent) :]


class _Watchdog:
    """From `deadline` seconds on, cancels whatever statement of the batch runs on `conn`.

    A cancel request travels on a connection of its own, and PostgreSQL applies it to
    whatever the backend runs when it arrives: sent for this batch, it could land on the
    next batch's statement on the same connection, another request's. So `stop` waits
    until the watchdog has ended (it sends nothing after that), and a connection that was
    ever sent a cancel is closed instead of going back to the pool (psycopg's cancel
    before libpq 17 runs in a thread that no task cancellation stops, so even a stopped
    watchdog's last request may still be on its way). psycopg_pool documents that a
    connection found broken (closed) when its `connection()` block ends is discarded and
    replaced by a new one (its docs, "Connections life cycle", and the docstring of
    `AsyncConnectionPool.connection`). A batch past its deadline is rare, so the new
    connection costs little.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any], deadline: float) -> None:
        self.cancel_sent = False
        self._task = asyncio.get_running_loop().create_task(self._cancel_from(conn, deadline))

    async def _cancel_from(self, conn: psycopg.AsyncConnection[Any], deadline: float) -> None:
        await asyncio.sleep(deadline)
        while True:
            self.cancel_sent = True  # before sending: a stop mid-request still closes
            # Nothing running, or the server gone: the batch itself will say so.
            with contextlib.suppress(psycopg.Error):
                await conn.cancel_safe(timeout=1.0)
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Cancel the watchdog and wait until it has ended (its own end, not the
        caller's: a cancellation of the caller still propagates)."""
        self._task.cancel()
        await asyncio.wait([self._task])


@contextlib.contextmanager
def _exchanges_deferred(pipeline: psycopg.AsyncPipeline) -> Iterator[None]:
    """Queue statements without psycopg's exchange with the server after each one.

    In pipeline mode psycopg's `execute` polls the socket, flushes and reads whatever
    results have arrived after every statement. For a batch queued in one go that is
    wasted work: side by side (`python -m bench.levers`) GET ran 1.08x and verify 1.16x
    faster without it (docs/benchmarks.md, change 12). Leaving the block restores the
    exchange, and the pipeline's exit sends the batch and reads every result, as before.
    This shadows a private method of psycopg's pipeline; tests/test_batching.py fails if
    psycopg renames it."""
    pipeline._communicate_gen = _no_exchange  # type: ignore[method-assign]
    try:
        yield
    finally:
        del pipeline._communicate_gen


def _no_exchange() -> Iterator[None]:
    return
    yield  # a generator that yields nothing: psycopg's `yield from` finds nothing to do


def _write_queued(pipeline: psycopg.AsyncPipeline) -> None:
    """Hand the queued statements and their Syncs to libpq now. Each Sync flushes what
    is buffered so far without waiting (the connection is non-blocking), so the batch
    is on its way while psycopg's exit waits for the results."""
    queue = pipeline.command_queue
    while queue:
        queue.popleft()()


def _end_transaction(pipeline: psycopg.AsyncPipeline) -> None:
    """Queue a Sync after the statement just queued, without waiting for results: the
    statement becomes its own transaction. psycopg has no public call for this (its
    `sync()` also waits for the results), so this uses the one its pipeline uses
    itself; tests/test_batching.py fails if that ever changes."""
    pipeline._enqueue_sync()


class _StatementCursor(psycopg.AsyncCursor[Any]):
    """A cursor that keeps its own statement's error. A pipeline raises only the first
    error among the results it reads, and each request must hear its own: a timeout
    stays a 503 even when another statement of its batch broke a CHECK."""

    __slots__ = ("error",)

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        super().__init__(connection)
        self.error: psycopg.Error | None = None

    def _check_results(self, results: list[psycopg.pq.abc.PGresult]) -> None:
        try:
            super()._check_results(results)
        except psycopg.Error as exc:
            self.error = exc
            raise


def _succeeded(cursor: psycopg.AsyncCursor[Any]) -> bool:
    result = cursor.pgresult
    return result is not None and result.status == psycopg.pq.ExecStatus.TUPLES_OK


def _text_bytes(params: Mapping[str, Any]) -> int:
    """About what a statement's parameters take in libpq's buffer: its text ones (the
    blob is the only large one)."""
    return sum(len(value) for value in params.values() if isinstance(value, str | bytes))


def _no_result() -> psycopg.OperationalError:
    return psycopg.OperationalError("the statement's batch ended without its result")


def _fail_all(batch: list[_Waiting], failure: BaseException) -> None:
    for waiting in batch:
        if not waiting.result.done():
            waiting.result.set_exception(failure)
