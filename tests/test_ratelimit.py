"""Rate limits counted in PostgreSQL: exact, shared across processes, and race-free."""

from __future__ import annotations

import asyncio

import httpx2
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from starlette.testclient import TestClient

from service.app import create_app
from service.db import queries
from tests.conftest import new_user_id, test_queries
from tests.processes import service_process
from tests.test_smoke import PAYLOAD

LIMIT_MESSAGE = {"error": "Too many sync requests. Please try again later."}


@pytest.fixture
def limited(settings):
    """A client whose users may make 5 requests per window."""
    with TestClient(
        create_app(settings.with_changes(rate_limit_per_hour=5)), raise_server_exceptions=False
    ) as client:
        yield client


def _requests(client, user_id):
    """One of each endpoint, round and round: the limit counts them all together."""
    calls = [
        lambda: client.put(f"/api/sync/{user_id}", json=PAYLOAD),
        lambda: client.get(f"/api/sync/{user_id}"),
        lambda: client.post(f"/api/sync/{user_id}/verify"),
        lambda: client.delete(f"/api/sync/{user_id}"),
    ]
    i = 0
    while True:
        yield calls[i % len(calls)]()
        i += 1


def test_exactly_the_limit_is_admitted_then_429_with_headers(limited):
    user_id = new_user_id()
    responses = _requests(limited, user_id)
    for expected_remaining in (4, 3, 2, 1, 0):
        response = next(responses)
        assert response.status_code == 200
        assert response.headers["RateLimit-Limit"] == "5"
        assert response.headers["RateLimit-Remaining"] == str(expected_remaining)
        assert 0 < int(response.headers["RateLimit-Reset"]) <= 3600
    refused = next(responses)
    assert refused.status_code == 429
    assert refused.json() == LIMIT_MESSAGE
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    assert (
        refused.headers["Retry-After"] == refused.headers["RateLimit-Reset"]
        or int(refused.headers["RateLimit-Reset"]) == 0
    )


def test_a_404_still_carries_the_ratelimit_headers(limited):
    response = limited.get(f"/api/sync/{new_user_id()}")
    assert response.status_code == 404
    assert response.headers["RateLimit-Remaining"] == "4"


def test_other_users_are_not_affected_by_one_users_limit(limited):
    greedy = new_user_id()
    for _ in range(6):
        limited.post(f"/api/sync/{greedy}/verify")
    assert limited.post(f"/api/sync/{greedy}/verify").status_code == 429
    assert limited.post(f"/api/sync/{new_user_id()}/verify").status_code == 200


def test_a_refused_put_stores_nothing(limited, db):
    user_id = new_user_id()
    for _ in range(5):
        limited.post(f"/api/sync/{user_id}/verify")
    assert limited.put(f"/api/sync/{user_id}", json=PAYLOAD).status_code == 429
    assert test_queries.raw_record(db, user_id=user_id) is None


def test_a_refused_delete_erases_nothing_and_a_refused_get_returns_nothing(limited, db):
    user_id = new_user_id()
    assert limited.put(f"/api/sync/{user_id}", json=PAYLOAD).status_code == 200
    test_queries.set_last_accessed_ago(db, user_id=user_id, seconds=7200)
    before = test_queries.raw_record(db, user_id=user_id)
    for _ in range(4):
        limited.post(f"/api/sync/{user_id}/verify")
    refused_get = limited.get(f"/api/sync/{user_id}")
    assert refused_get.status_code == 429
    assert "encryptedBlob" not in refused_get.text
    assert limited.delete(f"/api/sync/{user_id}").status_code == 429
    assert limited.put(f"/api/sync/{user_id}", json={**PAYLOAD, "timestamp": 2}).status_code == 429
    assert test_queries.raw_record(db, user_id=user_id) == before  # not even last_accessed


