"""The service as a real process (docs/operations.md): start-up, waiting for PostgreSQL, shutdown.

Each test starts `python -m service serve` on a free port with its own DB_APPLICATION_NAME,
so its connections can be told apart in pg_stat_activity; every process a test starts is
killed at teardown, whatever happened.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from service.localpg import free_port, throwaway_cluster
from tests.conftest import new_user_id, test_queries
from tests.processes import READY_WITHIN, Launcher, Service
from tests.test_smoke import PAYLOAD

pytestmark = pytest.mark.slow

SHUTDOWN_TIMEOUT = 5
PASSWORD = "s3cret"


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    """Start the service through its CLI; kills whatever is still running at teardown."""
    launcher = Launcher(
        tmp_path,
        name="lifespan",
        defaults={
            "SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
            "DB_POOL_MIN": "2",
            "DB_POOL_MAX": "4",
            "RATE_LIMIT_PER_HOUR": "0",
        },
    )
    yield launcher
    launcher.teardown()


def connections_from(database_url: str, application_name: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return test_queries.connections_from(conn, application_name=application_name)


def wait_for_no_connections(database_url: str, application_name: str, timeout: float = 15) -> int:
    """Backends end a moment after their client hangs up: poll rather than look once."""
    deadline = time.monotonic() + timeout
    while (count := connections_from(database_url, application_name)) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    return count


def store_and_fetch_a_record(service: Service) -> None:
    user_id = new_user_id()
    with httpx2.Client(base_url=service.base_url, timeout=10) as http:
        assert http.put(f"/api/sync/{user_id}", json=PAYLOAD).status_code == 200
        assert http.get(f"/api/sync/{user_id}").json() == PAYLOAD
        assert http.get("/health").status_code == 200


def with_password(database_url: str) -> str:
    """The same database with a password in the URL (trust auth ignores it)."""
    return make_conninfo(database_url, password=PASSWORD)


# --- PostgreSQL unreachable --------------------------------------------------------------


def test_unreachable_postgres_stops_start_up_with_a_clear_message_and_no_password(launch):
    startup_timeout = 2
    url = f"postgresql://u:{PASSWORD}@127.0.0.1:{free_port()}/db"
    began = time.monotonic()

    service = launch(url, STARTUP_TIMEOUT=str(startup_timeout))
    returncode = service.wait_exit(timeout=startup_timeout + 30)

    logs = service.logs()
    assert returncode != 0, logs
    assert "cannot connect to postgresql" in logs.lower(), logs
    assert PASSWORD not in logs
    # It retried for its whole STARTUP_TIMEOUT rather than giving up on the first refusal.
    assert time.monotonic() - began >= startup_timeout * 0.75
    assert "not reachable yet" in logs, logs


def test_start_up_waits_for_a_postgres_that_comes_up_late(launch):
    with throwaway_cluster("logikids-late-pg-", start=False) as cluster:
        service = launch(cluster.url("postgres"), STARTUP_TIMEOUT="30")
        try:
            time.sleep(2)
            assert service.process.poll() is None, service.logs()
            cluster.start(fast_and_unsafe=True)

            service.wait_ready(path="/health/live")

            logs = service.logs()
            assert "not reachable yet" in logs, logs
            assert "connection successful" in logs.lower(), logs
            assert httpx2.get(f"{service.base_url}/health", timeout=10).status_code == 200
            store_and_fetch_a_record(service)
        finally:
            if service.process.poll() is None:
                service.process.kill()
                service.process.wait(timeout=30)


# --- a healthy start-up -----------------------------------------------------------------


def test_start_up_logs_the_server_version_and_database_but_never_the_password(
    launch, database_url, db
):
    service = launch(with_password(database_url))
    service.wait_ready(path="/health/live")
    store_and_fetch_a_record(service)

    logs = service.logs()
    version = test_queries.server_version(db)
    database = conninfo_to_dict(database_url)["dbname"]
    successful = [line for line in logs.splitlines() if "Connection successful" in line]
    assert successful, logs
    assert version in successful[0]
    assert database in successful[0]
    assert PASSWORD not in logs


def test_an_edited_applied_migration_stops_start_up_naming_the_file(launch, database_url, db):
    test_queries.pretend_migration_was_edited(db, version="001_init")

    service = launch(database_url)
    returncode = service.wait_exit(timeout=READY_WITHIN)

    logs = service.logs()
    assert returncode != 0, logs
    assert "001_init.sql" in logs
    assert "edited" in logs
    assert wait_for_no_connections(database_url, service.application_name) == 0


# --- shutdown ---------------------------------------------------------------------------

SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]


@pytest.mark.parametrize("sig", SIGNALS)
def test_a_signal_closes_the_pool_and_ends_every_connection(launch, database_url, sig):
    service = launch(database_url)
    service.wait_ready(path="/health/live")
    store_and_fetch_a_record(service)
    assert connections_from(database_url, service.application_name) > 0

    service.process.send_signal(sig)
    service.wait_exit(timeout=SHUTDOWN_TIMEOUT + 30)

    logs = service.logs()
    assert "pool closed" in logs.lower(), logs
    assert wait_for_no_connections(database_url, service.application_name) == 0


@pytest.mark.parametrize(
    "sig",
    [
        pytest.param(signal.SIGTERM, id="SIGTERM"),
        pytest.param(signal.SIGINT, id="SIGINT"),
    ],
)
def test_a_signal_ends_the_process_with_status_0(launch, database_url, sig):
    service = launch(database_url)
    service.wait_ready(path="/health/live")
    store_and_fetch_a_record(service)

    service.process.send_signal(sig)
    returncode = service.wait_exit(timeout=SHUTDOWN_TIMEOUT + 30)

    assert returncode == 0, service.logs()
    assert "Traceback" not in service.logs()


def test_a_request_in_flight_at_sigterm_still_completes(launch, database_url, db):
    """The body arrives in two halves with SIGTERM between them; the PUT must still land."""
    service = launch(database_url)
    service.wait_ready(path="/health/live")
    user_id = new_user_id()
    body = httpx2.Request("PUT", "http://x", json=PAYLOAD).read()
    first_half_sent = threading.Event()
    signal_sent = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        first_half_sent.set()
        signal_sent.wait(timeout=30)
        time.sleep(0.5)  # let the server notice the signal before the request completes
        yield body[len(body) // 2 :]

    def send_sigterm_midway() -> None:
        first_half_sent.wait(timeout=30)
        time.sleep(0.3)
        service.process.send_signal(signal.SIGTERM)
        signal_sent.set()

    killer = threading.Thread(target=send_sigterm_midway)
    killer.start()
    try:
        response = httpx2.put(
            f"{service.base_url}/api/sync/{user_id}",
            content=slow_body(),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
    finally:
        killer.join(timeout=60)

    assert response.status_code == 200, service.logs()
    assert response.json() == {"success": True}
    service.wait_exit(timeout=SHUTDOWN_TIMEOUT + 30)
    assert test_queries.raw_record(db, user_id=user_id) is not None
    logs = service.logs()
    assert logs.index("Shutting down") < logs.index("PUT /api/sync"), logs
