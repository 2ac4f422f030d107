"""No lost updates between devices: ETags and conditional requests (RFC 9110)."""

from __future__ import annotations

import asyncio
import re

import httpx2
import pytest

from tests.conftest import new_user_id, test_queries
from tests.processes import service_process
from tests.test_smoke import PAYLOAD

STRONG_ETAG = re.compile(r'"[0-9a-f]{32}"')
PRECONDITION_FAILED = {"error": "Precondition failed"}


def newer(payload: dict, timestamp: int) -> dict:
    return {**payload, "timestamp": timestamp}


@pytest.fixture
def stored(client):
    """A user with a record; returns (user_id, etag)."""
    user_id = new_user_id()
    response = client.put(f"/api/sync/{user_id}", json=PAYLOAD)
    assert response.status_code == 200
    return user_id, response.headers["ETag"]


def test_put_and_get_carry_the_same_strong_etag(client, stored):
    user_id, etag = stored
    assert STRONG_ETAG.fullmatch(etag)
    assert client.get(f"/api/sync/{user_id}").headers["ETag"] == etag
    assert client.post(f"/api/sync/{user_id}/verify").headers["ETag"] == etag


def test_every_successful_put_changes_the_etag_even_with_the_same_content(client, stored):
    user_id, etag = stored
    again = client.put(f"/api/sync/{user_id}", json=PAYLOAD).headers["ETag"]
    assert again != etag
    assert client.get(f"/api/sync/{user_id}").headers["ETag"] == again


def test_a_recreated_record_never_reuses_an_old_etag(client, stored):
    user_id, etag = stored
    client.delete(f"/api/sync/{user_id}")
    recreated = client.put(f"/api/sync/{user_id}", json=PAYLOAD).headers["ETag"]
    assert recreated != etag
    stale = client.put(f"/api/sync/{user_id}", json=PAYLOAD, headers={"If-Match": etag})
    assert stale.status_code == 412


def test_put_with_the_current_etag_in_if_match_succeeds(client, stored):
    user_id, etag = stored
    response = client.put(
        f"/api/sync/{user_id}", json=newer(PAYLOAD, 2), headers={"If-Match": etag}
    )
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert response.headers["ETag"] != etag
    assert client.get(f"/api/sync/{user_id}").json()["timestamp"] == 2


def test_put_with_a_stale_etag_is_refused_with_412_and_the_current_etag(client, stored, db):
    user_id, etag = stored
    current = client.put(f"/api/sync/{user_id}", json=newer(PAYLOAD, 5)).headers["ETag"]
    response = client.put(
        f"/api/sync/{user_id}", json=newer(PAYLOAD, 3), headers={"If-Match": etag}
    )
    assert response.status_code == 412
    assert response.json() == PRECONDITION_FAILED
    assert response.headers["ETag"] == current
    assert test_queries.raw_record(db, user_id=user_id)[3] == 5


def test_the_lost_update_of_two_devices_is_prevented(client, stored):
    """A downloads, B uploads newer progress, A's upload of its older state is refused."""
    user_id, _ = stored
    device_a = client.get(f"/api/sync/{user_id}")
    device_b = client.get(f"/api/sync/{user_id}")
    b_put = client.put(
        f"/api/sync/{user_id}",
        json=newer(PAYLOAD, 200),
        headers={"If-Match": device_b.headers["ETag"]},
    )
    assert b_put.status_code == 200
    a_put = client.put(
        f"/api/sync/{user_id}",
        json=newer(PAYLOAD, 100),
        headers={"If-Match": device_a.headers["ETag"]},
    )
    assert a_put.status_code == 412
    assert client.get(f"/api/sync/{user_id}").json()["timestamp"] == 200


def test_if_match_on_a_missing_record_is_412_and_creates_nothing(client, db):
    user_id = new_user_id()
    for value in ('"0123456789abcdef0123456789abcdef"', "*"):
        response = client.put(f"/api/sync/{user_id}", json=PAYLOAD, headers={"If-Match": value})
        assert response.status_code == 412
        assert response.json() == PRECONDITION_FAILED
        assert "ETag" not in response.headers
    assert test_queries.raw_record(db, user_id=user_id) is None


def test_if_match_star_replaces_an_existing_record(client, stored):
    user_id, _ = stored
    response = client.put(f"/api/sync/{user_id}", json=PAYLOAD, headers={"If-Match": "*"})
    assert response.status_code == 200


def test_if_match_with_a_list_matches_any_member_but_never_a_weak_tag(client, stored):
    user_id, etag = stored
    weak = client.put(f"/api/sync/{user_id}", json=PAYLOAD, headers={"If-Match": f"W/{etag}"})
    assert weak.status_code == 412
    listed = client.put(
        f"/api/sync/{user_id}",
        json=PAYLOAD,
        headers={"If-Match": f'"other", {weak.headers["ETag"]}'},
    )
    assert listed.status_code == 200


def test_if_none_match_star_creates_only(client, db):
    user_id = new_user_id()
    created = client.put(f"/api/sync/{user_id}", json=PAYLOAD, headers={"If-None-Match": "*"})
    assert created.status_code == 200
    again = client.put(
        f"/api/sync/{user_id}", json=newer(PAYLOAD, 9), headers={"If-None-Match": "*"}
    )
    assert again.status_code == 412
    assert again.json() == PRECONDITION_FAILED
    assert again.headers["ETag"] == created.headers["ETag"]
    assert test_queries.raw_record(db, user_id=user_id)[3] == PAYLOAD["timestamp"]


