"""The sync statements of concurrent requests, sent to PostgreSQL in pipelined batches.

Why: on a small machine a round trip costs more CPU than the statement itself (a send,
a wake-up of the backend, a wait, a receive). Sending whatever statements are waiting
as one libpq pipeline spends one round trip on many requests; `python -m
bench.batching` measured about twice the statements per second at half the CPU per
statement (docs/benchmarks.md). The exchange itself (service/pgwire.py) goes through
psycopg's documented libpq wrapper, prepared statements and text-format values.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from service import pgwire


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
        prepare: bool = True,
    ) -> None:
        self.pool = pool
        self.pipelined = pipelined
        self.prepare = prepare
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
                    await self._run(batch)
        finally:
            self._running -= 1

    async def _run(self, batch: list[_Waiting]) -> None:
        """Run `batch` in one pipeline and answer each request with its own row or its
        own error. A parameter that cannot be sent fails its own statement before
        anything is sent; on a broken connection every statement still waiting hears
        the connection's error (503), and the connection is closed, not pooled."""
        sendable: list[tuple[_Waiting, pgwire.Statement, list[bytes | None]]] = []
        for waiting in batch:
            stmt = pgwire.statement(waiting.sql)
            try:
                sendable.append((waiting, stmt, stmt.encode(waiting.params)))
            except psycopg.Error as exc:
                waiting.result.set_exception(exc)
            except Exception as exc:  # a value the encoder cannot take: that request's bug
                waiting.result.set_exception(psycopg.ProgrammingError(str(exc)))
        if not sendable:
            return
        try:
            async with self.pool.connection() as conn:
                watchdog = _Watchdog(conn, self.batch_deadline) if self.batch_deadline else None
                healthy = False
                try:
                    try:
                        answers = await pgwire.run_batch(
                            conn,
                            [(stmt, values) for _, stmt, values in sendable],
                            prepare=self.prepare,
                            pipelined=self.pipelined,
                        )
                    finally:
                        if watchdog is not None:
                            await watchdog.stop()
                    healthy = watchdog is None or not watchdog.cancel_sent
                finally:
                    if not healthy:
                        # Closed inside the block: the pool discards it and opens another.
                        await conn.close()
            for (waiting, _, _), answer in zip(sendable, answers, strict=True):
                if waiting.result.done():
                    continue
                if isinstance(answer, Exception):
                    waiting.result.set_exception(answer)
                else:
                    waiting.result.set_result(answer)
        except BaseException as exc:  # no connection, or worse: every request hears it
            _fail_all(batch, exc if isinstance(exc, Exception) else _no_result())
            if not isinstance(exc, Exception):
                raise


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
