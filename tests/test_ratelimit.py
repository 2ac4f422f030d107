"""Rate limits: exact in one process, shared across processes through PostgreSQL within
a stated bound, and never on the request's own statement."""

from __future__ import annotations

import asyncio
import time

import httpx2
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from starlette.testclient import TestClient

from service import pgwire
from service.app import create_app
from service.db import exchange_counts, queries
from service.ratelimit import RateLimiter, RateLimitExceeded
from tests.conftest import new_user_id, test_queries
from tests.processes import service_process
from tests.test_smoke import PAYLOAD

LIMIT_MESSAGE = {"error": "Too many sync requests. Please try again later."}


@pytest.fixture
def limited(settings):
    """A client whose users may make 5 requests per window."""
    with TestClient(
        create_app(settings.with_changes(user_limit_per_window=5)), raise_server_exceptions=False
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
def test_each_request_is_one_statement_on_its_record_alone(
    limited, monkeypatch, method, path, headers
):
    """The request's round trip carries its own statement only: the count is decided in
    the process and exchanged by a statement of its own."""
    user_id = new_user_id()
    limited.put(f"/api/sync/{user_id}", json=PAYLOAD)
    executed: list[str] = []
    original = pgwire.run_batch

    async def recording_run_batch(conn, batch, **options):
        executed.extend(stmt.sql.decode() for stmt, _ in batch)
        return await original(conn, batch, **options)

    monkeypatch.setattr(pgwire, "run_batch", recording_run_batch)
    body = PAYLOAD if method == "PUT" else None
    response = limited.request(method, path.format(u=user_id), json=body, headers=headers)
    assert response.status_code in (200, 304), response.text
    assert response.headers["RateLimit-Remaining"] == "3"  # counted: 5 - PUT - this one
    assert len(executed) == 1, executed
    assert "user_sync_data" in executed[0]
    assert "rate_limit_hits" not in executed[0]


SYNC_STATEMENTS = [
    "store_record",
    "replace_record_if_match",
    "store_record_unless_match",
    "fetch_record",
    "record_version",
    "erase_record",
    "erase_record_if_match",
]


@pytest.mark.parametrize("name", SYNC_STATEMENTS)
def test_no_sync_statement_counts_requests(name):
    statement = getattr(queries, name).sql
    assert "rate_limit_hits" not in statement
    assert "user_limit" not in statement


def _wait_for_rows(db, expected: int, timeout: float = 3.0) -> list:
    """The counts reach PostgreSQL at the next exchange (every 200 ms by default)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = list(test_queries.rate_limit_rows(db))
        if sum(row[1] for row in rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_counts_reach_postgresql_within_an_exchange(limited, db):
    user_id = new_user_id()
    for _ in range(3):
        assert limited.post(f"/api/sync/{user_id}/verify").status_code == 200
    rows = _wait_for_rows(db, 3)
    assert [(bucket, hits) for bucket, hits, _ in rows] == [(f"user:{user_id}", 3)]
    window_start = rows[0][2].timestamp()
    assert window_start % 3600 == 0 and 0 <= time.time() - window_start < 3600


def test_the_window_resets(settings):
    window = 2
    app = create_app(settings.with_changes(user_limit_per_window=5, rate_limit_window=window))
    with TestClient(app) as client:
        time.sleep(window - time.time() % window)  # start at a window's beginning
        user_id = new_user_id()
        for _ in range(5):
            assert client.post(f"/api/sync/{user_id}/verify").status_code == 200
        refused = client.post(f"/api/sync/{user_id}/verify")
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= window
        time.sleep(window - time.time() % window + 0.05)
        response = client.post(f"/api/sync/{user_id}/verify")
    assert response.status_code == 200
    assert response.headers["RateLimit-Remaining"] == "4"


def test_invalid_user_ids_are_refused_before_they_cost_a_count(limited, db):
    for _ in range(10):
        assert limited.get("/api/sync/not-a-uuid").status_code == 400
    time.sleep(0.5)  # two exchanges
    assert list(test_queries.rate_limit_rows(db)) == []


def test_zero_turns_the_limit_off(settings):
    with TestClient(create_app(settings.with_changes(user_limit_per_window=0))) as client:
        user_id = new_user_id()
        for _ in range(150):
            response = client.post(f"/api/sync/{user_id}/verify")
            assert response.status_code == 200
            assert "RateLimit-Limit" not in response.headers


def test_the_ip_limit_catches_clients_that_rotate_user_ids(settings):
    app = create_app(settings.with_changes(user_limit_per_window=100, ip_limit_per_window=3))
    with TestClient(app) as client:
        statuses = [client.post(f"/api/sync/{new_user_id()}/verify").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


def test_x_forwarded_for_counts_only_behind_a_trusted_proxy(settings):
    def statuses(trusted: str) -> list[int]:
        app = create_app(
            settings.with_changes(
                ip_limit_per_window=2, user_limit_per_window=0, forwarded_allow_ips=trusted
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
    app = create_app(settings.with_changes(user_limit_per_window=5))
    with TestClient(app, raise_server_exceptions=False) as client:
        pg_server.dropdb(conninfo_to_dict(database_url)["dbname"])
        response = client.post(f"/api/sync/{new_user_id()}/verify")
    assert response.status_code == 503
    assert response.json() == {"error": "Service unavailable"}
    assert "Retry-After" in response.headers


# --- several service processes on one database -------------------------------------


@pytest.mark.slow
def test_two_processes_refuse_from_the_sixth_request_a_second_apart(database_url):
    """The bound: with limit 5, requests spread over two processes at least 1 s apart are
    refused from the 6th on (each process has heard of the other's by then)."""
    user_id = new_user_id()
    with (
        service_process(database_url, RATE_LIMIT_PER_HOUR="5") as a,
        service_process(database_url, RATE_LIMIT_PER_HOUR="5") as b,
    ):
        statuses = []
        for base in [a, b] * 4:
            statuses.append(httpx2.post(f"{base}/api/sync/{user_id}/verify").status_code)
            time.sleep(1)
    assert statuses == [200] * 5 + [429] * 3


@pytest.mark.slow
def test_a_process_refuses_a_user_another_process_spent_before_serving_it_once(database_url):
    """The bound however the requests spread: five at one process, then the sixth, a
    second later, at the other, which has never served this user."""
    user_id = new_user_id()
    with (
        service_process(database_url, RATE_LIMIT_PER_HOUR="5") as a,
        service_process(database_url, RATE_LIMIT_PER_HOUR="5") as b,
    ):
        first = [httpx2.post(f"{a}/api/sync/{user_id}/verify").status_code for _ in range(5)]
        time.sleep(1)
        sixth = httpx2.post(f"{b}/api/sync/{user_id}/verify")
    assert first == [200] * 5
    assert sixth.status_code == 429
    assert sixth.headers["RateLimit-Remaining"] == "0"


@pytest.mark.slow
def test_60_concurrent_requests_over_two_processes_admit_between_one_and_two_limits(
    database_url,
):
    """The bound: 60 concurrent requests for one user over two processes admit at least
    the limit (5) and at most twice it, the slack a fixed window has at its boundary."""
    user_id = new_user_id()

    async def burst(bases: list[str]) -> list[int]:
        limits = httpx2.Limits(max_connections=60)
        async with httpx2.AsyncClient(timeout=30, limits=limits) as client:
            calls = [
                client.post(f"{bases[i % len(bases)]}/api/sync/{user_id}/verify") for i in range(60)
            ]
            return [r.status_code for r in await asyncio.gather(*calls)]

    env = {"RATE_LIMIT_PER_HOUR": "5", "DB_POOL_MAX": "10"}
    with service_process(database_url, **env) as a, service_process(database_url, **env) as b:
        statuses = asyncio.run(burst([a, b]))
    assert 5 <= statuses.count(200) <= 10, statuses
    assert statuses.count(200) + statuses.count(429) == 60


def test_ended_windows_are_purged_and_the_current_one_kept(limited, db, database_url):
    from service.db import queries

    old, current = new_user_id(), new_user_id()
    limited.post(f"/api/sync/{old}/verify")
    _wait_for_rows(db, 1)
    test_queries.shift_rate_limit_windows(db, seconds=3 * 3600)
    limited.post(f"/api/sync/{current}/verify")
    _wait_for_rows(db, 2)

    async def purge() -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await queries.purge_rate_limit_windows(conn, window_seconds=3600)

    asyncio.run(purge())
    assert [row[0] for row in test_queries.rate_limit_rows(db)] == [f"user:{current}"]


# --- the limiter's exchange, two limiters standing for two processes ------------------


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _exchanging_limiters(
    database_url: str, clock: FakeClock, count: int = 2, window_seconds: int = 3600
):
    """`count` limiters with limit 5 that exchange through the test's database."""

    async def run(**bindings):
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            return await exchange_counts(conn, **bindings)

    limiters = [
        RateLimiter(per_user=5, per_ip=0, window_seconds=window_seconds, clock=clock)
        for _ in range(count)
    ]
    return limiters, run


def test_each_limiter_learns_the_others_counts_at_its_exchange(database_url):
    clock = FakeClock(7200.0 + 10)
    (a, b), run = _exchanging_limiters(database_url, clock)
    user = new_user_id()
    for _ in range(3):
        a.admit(user_id=user, client_ip=None)
    b.admit(user_id=user, client_ip=None)

    async def exchange_all() -> None:
        await a.exchange(run)
        await b.exchange(run)
        await a.exchange(run)  # hears b's count, which reached PostgreSQL after a's

    asyncio.run(exchange_all())
    assert a.admit(user_id=user, client_ip=None).remaining == 0  # 3 + 1 + this one
    with pytest.raises(RateLimitExceeded):
        a.admit(user_id=user, client_ip=None)
    # b knew 4 at its exchange and has not heard of a's fifth: its blind spot admits one.
    assert b.admit(user_id=user, client_ip=None).remaining == 0
    asyncio.run(b.exchange(run))
    for limiter in (a, b):
        with pytest.raises(RateLimitExceeded):
            limiter.admit(user_id=user, client_ip=None)


def test_a_limiter_alone_is_exact_and_the_blind_spot_is_at_most_one_limit_each(database_url):
    clock = FakeClock(7200.0 + 10)
    (a, b), _ = _exchanging_limiters(database_url, clock)
    user = new_user_id()
    admitted = 0
    for limiter in (a, b):
        for _ in range(8):
            try:
                limiter.admit(user_id=user, client_ip=None)
                admitted += 1
            except RateLimitExceeded:
                pass
    assert admitted == 10  # no exchange at all: each admits its own limit, never more


def test_counts_survive_a_failed_exchange_and_go_out_with_the_next(database_url, db):
    clock = FakeClock(7200.0 + 10)
    (a,), run = _exchanging_limiters(database_url, clock, count=1)
    user = new_user_id()
    a.admit(user_id=user, client_ip=None)
    a.admit(user_id=user, client_ip=None)

    async def broken(**bindings):
        raise psycopg.OperationalError("the database is away")

    with pytest.raises(psycopg.OperationalError):
        asyncio.run(a.exchange(broken))
    a.admit(user_id=user, client_ip=None)
    asyncio.run(a.exchange(run))
    assert [(bucket, hits) for bucket, hits, _ in test_queries.rate_limit_rows(db)] == [
        (f"user:{user}", 3)
    ]
    assert a.admit(user_id=user, client_ip=None).remaining == 1


def test_a_new_window_starts_from_zero(database_url):
    clock = FakeClock(7200.0 + 3590)
    (a,), _ = _exchanging_limiters(database_url, clock, count=1)
    user = new_user_id()
    for _ in range(5):
        a.admit(user_id=user, client_ip=None)
    with pytest.raises(RateLimitExceeded) as refused:
        a.admit(user_id=user, client_ip=None)
    assert refused.value.quota.reset_seconds == 10
    clock.now += 10
    assert a.admit(user_id=user, client_ip=None).remaining == 4


def test_a_process_learns_the_counts_of_users_it_never_served(database_url):
    """The bound holds however requests spread: b refuses a user a spent at a, before b
    has served that user once."""
    clock = FakeClock(7200.0 + 10)
    (a, b), run = _exchanging_limiters(database_url, clock)
    user = new_user_id()
    for _ in range(5):
        a.admit(user_id=user, client_ip=None)
    asyncio.run(a.exchange(run))
    asyncio.run(b.exchange(run))
    with pytest.raises(RateLimitExceeded):
        b.admit(user_id=user, client_ip=None)


def test_an_exchange_learns_at_most_learn_limit_buckets_the_latest_first(database_url, monkeypatch):
    import service.ratelimit

    monkeypatch.setattr(service.ratelimit, "LEARN_LIMIT", 3)
    clock = FakeClock(7200.0 + 10)
    (a, b), run = _exchanging_limiters(database_url, clock)
    users = [new_user_id() for _ in range(6)]
    for user in users:
        a.admit(user_id=user, client_ip=None)
        asyncio.run(a.exchange(run))  # one change after the other
    assert asyncio.run(b.exchange(run)) == 3
    assert set(b._buckets) == {f"user:{u}" for u in users[3:]}


def test_buckets_unused_for_a_minute_are_forgotten_and_relearnt(database_url):
    """The clock starts at the real time (the database marks changes with its own) and
    runs ahead, with an exchange every 10 s; a window of a year keeps it in one window."""
    clock = FakeClock(time.time())
    (a,), run = _exchanging_limiters(database_url, clock, count=1, window_seconds=31_536_000)
    user = new_user_id()
    for _ in range(4):
        a.admit(user_id=user, client_ip=None)
    asyncio.run(a.exchange(run))
    for _ in range(8):  # the exchange at +10 s still hears the change (LEARN_MARGIN)
        clock.now += 10
        asyncio.run(a.exchange(run))
    assert f"user:{user}" not in a._buckets  # memory follows the last minute's users
    assert a.admit(user_id=user, client_ip=None).remaining == 4  # decided from zero ...
    asyncio.run(a.exchange(run))
    with pytest.raises(RateLimitExceeded):  # ... until the exchange brings back the 5
        a.admit(user_id=user, client_ip=None)


def test_exchanges_send_their_buckets_in_one_order(database_url):
    """Every process locks shared buckets in the same (sorted) order: no deadlock."""
    clock = FakeClock(7200.0 + 10)
    (a,), run = _exchanging_limiters(database_url, clock, count=1)
    seen: list[list[str]] = []

    async def recording(**bindings):
        seen.append(bindings["buckets"])
        return await run(**bindings)

    for user in [new_user_id() for _ in range(20)]:
        a.admit(user_id=user, client_ip="192.0.2.7")
    asyncio.run(a.exchange(recording))
    sent = [key.strip('"') for key in seen[0].strip("{}").split(",")]  # plain keys here
    assert sent == sorted(sent) and len(sent) == 20


def test_any_client_address_survives_the_exchange_exactly(database_url):
    """The exchange sends its buckets as one array literal: quotes, backslashes, commas
    and braces in an address (a forwarded one can hold anything) arrive as they were."""
    clock = FakeClock(7200.0 + 10)
    odd = 'a"b\\c,d{e} f'
    a, b = (RateLimiter(per_user=0, per_ip=5, window_seconds=3600, clock=clock) for _ in "ab")
    _, run = _exchanging_limiters(database_url, clock, count=0)
    for _ in range(4):
        a.admit(user_id=new_user_id(), client_ip=odd)

    async def exchange_both() -> None:
        await a.exchange(run)
        await b.exchange(run)  # learns a's bucket, by its exact key

    asyncio.run(exchange_both())
    assert b.admit(user_id=new_user_id(), client_ip=odd).remaining == 0  # 4 + this one
    with pytest.raises(RateLimitExceeded):
        b.admit(user_id=new_user_id(), client_ip=odd)