def test_put_without_conditional_headers_keeps_last_write_wins(client, stored):
    user_id, _ = stored
    assert client.put(f"/api/sync/{user_id}", json=newer(PAYLOAD, 1)).status_code == 200
    assert client.get(f"/api/sync/{user_id}").json()["timestamp"] == 1


def test_get_with_the_current_etag_is_304_without_a_body_and_still_touches(client, stored, db):
    user_id, etag = stored
    test_queries.set_last_accessed_ago(db, user_id=user_id, seconds=7200)
    before = test_queries.raw_record(db, user_id=user_id)[6]
    response = client.get(f"/api/sync/{user_id}", headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["ETag"] == etag
    assert test_queries.raw_record(db, user_id=user_id)[6] > before


@pytest.mark.parametrize("form", ["weak", "list", "star"])
def test_get_if_none_match_matches_weakly_in_lists_and_star(client, stored, form):
    user_id, etag = stored
    value = {"weak": f"W/{etag}", "list": f'"nope", {etag}', "star": "*"}[form]
    response = client.get(f"/api/sync/{user_id}", headers={"If-None-Match": value})
    assert response.status_code == 304


def test_get_with_a_stale_etag_returns_the_record(client, stored):
    user_id, etag = stored
    current = client.put(f"/api/sync/{user_id}", json=newer(PAYLOAD, 7)).headers["ETag"]
    response = client.get(f"/api/sync/{user_id}", headers={"If-None-Match": etag})
    assert response.status_code == 200
    assert response.json()["timestamp"] == 7
    assert response.headers["ETag"] == current


def test_get_if_none_match_on_a_missing_record_is_404(client):
    response = client.get(f"/api/sync/{new_user_id()}", headers={"If-None-Match": "*"})
    assert response.status_code == 404


def test_delete_honours_if_match(client, stored, db):
    user_id, etag = stored
    current = client.put(f"/api/sync/{user_id}", json=PAYLOAD).headers["ETag"]
    stale = client.delete(f"/api/sync/{user_id}", headers={"If-Match": etag})
    assert stale.status_code == 412
    assert stale.headers["ETag"] == current
    assert test_queries.raw_record(db, user_id=user_id) is not None
    assert client.delete(f"/api/sync/{user_id}", headers={"If-Match": current}).status_code == 200
    assert test_queries.raw_record(db, user_id=user_id) is None
    assert client.delete(f"/api/sync/{user_id}", headers={"If-Match": current}).status_code == 412
    assert client.delete(f"/api/sync/{user_id}").json() == {"success": True}


@pytest.mark.parametrize(
    ("method", "header", "value"),
    [
        ("PUT", "If-Match", "not-quoted"),
        ("PUT", "If-Match", '"unterminated'),
        ("PUT", "If-None-Match", '"a" "b"'),
        ("PUT", "If-Match", '*, "a"'),
        ("GET", "If-None-Match", "W/nope"),
        ("DELETE", "If-Match", "abc"),
    ],
)
def test_malformed_conditional_headers_are_400(client, stored, method, header, value):
    user_id, _ = stored
    response = client.request(method, f"/api/sync/{user_id}", json=PAYLOAD, headers={header: value})
    assert response.status_code == 400
    assert response.json()["error"] == "Validation error"
    assert response.json()["details"][0]["field"] == header


def test_cors_exposes_etag_and_allows_conditional_headers(client):
    preflight = client.options(
        f"/api/sync/{new_user_id()}",
        headers={
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type, if-match",
        },
    )
    assert preflight.status_code == 200
    assert "if-match" in preflight.headers["Access-Control-Allow-Headers"].lower()
    response = client.post(
        f"/api/sync/{new_user_id()}/verify", headers={"Origin": "http://localhost:5173"}
    )
    exposed = response.headers["Access-Control-Expose-Headers"].lower()
    for name in ("etag", "ratelimit-remaining", "retry-after"):
        assert name in exposed


@pytest.mark.slow
def test_concurrent_conditional_puts_with_one_etag_let_exactly_one_win(database_url):
    """40 writers, two service processes, one If-Match: exactly one 200, the rest 412."""
    user_id = new_user_id()

    async def race(bases: list[str]) -> tuple[list[int], str]:
        async with httpx2.AsyncClient(timeout=30) as client:
            first = await client.put(f"{bases[0]}/api/sync/{user_id}", json=PAYLOAD)
            etag = first.headers["ETag"]
            responses = await asyncio.gather(
                *(
                    client.put(
                        f"{bases[i % 2]}/api/sync/{user_id}",
                        json=newer(PAYLOAD, 1000 + i),
                        headers={"If-Match": etag},
                    )
                    for i in range(40)
                )
            )
            final = await client.get(f"{bases[0]}/api/sync/{user_id}")
            winners = [r for r in responses if r.status_code == 200]
            assert final.headers["ETag"] == winners[0].headers["ETag"]
            return [r.status_code for r in responses], final.text

    env = {"RATE_LIMIT_PER_HOUR": "0"}
    with service_process(database_url, **env) as a, service_process(database_url, **env) as b:
        statuses, _ = asyncio.run(race([a, b]))
    assert statuses.count(200) == 1
    assert statuses.count(412) == 39
