"""Scenario 3: SIGTERM to the service while it is under load, with one worker and two.

Proves: requests the service had accepted when the signal came (including PUTs whose
body was still arriving) complete with their normal answer and are stored; a PUT whose
client saw the connection fail was never stored (so no accepted request was dropped
unanswered); new connections are refused; the process exits with status 0 (or killed
by SIGTERM) within SHUTDOWN_TIMEOUT plus a margin; PostgreSQL keeps no session of it.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import pytest

from tests.faults import rawhttp
from tests.faults.harness import Report, Service, query
from tests.faults.load import Ledger, http_client, new_payload, run_load, summarize

pytestmark = pytest.mark.faults

SHUTDOWN_TIMEOUT = 5
EXIT_MARGIN = 5.0
SLOW_PUTS = 8
"""PUTs whose first half is sent before the signal; the rest follows 0.5 s after it, and
for the last of them LAST_HALF_AFTER seconds after, which keeps the shutdown going long
enough to see what new connections meet meanwhile."""
LAST_HALF_AFTER = 3.0
LISTENER_CLOSES_WITHIN = 1.0
"""After SIGTERM, uvicorn notices within its 0.1 s tick and closes the listener; every
new connection from this long after the signal on must be refused."""


async def slow_put(service: Service, sent_half: asyncio.Event, go: asyncio.Event) -> tuple:
    """A PUT whose body arrives in two halves, the signal between them."""
    user_id = str(uuid.uuid4())
    payload = new_payload()
    body = rawhttp.json_body(payload)
    reader, writer = await rawhttp.connect(service.port)
    try:
        writer.write(rawhttp.put_request(user_id, body) + body[: len(body) // 2])
        await writer.drain()
        sent_half.set()
        await go.wait()
        writer.write(body[len(body) // 2 :])
        await writer.drain()
        status = await rawhttp.read_status(reader, within=15)
    finally:
        await rawhttp.close(writer)
    return user_id, payload, status


async def sigterm_under_load(service: Service, ledger: Ledger) -> dict[str, object]:
    stopping = asyncio.Event()
    go, go_late = asyncio.Event(), asyncio.Event()
    halves = [asyncio.Event() for _ in range(SLOW_PUTS)]
    probes: list[tuple[float, str]] = []
    async with http_client(service.base_url) as client:
        load = asyncio.create_task(
            run_load(client, ledger, stop=stopping.is_set, workers=12, max_requests=100_000)
        )
        slow = [
            asyncio.create_task(slow_put(service, h, go if i else go_late))
            for i, h in enumerate(halves)
        ]
        await asyncio.sleep(2)
        await asyncio.wait_for(asyncio.gather(*(h.wait() for h in halves)), 10)
        signalled = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        go.set()
        deadline = signalled + SHUTDOWN_TIMEOUT + EXIT_MARGIN
        while service.process.poll() is None and time.monotonic() < deadline:
            if time.monotonic() - signalled >= LAST_HALF_AFTER:
                go_late.set()
            result = await rawhttp.try_new_connection(service.port)
            probes.append((time.monotonic() - signalled, result))
            await asyncio.sleep(0.1)
        go_late.set()
        exited = time.monotonic()
        stopping.set()
        await load
        slow_results = await asyncio.gather(*slow)
    return {
        "signalled": signalled,
        "exited_after_s": round(exited - signalled, 2),
        "probes": probes,
        "slow": slow_results,
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_finishes_accepted_requests_and_leaves_nothing_behind(
    running_cluster, launch, report: Report, workers: int
):
    url = running_cluster.create_database()
    service = launch(
        url,
        "--workers",
        str(workers),
        SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
        DB_POOL_MIN="2",
        DB_POOL_MAX="6",
    )
    service.wait_ready()
    ledger = Ledger()

    run = asyncio.run(sigterm_under_load(service, ledger))
    returncode = service.wait_exit(timeout=30)
    sessions_left = wait_for_no_sessions(url, service.application_name)

    signalled = run["signalled"]
    before_signal = [o for o in ledger.outcomes if o.started < signalled]
    after_signal = [o for o in ledger.outcomes if o.started >= signalled]
    stored = {row[0] for row in query(url, "faults_stored_payloads")}
    failed_puts = [user for user in ledger.sent if user not in ledger.acked]
    dropped_after_accepting = [user for user in failed_puts if user in stored]
    slow_stored = [user for user, _, status in run["slow"] if user in stored]
    late_probes = [result for at, result in run["probes"] if at >= LISTENER_CLOSES_WITHIN]
    exit_bound = LAST_HALF_AFTER + EXIT_MARGIN
    ledger_check = ledger.check(query(url, "faults_stored_payloads"))
    report.record(
        f"3_sigterm_under_load_{workers}_worker{'s' if workers > 1 else ''}",
        {
            "requests_before_signal": summarize(before_signal),
            "requests_after_signal": summarize(after_signal),
            **ledger_check,
            "slow_puts_in_flight": SLOW_PUTS,
            "slow_put_statuses": sorted(str(status) for _, _, status in run["slow"]),
            "failed_puts_stored_anyway": len(dropped_after_accepting),
            "new_connections_after_signal": _tally(result for _, result in run["probes"]),
            "new_connections_after_1s": _tally(late_probes),
            "exit_status": returncode,
            "exited_after_s": run["exited_after_s"],
            "sessions_left": sessions_left,
        },
    )
    assert all(o.status == 200 for o in before_signal), summarize(before_signal)
    assert all(status == 200 for _, _, status in run["slow"]), run["slow"]
    assert len(slow_stored) == SLOW_PUTS
    assert ledger_check["lost"] == 0, ledger_check
    assert not dropped_after_accepting, "accepted PUTs were stored but never answered"
    assert all(o.status == 200 or o.error for o in after_signal), summarize(after_signal)
    assert late_probes and set(late_probes) == {"refused"}, _tally(late_probes)
    assert returncode in (0, -signal.SIGTERM), service.logs()
    assert run["exited_after_s"] <= exit_bound
    assert sessions_left == 0
    assert "Traceback" not in service.logs(), service.logs()


def wait_for_no_sessions(url: str, application_name: str, timeout: float = 10) -> int:
    """Backends end a moment after their client hangs up: poll rather than look once."""
    deadline = time.monotonic() + timeout
    while True:
        sessions = query(url, "faults_sessions_of", application_name=application_name)
        if not sessions or time.monotonic() > deadline:
            return len(sessions)
        time.sleep(0.1)


def _tally(results) -> dict[str, int]:
    tally: dict[str, int] = {}
    for result in results:
        tally[result] = tally.get(result, 0) + 1
    return tally
