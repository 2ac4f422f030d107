"""Scenario 4: pool exhaustion and overload. PostgreSQL is slowed to a halt (a session
holds an ACCESS EXCLUSIVE lock on the records table) while many more requests arrive
than the pool has connections, some of them with near-limit bodies.

Proves: every request is answered within a bound (DB_STATEMENT_TIMEOUT_MS for those that
got a connection, DB_POOL_TIMEOUT for those that queued, at once beyond
DB_POOL_MAX_WAITING), always 503 with Retry-After, never a 500, reset or hang; the
service's memory stays bounded; once the lock is released it serves 200 again within
seconds, and no acknowledged write is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Iterator

import httpx2
import psycopg
import pytest

from tests.conftest import test_queries
from tests.faults.harness import Report, Service, query
from tests.faults.load import (
    Ledger,
    Outcome,
    contract_violations,
    get_record,
    http_client,
    new_payload,
    put_record,
    run_load,
    summarize,
    timed,
)

pytestmark = pytest.mark.faults

POOL_MAX = 4
POOL_TIMEOUT = 2.0
STATEMENT_TIMEOUT_MS = 3000
MAX_WAITING = 50
SERVICE_ENV = {
    "DB_POOL_MIN": "2",
    "DB_POOL_MAX": str(POOL_MAX),
    "DB_POOL_TIMEOUT": str(POOL_TIMEOUT),
    "DB_POOL_MAX_WAITING": str(MAX_WAITING),
    "DB_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS),
}
ANSWERED_WITHIN = max(POOL_TIMEOUT, STATEMENT_TIMEOUT_MS / 1000) + 2.0
SMALL_BURST = 300
"""Concurrent small requests (2/3 PUT, 1/3 GET): 75 times the pool's connections."""
BIG_BURST = 60
BIG_BLOB = 900_000
"""Bytes of each big burst PUT's blob: its body (~1.2 MB of JSON) is just under the limit."""
MEMORY_GROWTH_BOUND_MB = 400
"""Peak RSS over the idle baseline: a big-body request holds its body, the parsed JSON
and the decoded blob (~3.5 MB) while it waits, and at most BIG_BURST wait at once."""
RECOVERY_BOUND = 3.0


@contextlib.contextmanager
def records_locked(database_url: str) -> Iterator[None]:
    """Hold ACCESS EXCLUSIVE on user_sync_data in an open transaction until exit."""
    with psycopg.connect(database_url) as conn:
        test_queries.faults_lock_records(conn)
        try:
            yield
        finally:
            conn.rollback()


async def sample_memory(service: Service, samples: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(service.rss_mb())
        await asyncio.sleep(0.05)


async def overload(service: Service, url: str, ledger: Ledger) -> dict[str, object]:
    async with http_client(service.base_url, connections=SMALL_BURST + BIG_BURST) as client:
        await run_load(client, ledger, stop=lambda: False, workers=8, max_requests=200)
        baseline = service.rss_mb()
        warm = list(ledger.acked)
        samples: list[float] = []
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(sample_memory(service, samples, stop_sampling))
        with records_locked(url):
            locked = time.monotonic()
            small = await asyncio.gather(
                *(
                    get_record(client, ledger, random.choice(warm))
                    if i % 3 == 2
                    else put_record(client, ledger)
                    for i in range(SMALL_BURST)
                )
            )
            big = await asyncio.gather(*(big_put(client, ledger) for _ in range(BIG_BURST)))
            held = time.monotonic() - locked
        released = time.monotonic()
        recovered = await first_stored(client, ledger, within=30)
        stop_sampling.set()
        await sampler
        after_burst = service.rss_mb()
        mark = len(ledger.outcomes)
        await run_load(client, ledger, stop=lambda: False, workers=16, max_requests=300)
        after = ledger.outcomes[mark:]
        settled = service.rss_mb()
    return {
        "small": small,
        "big": big,
        "after": after,
        "lock_held_s": round(held, 2),
        "recovery_s": None if recovered is None else round(recovered - released, 3),
        "rss_baseline_mb": round(baseline, 1),
        "rss_peak_mb": round(max(samples), 1),
        "rss_after_burst_mb": round(after_burst, 1),
        "rss_after_300_more_mb": round(settled, 1),
    }


async def big_put(client: httpx2.AsyncClient, ledger: Ledger) -> Outcome:
    outcome = await timed(
        client, "PUT", f"/api/sync/{uuid.uuid4()}", json=new_payload(blob_bytes=BIG_BLOB)
    )
    ledger.outcomes.append(outcome)
    return outcome


async def first_stored(
    client: httpx2.AsyncClient, ledger: Ledger, *, within: float
) -> float | None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        outcome = await put_record(client, ledger)
        if outcome.status == 200:
            return outcome.ended
        await asyncio.sleep(0.05)
    return None


def _latency_buckets(outcomes: list[Outcome]) -> dict[str, int]:
    """How each 503 came about, told by its latency: at once (queue full), after
    DB_POOL_TIMEOUT (no connection freed up) or after the statement timeout."""
    buckets = {"under_0.5s": 0, "0.5s_to_pool_timeout+1": 0, "beyond": 0}
    for o in outcomes:
        if o.latency < 0.5:
            buckets["under_0.5s"] += 1
        elif o.latency <= POOL_TIMEOUT + 1:
            buckets["0.5s_to_pool_timeout+1"] += 1
        else:
            buckets["beyond"] += 1
    return buckets


def test_overload_against_a_locked_table_gets_bounded_503s_and_recovers(
    running_cluster, launch, report: Report
):
    url = running_cluster.create_database()
    service = launch(url, **SERVICE_ENV)
    service.wait_ready()
    ledger = Ledger()

    run = asyncio.run(overload(service, url, ledger))

    ledger_check = ledger.check(query(url, "faults_stored_payloads"))
    burst = run["small"] + run["big"]
    report.record(
        "4_pool_exhaustion_locked_table",
        {
            "service_env": SERVICE_ENV,
            "small_burst": summarize(run["small"]),
            "small_burst_latencies": _latency_buckets(run["small"]),
            "big_burst": summarize(run["big"]),
            "big_burst_latencies": _latency_buckets(run["big"]),
            "after_release": summarize(run["after"]),
            **{k: v for k, v in run.items() if k not in ("small", "big", "after")},
            **ledger_check,
        },
    )
    assert not contract_violations(burst), summarize(burst)
    assert all(o.status == 503 for o in burst), summarize(burst)
    assert max(o.latency for o in burst) <= ANSWERED_WITHIN, summarize(burst)
    assert run["recovery_s"] is not None and run["recovery_s"] <= RECOVERY_BOUND, run
    assert all(o.status == 200 for o in run["after"]), summarize(run["after"])
    assert run["rss_peak_mb"] - run["rss_baseline_mb"] <= MEMORY_GROWTH_BOUND_MB, run
    assert ledger_check["lost"] == 0 and ledger_check["stale_reads"] == 0, ledger_check
    assert service.process.poll() is None
