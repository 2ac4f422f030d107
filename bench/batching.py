"""Statements of concurrent requests sent to PostgreSQL in pipelined batches (the
service's StatementBatcher) against one statement per pooled connection (the service
before it).

    python -m bench.batching [--statements 20000] [--concurrency 32]

No HTTP: one process runs the verify statement (queries/sync.sql, rate-limit count
included) for random seeded users, `--concurrency` at a time, either each on a connection
of a pool of 4 (today's service) or queued to 2 connections that send whatever is queued
as one psycopg pipeline, a Sync after each statement (service/batching.py). It reports
statements/s and the CPU per statement of this process and of PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

from psycopg_pool import AsyncConnectionPool

from bench import stack
from bench.load import cpu_seconds
from service.batching import StatementBatcher
from service.config import Settings
from service.db import create_pool, queries


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
    sql = queries.record_version.sql
    pool: AsyncConnectionPool = create_pool(settings)
    await pool.open(wait=True)
    batch_pool: AsyncConnectionPool = create_pool(settings.with_changes(pool_min=2, pool_max=2))
    await batch_pool.open(wait=True)
    batcher = StatementBatcher(batch_pool, max_batches=2, queue_timeout=30, max_waiting=0)

    def params(i: int) -> dict:
        return {"user_id": stack.user_id(1 + i % 1000)}

    async def pooled(i: int) -> object:
        async with pool.connection() as conn:
            cursor = await conn.execute(sql, params(i))
            return await cursor.fetchone()

    async def batched(i: int) -> object:
        return await batcher.fetchone(sql, params(i))

    try:
        for _ in range(rounds):
            await measure("pool of 4, a statement each", pooled, statements, concurrency)
            await measure("2 connections, StatementBatcher", batched, statements, concurrency)
    finally:
        await batch_pool.close()
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
