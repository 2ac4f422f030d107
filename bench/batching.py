"""A probe for the next lever: statements of concurrent requests sent to PostgreSQL in
pipelined batches, against one statement per pooled connection as the service does now.

    python -m bench.batching [--statements 20000] [--concurrency 32]

No HTTP: one process runs the verify statement (queries/sync.sql, rate-limit count
included) for random seeded users, `--concurrency` at a time, either each on a connection
of a pool of 4 (today's service) or queued to 2 connections that send whatever is queued
as one psycopg pipeline. It reports statements/s and the CPU per statement of this process
and of PostgreSQL.

Caveat, and why the service does not do this yet: the probe's batch runs as one implicit
transaction (psycopg sends one Sync per pipeline block), so one failing statement would
abort the others and row locks are held to the end of the batch. The service would need a
Sync after every statement, which psycopg's public API only offers with a round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import psycopg
from psycopg_pool import AsyncConnectionPool

from bench import stack
from bench.load import cpu_seconds
from service.config import Settings
from service.db import connection_kwargs, create_pool, queries

UNLIMITED = {"user_limit": 1_000_000_000, "client_ip": None, "ip_limit": None}


class Batcher:
    """Sends every statement queued meanwhile as one pipeline on its connection."""

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.conn = conn
        self.pending: list[tuple[str, dict, asyncio.Future]] = []
        self.wake = asyncio.Event()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            batch, self.pending = self.pending, []
            cursors = []
            async with self.conn.pipeline():
                for sql, params, future in batch:
                    cursor = self.conn.cursor()
                    await cursor.execute(sql, params)
                    cursors.append((cursor, future))
            for cursor, future in cursors:
                future.set_result(await cursor.fetchone())

    async def execute(self, sql: str, params: dict) -> object:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((sql, params, future))
        self.wake.set()
        return await future


async def measure(
    name: str, run_one: Callable[[int], Awaitable[object]], statements: int, concurrency: int
) -> None:
    limit = asyncio.Semaphore(concurrency)

    async def guarded(i: int) -> None:
        async with limit:
            await run_one(i)

    before, cpu0, started = cpu_seconds(), time.process_time(), time.perf_counter()
    await asyncio.gather(*(guarded(i) for i in range(statements)))
    wall, cpu, after = time.perf_counter() - started, time.process_time() - cpu0, cpu_seconds()
    postgres = (after["postgres"] - before["postgres"]) * 1e6 / statements
    print(
        f"{name:<36} {statements / wall:7.0f} statements/s  this process "
        f"{cpu * 1e6 / statements:4.0f} us/statement  PostgreSQL {postgres:4.0f} us/statement",
        flush=True,
    )


async def probe(url: str, statements: int, concurrency: int, rounds: int) -> None:
    settings = Settings.from_env({"DATABASE_URL": url, "DB_POOL_MIN": "4", "DB_POOL_MAX": "4"})
    sql = queries.verify_record.sql
    pool: AsyncConnectionPool = create_pool(settings)
    await pool.open(wait=True)
    conns = [
        await psycopg.AsyncConnection.connect(url, **connection_kwargs(settings)) for _ in range(2)
    ]
    batchers = [Batcher(conn) for conn in conns]
    runners = [asyncio.create_task(b.run()) for b in batchers]

    def params(i: int) -> dict:
        return {"user_id": stack.user_id(1 + i % 1000), "window_seconds": 3600, **UNLIMITED}

    async def pooled(i: int) -> object:
        async with pool.connection() as conn:
            cursor = await conn.execute(sql, params(i))
            return await cursor.fetchone()

    async def batched(i: int) -> object:
        return await batchers[i % len(batchers)].execute(sql, params(i))

    try:
        for _ in range(rounds):
            await measure("pool of 4, a statement each", pooled, statements, concurrency)
            await measure("2 connections, pipelined batches", batched, statements, concurrency)
    finally:
        for runner in runners:
            runner.cancel()
        for conn in conns:
            await conn.close()
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with stack.database() as url:
        stack.migrate(url)
        stack.seed(url, 1, 1000, 4096)
        asyncio.run(probe(url, args.statements, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
