"""Metrics on their own listener, and one log line per request without secrets."""

from __future__ import annotations

import json
import time

import httpx2
import pytest
from prometheus_client import REGISTRY
from starlette.testclient import TestClient

from service import app as app_module
from service.app import create_app
from service.localpg import free_port
from tests.conftest import new_user_id, test_queries
from tests.processes import service_process
from tests.test_smoke import PAYLOAD

pytestmark = pytest.mark.slow


def scrape(port: int) -> str:
    return httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


def test_metrics_are_off_by_default(database_url):
    port = free_port()
    with service_process(database_url) as base:
        assert httpx2.get(f"{base}/metrics").status_code == 404
        with pytest.raises(httpx2.ConnectError):
            httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_count_requests_by_route_and_status_and_never_name_a_user(database_url, workers):
    metrics_port = free_port()
    user_id = new_user_id()
    env = {"METRICS_PORT": str(metrics_port), "RATE_LIMIT_PER_HOUR": "3", "WORKERS": workers}
    with service_process(database_url, **env) as base:
        assert httpx2.put(f"{base}/api/sync/{user_id}", json=PAYLOAD).status_code == 200
        assert httpx2.get(f"{base}/api/sync/{new_user_id()}").status_code == 404
        statuses = []
        for _ in range(6):
            # Workers share counts within two exchanges (docs/protocol.md): a pause each.
            time.sleep(0.6)
            statuses.append(httpx2.post(f"{base}/api/sync/{user_id}/verify").status_code)
        text = scrape(metrics_port)
    refused = statuses.count(429)
    # Limit 3, the PUT and six verifies: one process refuses exactly the last four; two
    # share their counts within two exchanges (protocol.md), and on a loaded machine one
    # more request may reach a worker before the other's last count does.
    assert refused == 4 if workers == "1" else 3 <= refused <= 4, statuses
    route = "/api/sync/{user_id}"

    def requests(method: str, path: str, status: str) -> float:
        return sample(
            text, "logikids_sync_requests_total", method=method, route=path, status=status
        )

    assert requests("PUT", route, "200") == 1
    assert requests("GET", route, "404") == 1
    assert requests("POST", route + "/verify", "429") == refused
    assert sample(text, "logikids_sync_rate_limited_total", limit="user") == refused
    latency = "logikids_sync_request_duration_seconds_count"
    assert sample(text, latency, method="PUT", route=route) == 1
    assert "logikids_sync_pool_connections" in text
    assert user_id not in text and user_id.replace("-", "") not in text


@pytest.mark.parametrize("workers", ["1", "2"])
def test_json_logs_have_one_object_per_request_with_a_user_hash_only(
    database_url, tmp_path, workers
):
    # With 2 workers each worker process (spawned, not forked) must set up logging
    # itself: once it did not, and the workers' access lines were silently dropped.
    log_file = tmp_path / "service.log"
    user_id = new_user_id()
    with service_process(
        database_url, log_file=log_file, LOG_FORMAT="json", LOG_LEVEL="INFO", WORKERS=workers
    ) as base:
        httpx2.put(f"{base}/api/sync/{user_id}", json=PAYLOAD)
        httpx2.get(f"{base}/api/sync/{user_id}")
    lines = log_file.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    requests = [e for e in entries if e.get("logger") == "service.access"]
    put = next(e for e in requests if e["method"] == "PUT")
    assert put["route"] == "/api/sync/{user_id}"
    assert put["status"] == 200
    assert put["duration_ms"] >= 0
    assert len(put["user"]) == 12
    messages = " ".join(e["message"] for e in entries)
    assert "Connection successful" in messages
    assert "pool closed" in messages.lower()
    text = log_file.read_text()
    assert user_id not in text
    assert PAYLOAD["encryptedBlob"] not in text


def test_the_records_gauge_reads_postgres_estimate_not_a_count(settings, db, monkeypatch):
    """The gauge is pg_class.reltuples (no scan of the table every minute): right after
    ANALYZE it is the number of records, and rows added since do not show until the next
    VACUUM or ANALYZE. A table never analyzed (reltuples -1) is counted."""
    every = app_module.running_every

    def records_metric_at_once(interval, job, *, name, first_after=None):
        if name == "records-metric":
            first_after = 0.0
        return every(interval, job, name=name, first_after=first_after)

    monkeypatch.setattr(app_module, "running_every", records_metric_at_once)

    def gauge_after_start_up() -> float:
        app_module.metrics.RECORDS.set(-2)
        with TestClient(create_app(settings.with_changes(metrics_port=free_port()))):
            deadline = time.monotonic() + 10
            while REGISTRY.get_sample_value("logikids_sync_records") == -2:
                assert time.monotonic() < deadline, "the records gauge was never set"
                time.sleep(0.02)
        return REGISTRY.get_sample_value("logikids_sync_records")

    test_queries.insert_recent_records(db, count=3)
    assert gauge_after_start_up() == 3  # never analyzed: counted
    test_queries.insert_recent_records(db, count=497)
    test_queries.analyze_records(db)
    test_queries.insert_recent_records(db, count=10)
    assert gauge_after_start_up() == 500  # the estimate, as of the ANALYZE
