"""A database outage under load, measured: what the client saw while PostgreSQL was
away, and how long after it came back the service served again (scenarios 1 and 2)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

import httpx2

from tests.faults.harness import Service
from tests.faults.load import Ledger, Outcome, http_client, put_record, run_load, summarize, timed


async def probe_until(client: httpx2.AsyncClient, deadline: float) -> list[tuple[str, Outcome]]:
    """/health and /health/live, each again and again, until `deadline` (a probe still
    waiting then is abandoned, so the outage lasts as long as the caller said)."""
    probes: list[tuple[str, Outcome]] = []

    async def probe(path: str) -> None:
        while True:
            probes.append((path, await timed(client, "GET", path)))
            await asyncio.sleep(0.1)

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            await asyncio.gather(probe("/health"), probe("/health/live"))
    return probes


async def wait_until_serving(
    client: httpx2.AsyncClient, ledger: Ledger, *, within: float
) -> tuple[float | None, float | None]:
    """Times at which /health first said 200 and a PUT was first acknowledged."""
    deadline = time.monotonic() + within
    healthy = stored = None
    while time.monotonic() < deadline and (healthy is None or stored is None):
        if healthy is None:
            outcome = await timed(client, "GET", "/health")
            if outcome.status == 200:
                healthy = outcome.ended
        if stored is None:
            outcome = await put_record(client, ledger)
            if outcome.status == 200:
                stored = outcome.ended
        await asyncio.sleep(0.05)
    return healthy, stored


async def outages_under_load(
    service: Service,
    ledger: Ledger,
    *,
    take_down: Callable[[], None],
    bring_up: Callable[[], float],
    outages: Sequence[float],
    workers: int = 12,
) -> tuple[list[dict[str, object]], list[Outcome]]:
    """Run a PUT/GET load; for each entry of `outages`, take the database down, keep it
    down that many seconds (probing /health and /health/live), bring it up, and time the
    recovery. Returns per-outage numbers and the requests answered during outages."""
    stopping = asyncio.Event()
    cycles: list[dict[str, object]] = []
    inside_outages: list[Outcome] = []
    async with (
        http_client(service.base_url) as client,
        http_client(service.base_url, connections=4) as probe,
    ):
        load = asyncio.create_task(
            run_load(client, ledger, stop=stopping.is_set, workers=workers, max_requests=100_000)
        )
        try:
            await asyncio.sleep(3)
            for outage in outages:
                began = time.monotonic()
                await asyncio.to_thread(take_down)
                down = time.monotonic()
                probes = await probe_until(probe, down + outage)
                restarting = time.monotonic()
                up = await asyncio.to_thread(bring_up)
                healthy, stored = await wait_until_serving(probe, ledger, within=90)
                # Answered while the database was certainly down (the pool may reconnect
                # before pg_ctl notices the server is up, so not up to `up`), leaving out
                # a 200 for a request sent before the kill had finished: its statement may
                # have completed just before the kill, and its answer arrived just after.
                during = [
                    o
                    for o in ledger.outcomes
                    if down <= o.ended <= restarting and not (o.status == 200 and o.started < down)
                ]
                inside_outages += during
                first_load_200 = min(
                    (o.ended for o in ledger.outcomes if o.started >= up and o.status == 200),
                    default=None,
                )
                cycles.append(
                    {
                        "outage_s": outage,
                        "down_for_s": round(up - down, 3),
                        "take_down_s": round(down - began, 3),
                        "bring_up_s": round(up - restarting, 3),
                        "requests_during_outage": summarize(during),
                        "health_during_outage": _answers(probes, "/health"),
                        "live_during_outage": _answers(probes, "/health/live"),
                        "recovery_health_200_s": _since(up, healthy),
                        "recovery_put_200_s": _since(up, stored),
                        "recovery_load_200_s": _since(up, first_load_200),
                    }
                )
                await asyncio.sleep(3)
        finally:
            stopping.set()
            await load
    return cycles, inside_outages


def recovery_s(cycle: dict[str, object]) -> float:
    """The slower of 'health says 200' and 'a PUT is stored' after the restart."""
    health, put = cycle["recovery_health_200_s"], cycle["recovery_put_200_s"]
    assert isinstance(health, float) and isinstance(put, float), cycle
    return max(health, put)


def _answers(probes: list[tuple[str, Outcome]], path: str) -> list[int | str]:
    return sorted({o.status or o.error or "?" for p, o in probes if p == path}, key=str)


def _since(start: float, moment: float | None) -> float | None:
    return None if moment is None else round(moment - start, 3)
