"""Scenario 2: PostgreSQL restarted cleanly (fast shutdown) under load, and PostgreSQL
unreachable while the service starts.

Proves: a fast shutdown and restart loses no acknowledged write and the service recovers
by itself, as after a crash; at start-up the service waits up to STARTUP_TIMEOUT for a
database that is refusing connections or accepting them without ever answering, starts
when it appears in time, and otherwise exits non-zero with a message naming the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from tests.faults.harness import Report, query
from tests.faults.load import Ledger, contract_violations, summarize
from tests.faults.outages import outages_under_load, recovery_s

pytestmark = pytest.mark.faults

RECOVERY_BOUND = 5.0
UNAVAILABLE_WITHIN = 3.0 + 2.0
SERVICE_ENV = {"DB_POOL_MIN": "4", "DB_POOL_MAX": "8", "DB_POOL_TIMEOUT": "3"}
READY_AFTER_DATABASE_BOUND = 5.0
"""Seconds from PostgreSQL accepting connections to the waiting service answering /health
200: its start-up retries back off to at most 2 s, then it migrates and opens its pool."""
EXIT_MARGIN = 8.0
"""Slack on top of STARTUP_TIMEOUT for giving up: one connect attempt may take up to 5 s
(the service's connect_timeout) and the interpreter needs a moment to start and stop."""


def test_fast_restart_under_load_loses_no_acknowledged_write_and_recovers(
    running_cluster, launch, report: Report
):
    url = running_cluster.create_database()
    service = launch(url, **SERVICE_ENV)
    service.wait_ready()
    pid = service.process.pid
    ledger = Ledger()

    cycles, inside_outages = asyncio.run(
        outages_under_load(
            service,
            ledger,
            take_down=running_cluster.stop_fast,
            bring_up=running_cluster.start,
            outages=(4.0,),
        )
    )

    ledger_check = ledger.check(query(url, "faults_stored_payloads"))
    violations = contract_violations(ledger.outcomes)
    report.record(
        "2a_postgres_fast_restart",
        {
            "all_requests": summarize(ledger.outcomes),
            **ledger_check,
            "contract_violations": len(violations),
            "cycles": cycles,
        },
    )
    assert ledger_check["lost"] == 0 and ledger_check["stale_reads"] == 0, ledger_check
    assert not violations, violations[:10]
    assert service.process.poll() is None and service.process.pid == pid
    assert inside_outages and all(o.status == 503 and o.retry_after for o in inside_outages)
    assert max(o.latency for o in inside_outages) <= UNAVAILABLE_WITHIN
    (cycle,) = cycles
    assert cycle["health_during_outage"] == [503] and cycle["live_during_outage"] == [200]
    assert recovery_s(cycle) <= RECOVERY_BOUND, cycle


def test_service_started_before_postgres_serves_once_it_appears_in_time(
    running_cluster, launch, report: Report
):
    url = running_cluster.create_database()
    running_cluster.stop_fast()
    started = time.monotonic()
    service = launch(url, STARTUP_TIMEOUT="30")
    time.sleep(4)
    assert service.process.poll() is None, service.logs()

    up = running_cluster.start()
    ready = service.wait_ready()

    logs = service.logs()
    report.record(
        "2b_postgres_appears_during_start_up",
        {
            "startup_timeout_s": 30,
            "database_down_for_s": round(up - started, 2),
            "ready_after_database_up_s": round(ready - up, 2),
            "retries_logged": logs.count("not reachable yet"),
        },
    )
    assert "not reachable yet" in logs, logs
    assert "Connection successful" in logs, logs
    assert ready - up <= READY_AFTER_DATABASE_BOUND


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word: a database host that
    is up at the network level but whose PostgreSQL hangs (or a black-holing proxy)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    ("how", "workers"),
    [
        ("refusing", 1),
        ("silent", 1),
        pytest.param("refusing", 2, id="refusing-2-workers"),
    ],
)
def test_service_exits_non_zero_with_a_clear_message_when_postgres_never_appears(
    running_cluster, launch, report: Report, how: str, workers: int
):
    startup_timeout = 3.0
    with contextlib.ExitStack() as stack:
        if how == "refusing":
            url = running_cluster.create_database()
            running_cluster.stop_fast()
        else:
            port = stack.enter_context(silent_listener())
            url = f"postgresql://logikids@127.0.0.1:{port}/logikids"
        started = time.monotonic()
        service = launch(url, "--workers", str(workers), STARTUP_TIMEOUT=str(startup_timeout))
        returncode = service.wait_exit(timeout=startup_timeout + 60)
        took = time.monotonic() - started

    logs = service.logs()
    message = next((line for line in logs.splitlines() if "cannot connect" in line), "")
    report.record(
        f"2c_postgres_never_appears_{how}_{workers}_worker{'s' if workers > 1 else ''}",
        {
            "startup_timeout_s": startup_timeout,
            "exit_status": returncode,
            "exited_after_s": round(took, 2),
            "message": message[message.find("cannot connect") :],
        },
    )
    assert returncode != 0, logs
    assert "cannot connect to PostgreSQL" in logs, logs
    assert startup_timeout * 0.75 <= took <= startup_timeout + EXIT_MARGIN


def test_giving_up_on_postgres_logs_one_clear_line_and_no_traceback(running_cluster, launch):
    url = running_cluster.create_database()
    running_cluster.stop_fast()
    service = launch(url, STARTUP_TIMEOUT="2")
    returncode = service.wait_exit(timeout=60)

    logs = service.logs()
    assert returncode != 0
    errors = [line for line in logs.splitlines() if "ERROR" in line]
    assert any("cannot connect to PostgreSQL" in line for line in errors), logs
    assert "Traceback" not in logs, logs