@pytest.mark.parametrize(
    "method, path, headers",
    [
        ("PUT", "/api/sync/{u}", {}),
        ("PUT", "/api/sync/{u}", {"If-None-Match": '"00000000-0000-4000-8000-000000000000"'}),
        ("PUT", "/api/sync/{u}", {"If-Match": "*"}),
        ("GET", "/api/sync/{u}", {}),
        ("GET", "/api/sync/{u}", {"If-None-Match": "*"}),
        ("POST", "/api/sync/{u}/verify", {}),
        ("DELETE", "/api/sync/{u}", {"If-Match": "*"}),
        ("DELETE", "/api/sync/{u}", {}),
    ],
)
def test_each_request_is_one_statement_rate_limit_count_included(
    limited, monkeypatch, method, path, headers
):
    """The count and the request's work share one statement: one round trip."""
    user_id = new_user_id()
    limited.put(f"/api/sync/{user_id}", json=PAYLOAD)
    executed: list[str] = []
    original = psycopg.AsyncCursor.execute

    async def counting_execute(self, query, *args, **kwargs):
        executed.append(str(query))
        return await original(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", counting_execute)
    body = PAYLOAD if method == "PUT" else None
    response = limited.request(method, path.format(u=user_id), json=body, headers=headers)
    assert response.status_code in (200, 304), response.text
    assert response.headers["RateLimit-Remaining"] == "3"  # counted: 5 - PUT - this one
    assert len(executed) == 1, executed
    assert "INSERT INTO rate_limit_hits" in executed[0]


COUNTED_STATEMENTS = [
    "store_record",
    "replace_record_if_match",
    "store_record_unless_match",
    "fetch_record",
    "verify_record",
    "erase_record",
    "erase_record_if_match",
]


@pytest.mark.parametrize("name", COUNTED_STATEMENTS)
def test_every_counted_statement_counts_with_the_very_ctes_of_count_request(name):
    """The counting CTEs are copied into each sync statement (one statement per request);
    the copies must not drift from count_request, the one psql users and these tests run."""
    counting = queries.count_request.sql.split("\nSELECT admitted, user_hits, ip_hits")[0]
    assert counting.startswith("WITH counted AS (")
    statement = getattr(queries, name).sql
    assert statement.startswith(counting), name
    assert statement[len(counting) :].startswith((",\n", "\nSELECT ")), name


def test_the_window_resets(limited, db):
    user_id = new_user_id()
    for _ in range(5):
        assert limited.post(f"/api/sync/{user_id}/verify").status_code == 200
    assert limited.post(f"/api/sync/{user_id}/verify").status_code == 429
    test_queries.shift_rate_limit_windows(db, seconds=3600)
    response = limited.post(f"/api/sync/{user_id}/verify")
    assert response.status_code == 200
    assert response.headers["RateLimit-Remaining"] == "4"


def test_invalid_user_ids_are_refused_before_they_cost_a_count(limited, db):
    for _ in range(10):
        assert limited.get("/api/sync/not-a-uuid").status_code == 400
    assert list(test_queries.rate_limit_rows(db)) == []


def test_zero_turns_the_limit_off(settings):
    with TestClient(create_app(settings.with_changes(rate_limit_per_hour=0))) as client:
        user_id = new_user_id()
        for _ in range(150):
            response = client.post(f"/api/sync/{user_id}/verify")
            assert response.status_code == 200
            assert "RateLimit-Limit" not in response.headers


def test_the_ip_limit_catches_clients_that_rotate_user_ids(settings):
    app = create_app(settings.with_changes(rate_limit_per_hour=100, rate_limit_per_ip_hour=3))
    with TestClient(app) as client:
        statuses = [client.post(f"/api/sync/{new_user_id()}/verify").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


def test_x_forwarded_for_counts_only_behind_a_trusted_proxy(settings):
    def statuses(trusted: str) -> list[int]:
        app = create_app(
            settings.with_changes(
                rate_limit_per_ip_hour=2, rate_limit_per_hour=0, forwarded_allow_ips=trusted
            )
        )
        with TestClient(app) as client:
            return [
                client.post(
                    f"/api/sync/{new_user_id()}/verify",
                    headers={"X-Forwarded-For": f"203.0.113.{i}"},
                ).status_code
                for i in range(4)
            ]

    # TestClient's peer is "testclient": trusted, each forwarded address has its own count.
    assert statuses("*") == [200, 200, 200, 200]
    # Untrusted: the header is ignored and every request counts against the peer.
    assert statuses("127.0.0.1") == [200, 200, 429, 429]


def test_postgresql_unreachable_gives_503_not_500(settings, pg_server, database_url):
    app = create_app(settings.with_changes(rate_limit_per_hour=5))
    with TestClient(app, raise_server_exceptions=False) as client:
        pg_server.dropdb(conninfo_to_dict(database_url)["dbname"])
        response = client.post(f"/api/sync/{new_user_id()}/verify")
    assert response.status_code == 503
    assert response.json() == {"error": "Service unavailable"}
    assert "Retry-After" in response.headers


# --- several service processes on one database -------------------------------------


@pytest.mark.slow
def test_two_service_processes_share_one_count(database_url):
    user_id = new_user_id()
    with (
        service_process(database_url, RATE_LIMIT_PER_HOUR="10") as a,
        service_process(database_url, RATE_LIMIT_PER_HOUR="10") as b,
    ):
        statuses = [
            httpx2.post(f"{base}/api/sync/{user_id}/verify").status_code for base in [a, b] * 8
        ]
    assert statuses.count(200) == 10
    assert statuses[10:] == [429] * 6


@pytest.mark.slow
def test_200_concurrent_requests_from_two_processes_admit_exactly_the_limit(database_url):
    user_id = new_user_id()

    async def burst(bases: list[str]) -> list[int]:
        limits = httpx2.Limits(max_connections=200)
        async with httpx2.AsyncClient(timeout=30, limits=limits) as client:
            calls = [
                client.post(f"{bases[i % len(bases)]}/api/sync/{user_id}/verify")
                for i in range(200)
            ]
            return [r.status_code for r in await asyncio.gather(*calls)]

    env = {"RATE_LIMIT_PER_HOUR": "100", "DB_POOL_MAX": "10"}
    with service_process(database_url, **env) as a, service_process(database_url, **env) as b:
        statuses = asyncio.run(burst([a, b]))
    assert statuses.count(200) == 100
    assert statuses.count(429) == 100


def test_ended_windows_are_purged_and_the_current_one_kept(limited, db, database_url):
    from service.db import queries

    old, current = new_user_id(), new_user_id()
    limited.post(f"/api/sync/{old}/verify")
    test_queries.shift_rate_limit_windows(db, seconds=3 * 3600)
    limited.post(f"/api/sync/{current}/verify")

    async def purge() -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await queries.purge_rate_limit_windows(conn, window_seconds=3600)

    asyncio.run(purge())
    assert [row[0] for row in test_queries.rate_limit_rows(db)] == [f"user:{current}"]
