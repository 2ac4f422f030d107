"""Scenario 6: replicas. Two service processes started at the same moment on an empty
database, and the whole API through PgBouncer in transaction pooling mode.

Proves: concurrent start-ups apply each migration exactly once (the advisory lock) and
both replicas then serve, each reading what the other stored; behind PgBouncer in
transaction mode, with DB_PREPARE_THRESHOLD=off and DB_STATEMENT_TIMEOUT_MS=0, every
endpoint answers as it does directly and a concurrent load loses nothing, while the same
load with prepared statements on gets errors (which is why the setting exists).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid

import httpx2
import pytest

from tests.faults.harness import Report, query
from tests.faults.load import Ledger, http_client, new_payload, run_load, summarize
from tests.faults.pgbouncer import running_pgbouncer
from tests.paths import REPO_ROOT as PROJECT_ROOT

pytestmark = pytest.mark.faults

ROUNDS = 3
"""Pairs of replicas started together, each pair on a new empty database."""
EXPECTED_VERSIONS = sorted(p.stem for p in (PROJECT_ROOT / "migrations").glob("[0-9]*.sql"))
BEHIND_PGBOUNCER = {
    "DB_PREPARE_THRESHOLD": "off",
    "DB_PIPELINE": "off",
    "DB_STATEMENT_TIMEOUT_MS": "0",
    "MIGRATE_ON_START": "false",
    "DB_POOL_MAX": "10",
}
"""What the service needs behind PgBouncer in transaction mode (docs/reliability.md says why)."""


def applied_by(logs: str) -> list[str]:
    found = re.search(r"Applied migrations: (.+)", logs)
    return found.group(1).strip().split(", ") if found else []


def test_two_replicas_started_together_migrate_once_and_both_serve(
    running_cluster, launch, report: Report
):
    rounds = []
    for _ in range(ROUNDS):
        url = running_cluster.create_database()
        first, second = launch(url), launch(url)
        first.wait_ready()
        second.wait_ready()

        counts = dict(query(url, "faults_migration_counts"))
        applied = applied_by(first.logs()) + applied_by(second.logs())
        user = str(uuid.uuid4())
        payload = new_payload()
        stored = httpx2.put(f"{first.base_url}/api/sync/{user}", json=payload, timeout=10)
        fetched = httpx2.get(f"{second.base_url}/api/sync/{user}", timeout=10)
        rounds.append(
            {
                "migrations_recorded": counts,
                "applied_by_first": len(applied_by(first.logs())),
                "applied_by_second": len(applied_by(second.logs())),
                "put_on_first": stored.status_code,
                "get_on_second": fetched.status_code,
            }
        )
        assert counts == {version: 1 for version in EXPECTED_VERSIONS}, counts
        assert sorted(applied) == EXPECTED_VERSIONS, (first.logs(), second.logs())
        assert stored.status_code == 200 and fetched.status_code == 200
        assert fetched.json() == payload
        for service in (first, second):
            service.process.terminate()
            assert service.wait_exit(timeout=30) == 0
    report.record("6a_replicas_started_together", {"rounds": rounds})


def exercise_api(base_url: str) -> dict[str, int]:
    """Every endpoint and conditional variant once; the statuses, by step."""
    user = str(uuid.uuid4())
    path = f"/api/sync/{user}"
    payload = new_payload()
    steps: dict[str, int] = {}
    with httpx2.Client(base_url=base_url, timeout=10) as http:
        steps["health"] = http.get("/health").status_code
        steps["verify_missing"] = http.post(f"{path}/verify").status_code
        steps["get_missing"] = http.get(path).status_code
        put = http.put(path, json=payload)
        steps["put"] = put.status_code
        etag = put.headers["etag"]
        got = http.get(path)
        steps["get"] = got.status_code if got.json() == payload else -1
        steps["get_if_none_match"] = http.get(path, headers={"If-None-Match": etag}).status_code
        steps["put_if_match"] = http.put(
            path, json=new_payload(), headers={"If-Match": etag}
        ).status_code
        steps["put_if_match_stale"] = http.put(
            path, json=new_payload(), headers={"If-Match": etag}
        ).status_code
        steps["put_if_none_match_star"] = http.put(
            path, json=new_payload(), headers={"If-None-Match": "*"}
        ).status_code
        steps["verify"] = http.post(f"{path}/verify").status_code
        steps["delete_if_match_stale"] = http.delete(path, headers={"If-Match": etag}).status_code
        steps["delete"] = http.delete(path).status_code
        steps["get_deleted"] = http.get(path).status_code
    return steps


EXPECTED_STEPS = {
    "health": 200,
    "verify_missing": 200,
    "get_missing": 404,
    "put": 200,
    "get": 200,
    "get_if_none_match": 304,
    "put_if_match": 200,
    "put_if_match_stale": 412,
    "put_if_none_match_star": 412,
    "verify": 200,
    "delete_if_match_stale": 412,
    "delete": 200,
    "get_deleted": 404,
}


async def concurrent_load(base_url: str, ledger: Ledger, requests: int) -> None:
    async with http_client(base_url) as client:
        await run_load(client, ledger, stop=lambda: False, workers=16, max_requests=requests)


def migrate_directly(database_url: str) -> None:
    """Migrations hold a session advisory lock, which transaction pooling cannot keep:
    they run against PostgreSQL itself, as docs/reliability.md tells operators to."""
    subprocess.run(
        [sys.executable, "-m", "service", "migrate"],
        env={**os.environ, "DATABASE_URL": database_url},
        cwd=PROJECT_ROOT,
        check=True,
        capture_output=True,
    )


def test_the_whole_api_works_through_pgbouncer_in_transaction_mode(
    running_cluster, launch, report: Report
):
    direct = running_cluster.create_database()
    database = direct.rsplit("/", 1)[1]
    migrate_directly(direct)
    with running_pgbouncer(server_port=running_cluster.port, database=database) as bouncer:
        service = launch(bouncer.url(database), **BEHIND_PGBOUNCER)
        service.wait_ready()

        steps = exercise_api(service.base_url)
        ledger = Ledger()
        asyncio.run(concurrent_load(service.base_url, ledger, requests=1500))

        ledger_check = ledger.check(query(direct, "faults_stored_payloads"))
        report.record(
            "6b_pgbouncer_transaction_mode",
            {
                "service_env": BEHIND_PGBOUNCER,
                "pgbouncer_server_pool_size": 3,
                "api_steps": steps,
                "load": summarize(ledger.outcomes),
                **ledger_check,
            },
        )
        assert steps == EXPECTED_STEPS
        assert all(o.status == 200 for o in ledger.outcomes), summarize(ledger.outcomes)
        assert ledger_check["lost"] == 0 and ledger_check["stale_reads"] == 0, ledger_check
        assert "Traceback" not in service.logs(), service.logs()


def test_prepared_statements_through_pgbouncer_fail_which_is_why_the_setting_exists(
    running_cluster, launch, report: Report
):
    """The control experiment: the same set-up with psycopg preparing every statement
    (DB_PREPARE_THRESHOLD=0). Server connections are shared between clients, so a
    statement prepared on one is missing (or already there) on another: either start-up
    or the requests fail."""
    direct = running_cluster.create_database()
    database = direct.rsplit("/", 1)[1]
    migrate_directly(direct)
    ledger = Ledger()
    with running_pgbouncer(server_port=running_cluster.port, database=database) as bouncer:
        service = launch(bouncer.url(database), **{**BEHIND_PGBOUNCER, "DB_PREPARE_THRESHOLD": "0"})
        try:
            service.wait_ready()
        except AssertionError:
            started = False
        else:
            started = True
            asyncio.run(concurrent_load(service.base_url, ledger, requests=300))

    logs = service.logs()
    errors = sorted(set(re.findall(r"(?:Duplicate|Invalid)\w*Statement\w*", logs)))
    outcome = summarize(ledger.outcomes)
    report.record(
        "6c_pgbouncer_with_prepared_statements_on",
        {"started": started, "load": outcome, "errors_logged": errors},
    )
    assert not started or any(o.status != 200 for o in ledger.outcomes), outcome
    assert errors, logs
