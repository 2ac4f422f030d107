"""The benchmark's own moving parts work, so `make bench` measures what it says: the
pgbench ceiling runs the service's statements from queries/, and the wrk script's
requests all succeed against the real service. No timing is asserted here."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from bench import stack
from bench.ceiling import STATEMENTS, find_pgbench, run_pgbench, script
from bench.floor import FLOORS, floor_command
from bench.load import run_wrk
from service.db import queries
from tests.conftest import test_queries
from tests.processes import service_process

USERS = 20


def seeded(database_url: str) -> dict[str, object]:
    stack.seed(database_url, 1, USERS, 64)
    return stack.Payload(64).fields() | {"blob_size": 64}


def test_each_ceiling_script_is_the_service_s_statement_with_pgbench_variables():
    for case, names in STATEMENTS.items():
        text = script(case, USERS)
        assert text.startswith(f"\\set n random(1, {USERS})\n"), case
        for name in names:
            statement = getattr(queries, name).sql
            words = re.findall(r"[A-Za-z_]+", re.sub(r"%\(\w+\)s", "", statement))
            for word in words:  # every word of the service's statement is in the script
                assert word in text, (case, name, word)
        assert "%(" not in text, case  # every psycopg placeholder became a pgbench one


@pytest.mark.skipif(find_pgbench() is None, reason="pgbench is not installed")
@pytest.mark.parametrize("case", ["get", "put", "verify", "mixed"])
def test_the_ceiling_runs_against_seeded_users_and_counts_like_the_service(database_url, db, case):
    fields = seeded(database_url)
    result = run_pgbench(
        database_url, case, users=USERS, fields=fields, clients=2, threads=1, seconds=1
    )
    assert result.requests > 0
    assert result.errors == 0
    assert test_queries.count_records(db) == USERS  # a PUT replaces, never adds
    # pgbench's backends have exited when it is read: their CPU must be counted through
    # the postmaster (75-240 us per transaction here; about 5 without it).
    assert result.cpu_us is not None and result.cpu_us["postgres"] > 20
    assert result.cpu_us["pgbench"] > 0


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
@pytest.mark.parametrize("mode", ["get", "put", "verify", "mixed"])
def test_every_request_of_the_wrk_script_succeeds(database_url, tmp_path, mode):
    seeded(database_url)
    body = tmp_path / "body.json"
    stack.Payload(64).write(body)
    assert json.loads(body.read_text())["checksum"]
    with service_process(database_url, RATE_LIMIT_PER_HOUR="1000000") as base_url:
        result = run_wrk(base_url, mode, users=USERS, body=body, connections=4, seconds=1)
    assert result.requests > 0
    assert result.errors == 0  # non-2xx answers count as errors
    assert result.cpu_us is not None and result.cpu_us["service"] > 0


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
@pytest.mark.parametrize("factory", list(FLOORS.values()))
def test_each_floor_app_answers_every_request_of_the_wrk_script(
    database_url, db, tmp_path, factory
):
    """The floors of `make bench-floor` answer 2xx, and the batcher's really runs the
    statements (a PUT replaces seeded records) and counts every request against the
    rate limit, as the service does (its counts reach PostgreSQL)."""
    seeded(database_url)
    body = tmp_path / "body.json"
    sent = stack.Payload(64).write(body)
    port = stack.free_port()
    env = {**stack.SERVICE_ENV, "DATABASE_URL": database_url}
    answered = 0
    with stack.serving(floor_command(factory, port), port, env, tmp_path / "log") as server:
        for mode in ("get", "put", "verify"):
            result = run_wrk(server.base_url, mode, users=USERS, body=body, seconds=1)
            assert result.requests > 0, mode
            assert result.errors == 0, mode
            answered += result.requests
    runs_statements = factory.endswith("batcher_app")
    counted = sum(row[1] for row in test_queries.rate_limit_rows(db))
    assert counted >= answered if runs_statements else counted == 0
    assert test_queries.count_records(db) == USERS
    blobs = {record[1] for record in test_queries.all_records(db)}
    assert (sent["encryptedBlob"] in blobs) == runs_statements


def test_the_in_process_timing_answers_every_request_of_both_apps():
    """bench/inprocess.py runs both apps to a 200 on every request (it exits otherwise)
    and reports each case; what it measures is not asserted."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "bench.inprocess", "--requests", "200", "--repeats", "1"],
        cwd=stack.ROOT, capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["get", "put", "verify"], out
    assert all("service:" in line and "difference:" in line for line in lines), out


def test_rounds_give_every_server_every_place_in_the_order():
    """bench.floor and bench.levers run their servers in an order that moves one place a
    round, so over as many rounds as servers each has run in every place once."""
    servers = ["bare", "starlette", "batcher", "service"]
    orders = [stack.rotated(servers, round_no) for round_no in range(1, len(servers) + 1)]
    assert orders[0] == servers
    for place in range(len(servers)):
        assert sorted(order[place] for order in orders) == sorted(servers)
    assert stack.rotated([], 3) == []
