"""GDPR cleanup: records not accessed for N days are erased, in batches, by one replica."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from service.cleanup import (
    LOCK_KEY,
    cleanup_once,
    erase_inactive,
    run_cleanup_command,
    scheduled_cleanup,
)
from service.config import Settings
from service.db import connection_kwargs, create_pool, queries
from service.localpg import free_port
from tests.conftest import new_user_id, test_queries
from tests.paths import REPO_ROOT as PROJECT_ROOT


def store(db: psycopg.Connection, *, days_ago: int = 0) -> str:
    """A valid record last accessed `days_ago` days ago; returns its user id."""
    user_id = new_user_id()
    test_queries.insert_raw_record(
        db,
        user_id=user_id,
        encrypted_blob="dGVzdA==",
        iv="MTIzNDU2Nzg5MGFi",
        timestamp=1,
        checksum="a" * 64,
        blob_size=4,
    )
    if days_ago:
        test_queries.age_record(db, user_id=user_id, days=days_ago)
    return user_id


def exists(db: psycopg.Connection, user_id: str) -> bool:
    return test_queries.raw_record(db, user_id=user_id) is not None


async def connect(settings: Settings) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(
        settings.database_url, **connection_kwargs(settings)
    )


def run_cleanup(settings: Settings, **kwargs: object) -> int | None:
    async def run() -> int | None:
        async with await connect(settings) as conn:
            return await cleanup_once(conn, settings, **kwargs)

    return asyncio.run(run())


def run_cli(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "INACTIVE_DAYS"}
    environ.update({"DATABASE_URL": database_url, "STARTUP_TIMEOUT": "5", **env})
    return subprocess.run(
        [sys.executable, "-m", "service", "cleanup", *args],
        cwd=PROJECT_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_records_older_than_the_horizon_are_erased_and_recent_ones_kept(settings, db):
    old = [store(db, days_ago=400), store(db, days_ago=31)]
    recent = [store(db, days_ago=29), store(db)]
    assert run_cleanup(settings, inactive_days=30) == 2
    assert [exists(db, u) for u in old] == [False, False]
    assert [exists(db, u) for u in recent] == [True, True]


def test_the_horizon_defaults_to_the_inactive_days_setting(settings, db):
    old, recent = store(db, days_ago=731), store(db, days_ago=729)
    assert run_cleanup(settings) == 1
    assert not exists(db, old) and exists(db, recent)
    assert run_cleanup(settings.with_changes(inactive_days=100)) == 1
    assert not exists(db, recent)


def test_a_record_accessed_exactly_at_the_horizon_minus_a_moment_is_kept(settings, db):
    user_id = store(db)
    test_queries.set_last_accessed_ago(db, user_id=user_id, seconds=30 * 86400 - 60)
    assert run_cleanup(settings, inactive_days=30) == 0
    assert exists(db, user_id)


def test_more_old_records_than_a_batch_are_all_erased_over_several_batches(settings, db):
    old = [store(db, days_ago=100 + i) for i in range(10)]
    recent = store(db, days_ago=1)
    batches: list[int] = []

    async def run() -> int:
        async with await connect(settings) as conn:
            return await erase_inactive(
                conn, inactive_days=30, batch_size=3, on_batch=batches.append
            )

    assert asyncio.run(run()) == 10
    assert batches == [3, 3, 3, 1]
    assert not any(exists(db, u) for u in old)
    assert exists(db, recent)


def test_a_multiple_of_the_batch_size_ends_with_an_empty_batch(settings, db):
    for i in range(6):
        store(db, days_ago=50 + i)
    batches: list[int] = []

    async def run() -> int:
        async with await connect(settings) as conn:
            return await erase_inactive(
                conn, inactive_days=30, batch_size=3, on_batch=batches.append
            )

    assert asyncio.run(run()) == 6
    assert batches == [3, 3, 0]


def test_batches_are_erased_oldest_first(settings, db):
    ages = [40, 90, 60, 200, 35]
    ids = {age: store(db, days_ago=age) for age in ages}

    async def run() -> int:
        async with await connect(settings) as conn:
            return await queries.erase_inactive_records(conn, inactive_days=30, batch_size=2)

    assert asyncio.run(run()) == (2, 2)  # erased, chosen
    assert {age for age, u in ids.items() if exists(db, u)} == {40, 60, 35}


def test_erasing_refuses_a_connection_outside_autocommit(settings):
    async def run() -> None:
        conn = await psycopg.AsyncConnection.connect(settings.database_url)
        async with conn:
            await erase_inactive(conn, inactive_days=30)

    with pytest.raises(ValueError, match="autocommit"):
        asyncio.run(run())


def test_the_batch_statement_finds_old_records_through_idx_last_accessed(settings, db):
    """On a table of mostly recent records (as in production) the planner walks the index."""
    explained = test_queries.explain_erase_inactive_records.sql
    assert explained.startswith("EXPLAIN\n")
    assert explained.removeprefix("EXPLAIN\n") == queries.erase_inactive_records.sql
    test_queries.insert_recent_records(db, count=5000)
    for _ in range(5):
        store(db, days_ago=800)
    test_queries.analyze_records(db)
    plan = "\n".join(
        row[0]
        for row in test_queries.explain_erase_inactive_records(
            db, inactive_days=730, batch_size=1000
        )
    )
    assert "idx_last_accessed" in plan, plan


def test_a_replica_skips_the_cleanup_while_another_holds_the_lock(settings, db):
    old = store(db, days_ago=800)

    async def run() -> tuple[int | None, int | None, bool]:
        async with await connect(settings) as holder, await connect(settings) as other:
            assert await queries.try_cleanup_lock(holder, lock_key=LOCK_KEY)
            skipped = await cleanup_once(other, settings)
            await queries.release_cleanup_lock(holder, lock_key=LOCK_KEY)
            done = await cleanup_once(other, settings)
            # The run gave the lock back: another session can take it at once.
            free = await queries.try_cleanup_lock(holder, lock_key=LOCK_KEY)
            await queries.release_cleanup_lock(holder, lock_key=LOCK_KEY)
            return skipped, done, free

    skipped, done, free = asyncio.run(run())
    assert skipped is None
    assert done == 1
    assert free
    assert not exists(db, old)


def test_concurrent_cleanups_on_separate_connections_erase_each_record_once(settings, db):
    for i in range(20):
        store(db, days_ago=800 + i)

    async def run() -> list[int | None]:
        conns = [await connect(settings) for _ in range(4)]
        try:
            return await asyncio.gather(*(cleanup_once(c, settings, batch_size=2) for c in conns))
        finally:
            for conn in conns:
                await conn.close()

    results = asyncio.run(run())
    assert sum(r for r in results if r is not None) == 20
    assert test_queries.count_records(db) == 0


def test_cleanup_on_a_pool_releases_the_lock_with_the_connection_it_took(settings, db):
    store(db, days_ago=800)

    async def run() -> tuple[int | None, bool]:
        pool = create_pool(settings.with_changes(pool_min=1, pool_max=1))
        await pool.open(wait=True)
        try:
            erased = await cleanup_once(pool, settings)
            async with pool.connection() as conn:
                free = await queries.try_cleanup_lock(conn, lock_key=LOCK_KEY)
                await queries.release_cleanup_lock(conn, lock_key=LOCK_KEY)
            return erased, free
        finally:
            await pool.close()

    assert asyncio.run(run()) == (1, True)


def test_the_scheduled_cleanup_logs_what_it_erased_or_that_it_skipped(settings, db, caplog):
    store(db, days_ago=800)
    store(db, days_ago=900)

    async def run() -> None:
        pool = AsyncConnectionPool(
            settings.database_url, min_size=1, max_size=2, kwargs=connection_kwargs(settings),
            open=False,
        )  # fmt: skip
        await pool.open(wait=True)
        try:
            await scheduled_cleanup(pool, settings)
            async with await connect(settings) as holder:
                await queries.try_cleanup_lock(holder, lock_key=LOCK_KEY)
                await scheduled_cleanup(pool, settings)
        finally:
            await pool.close()

    with caplog.at_level(logging.DEBUG, logger="service.cleanup"):
        asyncio.run(run())
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "service.cleanup"]
    assert messages[0][0] == logging.INFO
    assert messages[0][1].startswith("Cleanup erased 2 inactive records")
    assert messages[1][0] == logging.DEBUG
    assert "another replica holds the cleanup lock" in messages[1][1]


def test_dry_run_erases_nothing_and_reports_the_count(settings, db, capsys):
    store(db, days_ago=40)
    store(db, days_ago=41)
    store(db, days_ago=2)
    status = asyncio.run(run_cleanup_command(settings, inactive_days=30, dry_run=True))
    assert status == 0
    assert capsys.readouterr().out == "Would erase 2 records not accessed for 30 days.\n"
    assert test_queries.count_records(db) == 3


def test_the_command_reports_what_it_erased(settings, db, capsys):
    store(db, days_ago=40)
    store(db, days_ago=2)
    status = asyncio.run(run_cleanup_command(settings, inactive_days=30, dry_run=False))
    assert status == 0
    assert capsys.readouterr().out == "Erased 1 record not accessed for 30 days.\n"
    assert test_queries.count_records(db) == 1


def test_the_command_refuses_a_horizon_below_one_day(settings, db, capsys):
    store(db)
    status = asyncio.run(run_cleanup_command(settings, inactive_days=0, dry_run=False))
    assert status == 2
    assert "at least 1" in capsys.readouterr().err
    assert test_queries.count_records(db) == 1


def test_the_command_exits_1_when_another_cleanup_holds_the_lock(settings, db, capsys):
    store(db, days_ago=40)

    async def run() -> int:
        async with await connect(settings) as holder:
            await queries.try_cleanup_lock(holder, lock_key=LOCK_KEY)
            return await run_cleanup_command(settings, inactive_days=30, dry_run=False)

    assert asyncio.run(run()) == 1
    assert "another cleanup is running" in capsys.readouterr().err
    assert test_queries.count_records(db) == 1


def test_cli_cleanup_erases_and_prints_the_count(database_url, db):
    store(db, days_ago=31)
    store(db, days_ago=45)
    kept = store(db, days_ago=29)
    result = run_cli(database_url, "--inactive-days", "30")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Erased 2 records not accessed for 30 days.\n"
    assert test_queries.count_records(db) == 1
    assert exists(db, kept)


def test_cli_cleanup_takes_its_default_horizon_from_inactive_days(database_url, db):
    store(db, days_ago=31)
    store(db, days_ago=10)
    dry = run_cli(database_url, "--dry-run", INACTIVE_DAYS="30")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout == "Would erase 1 record not accessed for 30 days.\n"
    assert test_queries.count_records(db) == 2
    real = run_cli(database_url, INACTIVE_DAYS="30")
    assert real.stdout == "Erased 1 record not accessed for 30 days.\n"
    assert test_queries.count_records(db) == 1


def test_cli_cleanup_without_inactive_days_uses_two_years(database_url, db):
    store(db, days_ago=731)
    store(db, days_ago=700)
    result = run_cli(database_url)
    assert result.stdout == "Erased 1 record not accessed for 730 days.\n"


def test_cli_cleanup_exits_1_with_a_clear_message_when_postgresql_is_unreachable():
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    result = run_cli(url, STARTUP_TIMEOUT="1")
    assert result.returncode == 1
    assert "cleanup failed: cannot connect to PostgreSQL" in result.stderr
    assert result.stdout == ""


def test_a_cleanup_cancelled_mid_run_leaves_no_lock_behind(settings, db):
    """Shutdown cancels a running job; the next round, on any replica, must still run."""
    test_queries.insert_recent_records(db, count=3000)
    test_queries.age_all_records(db, days=800)

    async def run() -> tuple[bool, int | None]:
        pool = create_pool(settings.with_changes(pool_min=1, pool_max=1))
        await pool.open(wait=True)
        try:
            job = asyncio.create_task(cleanup_once(pool, settings, batch_size=1))
            await asyncio.sleep(0.3)
            cancelled = job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
            async with await connect(settings) as other:
                return cancelled, await cleanup_once(other, settings)
        finally:
            await pool.close()

    cancelled, erased = asyncio.run(run())
    assert cancelled, "the cleanup finished before it could be cancelled"
    assert erased is not None and erased > 0
    assert test_queries.count_records(db) == 0
