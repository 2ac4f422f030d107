"""The HTTP contract of docs/protocol.md, one behaviour per test (rate limits: elsewhere).

Every test talks HTTP to the app on a real, freshly migrated PostgreSQL database and, where
the contract says something about storage, looks at the row itself through tests/sql/.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosql
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from starlette.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.payload import MAX_BLOB_BYTES, MAX_BODY_BYTES
from tests.asgi import call_app, put_scope
from tests.conftest import Server, new_user_id, test_queries

contract_queries: Any = aiosql.from_path(Path(__file__).parent / "sql" / "contract.sql", "psycopg")

BROWSER_ORIGIN = "http://localhost:5173"
OTHER_ORIGIN = "http://evil.example"
TOO_LARGE = {"error": "Payload too large (max 1MB)"}
UNAVAILABLE = {"error": "Service unavailable"}
COLUMNS = (
    "user_id",
    "encrypted_blob",
    "iv",
    "timestamp",
    "checksum",
    "created_at",
    "last_accessed",
    "blob_size",
)


def make_payload(blob: bytes = b"an encrypted progress blob", *, timestamp: int = 1698765432000):
    """A body the client would send: base64 blob and IV, SHA-256 over IV || ciphertext."""
    iv = bytes(range(12))
    return {
        "encryptedBlob": base64.b64encode(blob).decode("ascii"),
        "iv": base64.b64encode(iv).decode("ascii"),
        "timestamp": timestamp,
        "checksum": hashlib.sha256(iv + blob).hexdigest(),
    }


def stored(db: psycopg.Connection, user_id: str) -> dict[str, Any] | None:
    """The user's row as a dict of columns, or None."""
    row = test_queries.raw_record(db, user_id=user_id)
    return None if row is None else dict(zip(COLUMNS, row, strict=True))


def count(db: psycopg.Connection) -> int:
    return test_queries.count_records(db)


def server_clock(db: psycopg.Connection):
    return contract_queries.contract_clock(db)


def put_raw(client: TestClient, user_id: str, body: bytes | str, **headers: str):
    """PUT a body exactly as given, declared as JSON unless `headers` say otherwise."""
    all_headers = {"Content-Type": "application/json", **headers}
    return client.put(f"/api/sync/{user_id}", content=body, headers=all_headers)


def assert_validation_error(response, fields: set[str]) -> None:
    """A 400 in the contract's shape, naming exactly `fields`, each with a message."""
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "details"}
    assert body["error"] == "Validation error"
    assert {detail["field"] for detail in body["details"]} == fields
    for detail in body["details"]:
        assert set(detail) == {"field", "message"}
        assert isinstance(detail["message"], str) and detail["message"]


def assert_json_error(response, status: int) -> None:
    """An error in the contract's shape: JSON `{"error": "..."}` with `status`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"], str) and body["error"]


def padded_body(payload: dict[str, Any], size: int) -> bytes:
    """`payload` as JSON followed by whitespace, exactly `size` bytes: still valid JSON."""
    body = json.dumps(payload).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


# --- PUT: store or replace --------------------------------------------------------------


def test_put_of_a_valid_payload_answers_200_success(client, db):
    user_id = new_user_id()
    payload = make_payload()

    response = client.put(f"/api/sync/{user_id}", json=payload)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"success": True}
    row = stored(db, user_id)
    assert row is not None
    assert str(row["user_id"]) == user_id
    assert row["encrypted_blob"] == payload["encryptedBlob"]
    assert row["iv"] == payload["iv"]
    assert row["timestamp"] == payload["timestamp"]
    assert row["checksum"] == payload["checksum"]


def test_put_of_a_new_record_sets_created_at_and_last_accessed_to_now(client, db):
    user_id = new_user_id()
    before = server_clock(db)

    client.put(f"/api/sync/{user_id}", json=make_payload())

    row = stored(db, user_id)
    assert row["created_at"] >= before
    assert row["last_accessed"] >= before


def test_put_replaces_the_content_keeps_created_at_and_sets_last_accessed_to_now(client, db):
    user_id = new_user_id()
    client.put(f"/api/sync/{user_id}", json=make_payload(b"first version", timestamp=1))
    test_queries.age_record(db, user_id=user_id, days=30)
    aged = stored(db, user_id)
    before = server_clock(db)
    second = make_payload(b"the second, longer version of the blob", timestamp=2)

    response = client.put(f"/api/sync/{user_id}", json=second)

    assert response.json() == {"success": True}
    row = stored(db, user_id)
    assert row["encrypted_blob"] == second["encryptedBlob"]
    assert row["iv"] == second["iv"]
    assert row["timestamp"] == 2
    assert row["checksum"] == second["checksum"]
    assert row["blob_size"] == len(b"the second, longer version of the blob")
    assert row["created_at"] == aged["created_at"]
    assert row["last_accessed"] >= before > aged["last_accessed"]
    assert count(db) == 1
    assert client.get(f"/api/sync/{user_id}").json() == second


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 1000, 65537])
def test_put_stores_blob_size_as_the_decoded_byte_count(client, db, size):
    user_id = new_user_id()
    payload = make_payload(bytes(range(256)) * (size // 256) + bytes(size % 256))

    assert client.put(f"/api/sync/{user_id}", json=payload).status_code == 200

    assert stored(db, user_id)["blob_size"] == size


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "Application/JSON; charset=utf-8",
    ],
)
def test_put_with_a_json_content_type_and_parameters_is_accepted(client, db, content_type):
    user_id = new_user_id()

    response = put_raw(
        client, user_id, json.dumps(make_payload()), **{"Content-Type": content_type}
    )

    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert count(db) == 1


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonp",
        "application/octet-stream",
    ],
)
def test_put_with_another_content_type_is_rejected_with_415(client, db, content_type):
    response = put_raw(
        client, new_user_id(), json.dumps(make_payload()), **{"Content-Type": content_type}
    )

    assert_json_error(response, 415)
    assert count(db) == 0


def test_put_without_a_content_type_is_rejected_with_415(client, db):
    response = client.put(f"/api/sync/{new_user_id()}", content=json.dumps(make_payload()))

    assert "content-type" not in response.request.headers
    assert_json_error(response, 415)
    assert count(db) == 0


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"encryptedBlob": ',
        b"{'iv': 'x'}",
        b"not json at all",
        b'{"timestamp": NaN}',
        b"\xff\xfe{}",
    ],
    ids=["empty", "brace", "truncated", "single-quotes", "text", "nan", "not-utf8"],
)
def test_put_with_malformed_json_is_rejected_with_400(client, db, body):
    response = put_raw(client, new_user_id(), body)

    assert_validation_error(response, {"body"})
    assert count(db) == 0


@pytest.mark.parametrize(
    "body",
    [[make_payload()], "a string", 42, None, True],
    ids=["array", "string", "number", "null", "boolean"],
)
def test_put_with_a_json_body_that_is_not_an_object_is_rejected_with_400(client, db, body):
    response = put_raw(client, new_user_id(), json.dumps(body))

    assert_validation_error(response, {"body"})
    assert count(db) == 0


def test_put_with_an_empty_object_names_every_missing_field(client, db):
    response = client.put(f"/api/sync/{new_user_id()}", json={})

    assert_validation_error(response, {"encryptedBlob", "iv", "timestamp", "checksum"})
    assert count(db) == 0


@pytest.mark.parametrize("field", ["encryptedBlob", "iv", "timestamp", "checksum"])
def test_put_without_a_field_is_rejected_with_400_naming_it(client, db, field):
    payload = make_payload()
    del payload[field]

    response = client.put(f"/api/sync/{new_user_id()}", json=payload)

    assert_validation_error(response, {field})
    assert count(db) == 0


@pytest.mark.parametrize("field", ["encryptedBlob", "iv", "timestamp", "checksum"])
def test_put_with_a_null_field_is_rejected_with_400_naming_it(client, db, field):
    response = client.put(f"/api/sync/{new_user_id()}", json={**make_payload(), field: None})

    assert_validation_error(response, {field})
    assert count(db) == 0


BROKEN_FIELDS = [
    # encryptedBlob: a string of canonical standard base64, decoding to at least one byte.
    ("encryptedBlob", 12345, "number"),
    ("encryptedBlob", ["QUJD"], "array"),
    ("encryptedBlob", {"data": "QUJD"}, "object"),
    ("encryptedBlob", "", "empty"),
    ("encryptedBlob", "QUJD RUZH", "inner-space"),
    ("encryptedBlob", "QUJD\nRUZH", "line-break"),
    ("encryptedBlob", "QUJDRA", "missing-padding"),
    ("encryptedBlob", "QUJDR", "length-not-multiple-of-4"),
    ("encryptedBlob", "-_-_", "url-safe-alphabet"),
    ("encryptedBlob", "QR==", "nonzero-padding-bits"),
    ("encryptedBlob", "QUJD====", "excess-padding"),
    ("encryptedBlob", "QQ==QUJD", "padding-inside"),
    ("encryptedBlob", "QUJDé===", "non-ascii"),
    # iv: exactly 16 characters of the standard base64 alphabet.
    ("iv", 1234567890123456, "number"),
    ("iv", "AAECAwQFBgcICQo", "15-chars"),
    ("iv", "AAECAwQFBgcICQoLD", "17-chars"),
    ("iv", "AAECAwQFBgcICQ==", "padding"),
    ("iv", "AAECAwQFBgcICQ-_", "url-safe-alphabet"),
    ("iv", "AAECAwQFBgcICQ o", "space"),
    ("iv", "", "empty"),
    # timestamp: a JSON integer from 1 to 2**63 - 1.
    ("timestamp", 1698765432000.0, "integral-float"),
    ("timestamp", 1.5, "float"),
    ("timestamp", "1698765432000", "string"),
    ("timestamp", True, "true"),
    ("timestamp", False, "false"),
    ("timestamp", [1], "array"),
    ("timestamp", 0, "zero"),
    ("timestamp", -1, "negative"),
    ("timestamp", 2**63, "above-bigint"),
    ("timestamp", 2**64, "above-uint64"),
    # checksum: 64 lowercase hex digits.
    ("checksum", "A" * 64, "uppercase"),
    ("checksum", "a" * 63, "63-digits"),
    ("checksum", "a" * 65, "65-digits"),
    ("checksum", "g" * 64, "non-hex"),
    ("checksum", 1234, "number"),
    ("checksum", "", "empty"),
]


@pytest.mark.parametrize(
    ("field", "value"),
    [(field, value) for field, value, _ in BROKEN_FIELDS],
    ids=[f"{field}-{case}" for field, _, case in BROKEN_FIELDS],
)
def test_put_with_a_field_breaking_its_rule_is_rejected_with_400_naming_it(
    client, db, field, value
):
    response = client.put(f"/api/sync/{new_user_id()}", json={**make_payload(), field: value})

    assert_validation_error(response, {field})
    assert count(db) == 0


def test_put_with_uppercase_checksum_is_rejected_with_400(client, db):
    payload = make_payload()
    payload["checksum"] = payload["checksum"].upper()

    response = client.put(f"/api/sync/{new_user_id()}", json=payload)

    assert_validation_error(response, {"checksum"})
    assert count(db) == 0


def test_put_with_every_field_broken_names_all_four(client, db):
    body = {"encryptedBlob": "not base64!", "iv": "short", "timestamp": "soon", "checksum": 7}

    response = client.put(f"/api/sync/{new_user_id()}", json=body)

    assert_validation_error(response, {"encryptedBlob", "iv", "timestamp", "checksum"})
    assert count(db) == 0


@pytest.mark.parametrize("timestamp", [1, 2**53 + 1, 2**63 - 1])
def test_put_accepts_timestamps_across_the_whole_bigint_range(client, db, timestamp):
    user_id = new_user_id()

    response = client.put(f"/api/sync/{user_id}", json=make_payload(timestamp=timestamp))

    assert response.status_code == 200
    assert stored(db, user_id)["timestamp"] == timestamp


def test_put_ignores_unknown_fields(client, db):
    user_id = new_user_id()
    payload = make_payload(b"12345")
    body = {
        **payload,
        "userId": new_user_id(),
        "blobSize": 999,
        "createdAt": "2020-01-01T00:00:00.000Z",
        "extra": {"nested": [1, 2, 3]},
    }

    response = client.put(f"/api/sync/{user_id}", json=body)

    assert response.status_code == 200
    assert response.json() == {"success": True}
    row = stored(db, user_id)
    assert row["blob_size"] == 5
    assert count(db) == 1
    assert client.get(f"/api/sync/{user_id}").json() == payload


def test_put_of_a_blob_of_exactly_1000000_bytes_is_accepted(client, db):
    user_id = new_user_id()
    payload = make_payload(b"\xa5" * MAX_BLOB_BYTES)

    response = client.put(f"/api/sync/{user_id}", json=payload)

    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert stored(db, user_id)["blob_size"] == 1_000_000
    assert client.get(f"/api/sync/{user_id}").json() == payload


def test_put_of_a_blob_of_1000001_bytes_is_rejected_with_413(client, db):
    payload = make_payload(b"\xa5" * (MAX_BLOB_BYTES + 1))

    response = client.put(f"/api/sync/{new_user_id()}", json=payload)

    assert response.status_code == 413
    assert response.json() == TOO_LARGE
    assert count(db) == 0


def test_put_body_of_exactly_the_body_limit_holding_a_1000000_byte_blob_is_accepted(client, db):
    """The body limit leaves room for the largest blob plus generous JSON whitespace."""
    user_id = new_user_id()
    payload = make_payload(b"\x5a" * MAX_BLOB_BYTES)

    response = put_raw(client, user_id, padded_body(payload, MAX_BODY_BYTES))

    assert response.status_code == 200
    assert stored(db, user_id)["blob_size"] == MAX_BLOB_BYTES


def test_put_body_over_the_body_limit_with_content_length_is_rejected_with_413(client, db):
    body = padded_body(make_payload(), MAX_BODY_BYTES + 1)

    response = put_raw(client, new_user_id(), body)

    assert response.request.headers["content-length"] == str(MAX_BODY_BYTES + 1)
    assert response.status_code == 413
    assert response.json() == TOO_LARGE
    assert count(db) == 0


def test_put_body_over_the_body_limit_sent_chunked_is_rejected_with_413(client, db):
    body = padded_body(make_payload(), MAX_BODY_BYTES + 1)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    response = client.put(
        f"/api/sync/{new_user_id()}",
        content=chunks(),
        headers={"Content-Type": "application/json"},
    )

    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json() == TOO_LARGE
    assert count(db) == 0


def test_put_body_streaming_past_the_limit_is_refused_before_it_is_read_whole(client, db):
    """The app stops pulling the body at the chunk that crosses the limit (docs/protocol.md:
    never read whole into memory); TestClient buffers bodies, so this drives ASGI itself."""
    chunk_size = 64 * 1024
    offered = 4 * MAX_BODY_BYTES // chunk_size
    pulled = 0
    read = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled, read
        pulled += 1
        body = b'{"encryptedBlob": "' if pulled == 1 else b"A" * chunk_size
        read += len(body)
        return {"type": "http.request", "body": body, "more_body": pulled < offered}

    sent = call_app(client, put_scope(client, f"/api/sync/{new_user_id()}"), receive)

    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 413
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert json.loads(body) == TOO_LARGE
    assert MAX_BODY_BYTES < read <= MAX_BODY_BYTES + chunk_size
    assert pulled < offered
    assert count(db) == 0


REFUSED_PUTS = [
    pytest.param(
        {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
        400,
        id="malformed",
    ),
    pytest.param({"json": [make_payload()]}, 400, id="array"),
    pytest.param({"json": {**make_payload(), "iv": "short"}}, 400, id="bad-iv"),
    pytest.param({"json": {**make_payload(), "timestamp": 0}}, 400, id="bad-timestamp"),
    pytest.param(
        {"content": json.dumps(make_payload()), "headers": {"Content-Type": "text/plain"}},
        415,
        id="text-plain",
    ),
    pytest.param({"json": make_payload(b"\0" * (MAX_BLOB_BYTES + 1))}, 413, id="blob-too-large"),
    pytest.param(
        {
            "content": padded_body(make_payload(), MAX_BODY_BYTES + 1),
            "headers": {"Content-Type": "application/json"},
        },
        413,
        id="body-too-large",
    ),
]


@pytest.mark.parametrize(("request_kwargs", "status"), REFUSED_PUTS)
def test_a_refused_put_stores_nothing(client, db, request_kwargs, status):
    user_id = new_user_id()

    response = client.put(f"/api/sync/{user_id}", **request_kwargs)

    assert response.status_code == status
    assert stored(db, user_id) is None
    assert count(db) == 0
    assert client.get(f"/api/sync/{user_id}").status_code == 404


@pytest.mark.parametrize(("request_kwargs", "status"), REFUSED_PUTS)
def test_a_refused_put_leaves_an_existing_record_untouched(client, db, request_kwargs, status):
    user_id = new_user_id()
    original = make_payload(b"the record to keep")
    client.put(f"/api/sync/{user_id}", json=original)
    # Two hours old, so that any write to last_accessed would show.
    test_queries.set_last_accessed_ago(db, user_id=user_id, seconds=7200)
    before = stored(db, user_id)

    response = client.put(f"/api/sync/{user_id}", **request_kwargs)

    assert response.status_code == status
    assert stored(db, user_id) == before


# --- GET: fetch -------------------------------------------------------------------------


def test_get_returns_exactly_the_four_client_fields(client):
    user_id = new_user_id()
    payload = make_payload()
    client.put(f"/api/sync/{user_id}", json=payload)

    response = client.get(f"/api/sync/{user_id}")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"encryptedBlob", "iv", "timestamp", "checksum"}
    assert body == payload


@pytest.mark.parametrize("timestamp", [1, 1698765432000, 2**53 + 1, 2**63 - 1])
def test_get_returns_the_timestamp_as_an_exact_json_integer(client, timestamp):
    user_id = new_user_id()
    client.put(f"/api/sync/{user_id}", json=make_payload(timestamp=timestamp))

    response = client.get(f"/api/sync/{user_id}")

    value = response.json()["timestamp"]
    assert type(value) is int
    assert value == timestamp
    # No float formatting anywhere on the wire (2**53 + 1 would not survive a double).
    assert f'"timestamp":{timestamp}'.encode() in response.content.replace(b" ", b"")


def test_get_of_an_unknown_user_is_404_user_not_found(client, db):
    response = client.get(f"/api/sync/{new_user_id()}")

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"error": "User not found"}
    assert count(db) == 0


def test_get_after_delete_is_404_user_not_found(client):
    user_id = new_user_id()
    client.put(f"/api/sync/{user_id}", json=make_payload())
    client.delete(f"/api/sync/{user_id}")

    response = client.get(f"/api/sync/{user_id}")

    assert response.status_code == 404
    assert response.json() == {"error": "User not found"}


def test_get_marks_the_record_accessed_when_last_accessed_is_over_an_hour_old(client, db):
    user_id = new_user_id()
    client.put(f"/api/sync/{user_id}", json=make_payload())
    test_queries.set_last_accessed_ago(db, user_id=user_id, seconds=2 * 3600)
    stale = stored(db, user_id)
    before = server_clock(db)

    assert client.get(f"/api/sync/{user_id}").status_code == 200

    row = stored(db, user_id)
    assert row["last_accessed"] >= before > stale["last_accessed"]
    assert {k: v for k, v in row.items() if k != "last_accessed"} == {
        k: v for k, v in stale.items() if k != "last_accessed"
    }


def test_get_marks_a_record_not_read_for_a_year_accessed_and_keeps_created_at(client, db):
    user_id = new_user_id()
    client.put(f"/api/sync/{user_id}", json=make_payload())
    test_queries.age_record(db, user_id=user_id, days=365)
    aged = stored(db, user_id)
    before = server_clock(db)

    assert client.get(f"/api/sync/{user_id}").status_code == 200

    row = stored(db, user_id)
    assert row["last_accessed"] >= before
    assert row["created_at"] == aged["created_at"]


@pytest.mark.parametrize("seconds", [60, 30 * 60])
def test_get_does_not_rewrite_a_last_accessed_under_an_hour_old(client, db, seconds):
    """The coarse mark: a recent last_accessed is left alone, sparing a write per read."""
    user_id = new_user_id()
    payload = make_payload()
    client.put(f"/api/sync/{user_id}", json=payload)
    test_queries.set_last_accessed_ago(db, user_id=user_id, seconds=seconds)
    before = stored(db, user_id)

    response = client.get(f"/api/sync/{user_id}")

    assert response.json() == payload
    assert stored(db, user_id) == before


def test_get_of_an_unknown_user_stores_nothing(client, db):
    other = new_user_id()
    client.put(f"/api/sync/{other}", json=make_payload())

    client.get(f"/api/sync/{new_user_id()}")

    assert count(db) == 1


# --- POST /verify -----------------------------------------------------------------------


def test_verify_of_a_stored_record_answers_exists_true(client):
    user_id = new_user_id()
    client.put(f"/api/sync/{user_id}", json=make_payload())

    response = client.post(f"/api/sync/{user_id}/verify")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"exists": True}


def test_verify_of_an_unknown_user_answers_exists_false_and_stores_nothing(client, db):
    response = client.post(f"/api/sync/{new_user_id()}/verify")

    assert response.status_code == 200
    assert response.json() == {"exists": False}
    assert count(db) == 0


def test_verify_after_delete_answers_exists_false(client):
    user_id = new_user_id()
    client.put(f"/api/sync/{user_id}", json=make_payload())
    client.delete(f"/api/sync/{user_id}")

    assert client.post(f"/api/sync/{user_id}/verify").json() == {"exists": False}


def test_verify_does_not_depend_on_a_request_body(client):
    user_id = new_user_id()
    client.put(f"/api/sync/{user_id}", json=make_payload())

    response = client.post(f"/api/sync/{user_id}/verify", json={"anything": True})

    assert response.status_code == 200
    assert response.json() == {"exists": True}


# --- DELETE: erase ----------------------------------------------------------------------


def test_delete_of_a_stored_record_answers_success_and_removes_the_row(client, db):
    user_id = new_user_id()
    kept = new_user_id()
    client.put(f"/api/sync/{user_id}", json=make_payload())
    client.put(f"/api/sync/{kept}", json=make_payload())

    response = client.delete(f"/api/sync/{user_id}")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"success": True}
    assert stored(db, user_id) is None
    assert stored(db, kept) is not None
    assert count(db) == 1


def test_delete_without_a_record_answers_success(client, db):
    response = client.delete(f"/api/sync/{new_user_id()}")

    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert count(db) == 0


def test_delete_twice_answers_success_both_times(client, db):
    user_id = new_user_id()
    client.put(f"/api/sync/{user_id}", json=make_payload())

    assert client.delete(f"/api/sync/{user_id}").json() == {"success": True}
    assert client.delete(f"/api/sync/{user_id}").json() == {"success": True}
    assert count(db) == 0


# --- userId -----------------------------------------------------------------------------


def test_put_with_an_uppercase_user_id_is_the_same_record_as_lowercase(client, db):
    user_id = new_user_id()
    payload = make_payload()

    assert client.put(f"/api/sync/{user_id.upper()}", json=payload).status_code == 200

    assert str(stored(db, user_id)["user_id"]) == user_id
    assert client.get(f"/api/sync/{user_id}").json() == payload
    assert client.post(f"/api/sync/{user_id}/verify").json() == {"exists": True}


def test_get_verify_and_delete_with_an_uppercase_user_id_reach_the_lowercase_record(client, db):
    user_id = new_user_id()
    payload = make_payload()
    client.put(f"/api/sync/{user_id}", json=payload)
    upper = user_id.upper()

    assert client.get(f"/api/sync/{upper}").json() == payload
    assert client.post(f"/api/sync/{upper}/verify").json() == {"exists": True}
    assert client.delete(f"/api/sync/{upper}").json() == {"success": True}
    assert count(db) == 0


def test_put_with_a_mixed_case_user_id_replaces_the_same_record(client, db):
    user_id = new_user_id()
    mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(user_id))
    client.put(f"/api/sync/{user_id}", json=make_payload(b"first"))
    second = make_payload(b"second")

    client.put(f"/api/sync/{mixed}", json=second)

    assert count(db) == 1
    assert client.get(f"/api/sync/{user_id}").json() == second


VALID_ID = "550e8400-e29b-41d4-a716-446655440000"
INVALID_IDS = [
    pytest.param(VALID_ID.replace("-", ""), id="no-dashes"),
    pytest.param("{" + VALID_ID + "}", id="braces"),
    pytest.param("urn:uuid:" + VALID_ID, id="urn"),
    pytest.param(VALID_ID[:-1], id="too-short"),
    pytest.param(VALID_ID + "0", id="too-long"),
    pytest.param(VALID_ID[:-1] + "g", id="non-hex"),
    pytest.param("550e8400e-29b-41d4-a716-446655440000", id="misplaced-dash"),
    pytest.param(" " + VALID_ID, id="leading-space"),
    pytest.param(VALID_ID + " ", id="trailing-space"),
    pytest.param("not-a-uuid", id="word"),
    pytest.param("0", id="zero"),
]
ENDPOINTS = [
    pytest.param("PUT", "/api/sync/{}", id="put"),
    pytest.param("GET", "/api/sync/{}", id="get"),
    pytest.param("POST", "/api/sync/{}/verify", id="verify"),
    pytest.param("DELETE", "/api/sync/{}", id="delete"),
]


@pytest.mark.parametrize(("method", "template"), ENDPOINTS)
@pytest.mark.parametrize("user_id", INVALID_IDS)
def test_an_invalid_user_id_is_rejected_with_400_on_every_endpoint(
    client, db, method, template, user_id
):
    kwargs = {"json": make_payload()} if method == "PUT" else {}

    response = client.request(method, template.format(user_id), **kwargs)

    assert_validation_error(response, {"userId"})
    assert count(db) == 0


# --- Wrong methods and unknown paths ----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "template", "allowed", "refused"),
    [
        ("PATCH", "/api/sync/{}", {"GET", "PUT", "DELETE"}, {"PATCH", "POST"}),
        ("POST", "/api/sync/{}", {"GET", "PUT", "DELETE"}, {"PATCH", "POST"}),
        ("GET", "/api/sync/{}/verify", {"POST"}, {"GET", "PUT", "DELETE"}),
        ("PUT", "/api/sync/{}/verify", {"POST"}, {"GET", "PUT", "DELETE"}),
        ("DELETE", "/api/sync/{}/verify", {"POST"}, {"GET", "PUT", "DELETE"}),
        ("POST", "/health", {"GET"}, {"POST"}),
        ("DELETE", "/health/live", {"GET"}, {"DELETE"}),
    ],
)
def test_a_wrong_method_is_405_with_allow_and_a_json_error(
    client, db, method, template, allowed, refused
):
    response = client.request(method, template.format(new_user_id()), json=make_payload())

    assert_json_error(response, 405)
    allow = {m.strip() for m in response.headers["allow"].split(",")}
    assert allowed <= allow
    assert not refused & allow
    assert count(db) == 0


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/api",
        "/api/sync",
        "/api/sync/{}/verify/extra",
        "/api/sync/{}/unknown",
        "/api/other/{}",
        "/health/unknown",
    ],
)
def test_an_unknown_path_is_404_with_a_json_error(client, path):
    response = client.get(path.format(new_user_id()))

    assert_json_error(response, 404)


# --- CORS -------------------------------------------------------------------------------


def preflight(client: TestClient, path: str, method: str, origin: str = BROWSER_ORIGIN):
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type",
        },
    )


@pytest.mark.parametrize(
    ("method", "template"),
    [
        ("GET", "/api/sync/{}"),
        ("PUT", "/api/sync/{}"),
        ("DELETE", "/api/sync/{}"),
        ("POST", "/api/sync/{}/verify"),
    ],
)
def test_cors_preflight_from_the_browser_app_allows_the_method_and_content_type(
    client, method, template
):
    response = preflight(client, template.format(new_user_id()), method)

    assert response.status_code in (200, 204)
    assert response.headers["access-control-allow-origin"] in ("*", BROWSER_ORIGIN)
    methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "PUT", "POST", "DELETE"} <= methods
    headers = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert "content-type" in headers


CLIENT_PREFLIGHTS = [("PUT", "authorization,content-type"), ("GET", "authorization")]
"""What the Logikids web client (data/plugins/sync.ts) asks before each sync request: it
sends `Authorization: Bearer <token>` on every GET and PUT."""


def client_preflight(client: TestClient, method: str, requested: str, origin=BROWSER_ORIGIN):
    return client.options(
        f"/api/sync/{new_user_id()}",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": requested,
        },
    )


@pytest.mark.parametrize(("method", "requested"), CLIENT_PREFLIGHTS)
@pytest.mark.parametrize("clients", ["client", "restricted_client"])
def test_cors_preflights_of_the_logikids_client_with_its_bearer_token_are_allowed(
    request, clients, method, requested
):
    response = client_preflight(request.getfixturevalue(clients), method, requested)

    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] in ("*", BROWSER_ORIGIN)
    assert method in response.headers["access-control-allow-methods"]
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert set(requested.split(",")) <= allowed
    assert {"authorization", "content-type", "if-match", "if-none-match"} <= allowed


def test_cors_allowed_request_headers_are_configurable(settings):
    app = create_app(settings.with_changes(cors_allow_headers=("Content-Type", "X-Client")))
    with TestClient(app, raise_server_exceptions=False) as narrow:
        custom = client_preflight(narrow, "PUT", "x-client,content-type")
        refused = client_preflight(narrow, "GET", "authorization")

    assert custom.status_code == 200
    assert refused.status_code == 400
    assert refused.json() == {"error": "Disallowed CORS headers"}


def test_cors_simple_responses_carry_allow_origin(client):
    user_id = new_user_id()
    origin = {"Origin": BROWSER_ORIGIN}

    responses = [
        client.put(f"/api/sync/{user_id}", json=make_payload(), headers=origin),
        client.get(f"/api/sync/{user_id}", headers=origin),
        client.post(f"/api/sync/{user_id}/verify", headers=origin),
        client.delete(f"/api/sync/{user_id}", headers=origin),
        client.get("/health", headers=origin),
    ]

    for response in responses:
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] in ("*", BROWSER_ORIGIN)


def test_cors_error_responses_carry_allow_origin_so_the_browser_app_can_read_them(client):
    origin = {"Origin": BROWSER_ORIGIN}

    responses = [
        client.get(f"/api/sync/{new_user_id()}", headers=origin),
        client.get("/api/sync/not-a-uuid", headers=origin),
        client.put(f"/api/sync/{new_user_id()}", json={}, headers=origin),
        client.put(f"/api/sync/{new_user_id()}", content=b"x", headers=origin),
        client.patch(f"/api/sync/{new_user_id()}", headers=origin),
    ]

    assert [r.status_code for r in responses] == [404, 400, 400, 415, 405]
    for response in responses:
        assert response.headers["access-control-allow-origin"] in ("*", BROWSER_ORIGIN)


@pytest.fixture
def restricted_client(settings: Settings) -> Iterator[TestClient]:
    """The app allowing only the browser app's origin."""
    app = create_app(settings.with_changes(cors_origins=(BROWSER_ORIGIN,)))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_cors_with_configured_origins_allows_a_listed_origin(restricted_client):
    user_id = new_user_id()

    pre = preflight(restricted_client, f"/api/sync/{user_id}", "PUT")
    simple = restricted_client.get(f"/api/sync/{user_id}", headers={"Origin": BROWSER_ORIGIN})

    assert pre.status_code in (200, 204)
    assert pre.headers["access-control-allow-origin"] == BROWSER_ORIGIN
    assert simple.status_code == 404
    assert simple.headers["access-control-allow-origin"] == BROWSER_ORIGIN


def test_cors_with_configured_origins_does_not_allow_another_origin(restricted_client):
    user_id = new_user_id()

    pre = preflight(restricted_client, f"/api/sync/{user_id}", "PUT", origin=OTHER_ORIGIN)
    simple = restricted_client.get(f"/api/sync/{user_id}", headers={"Origin": OTHER_ORIGIN})

    assert pre.status_code >= 400
    assert "access-control-allow-origin" not in pre.headers
    assert "access-control-allow-origin" not in simple.headers


def test_cors_refused_preflight_is_a_json_error(restricted_client):
    response = preflight(restricted_client, f"/api/sync/{new_user_id()}", "PUT", OTHER_ORIGIN)

    assert_json_error(response, 400)


# --- PostgreSQL unreachable or pool exhausted -------------------------------------------


def _dbname(database_url: str) -> str:
    return conninfo_to_dict(database_url)["dbname"]


@pytest.fixture
def unreachable_client(
    settings: Settings, database_url: str, pg_server: Server
) -> Iterator[TestClient]:
    """An app that started fine, whose database then vanished (dropdb --force also ends
    the pool's sessions). A short pool timeout keeps the reconnect waits brief."""
    app = create_app(settings.with_changes(pool_timeout=0.5))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        assert test_client.get("/health").status_code == 200
        pg_server.dropdb(_dbname(database_url))
        yield test_client


def assert_unavailable(response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == UNAVAILABLE
    assert int(response.headers["retry-after"]) >= 1


ALL_DATABASE_REQUESTS = [
    pytest.param("PUT", "/api/sync/{}", id="put"),
    pytest.param("GET", "/api/sync/{}", id="get"),
    pytest.param("POST", "/api/sync/{}/verify", id="verify"),
    pytest.param("DELETE", "/api/sync/{}", id="delete"),
    pytest.param("GET", "/health", id="health"),
]


@pytest.mark.parametrize(("method", "template"), ALL_DATABASE_REQUESTS)
def test_the_first_request_after_postgresql_goes_away_is_503_with_retry_after(
    unreachable_client, method, template
):
    kwargs = {"json": make_payload()} if method == "PUT" else {}

    response = unreachable_client.request(method, template.format(new_user_id()), **kwargs)

    assert_unavailable(response)


def test_every_endpoint_stays_503_never_500_while_postgresql_is_unreachable(unreachable_client):
    origin = {"Origin": BROWSER_ORIGIN}
    for _round in range(2):
        for param in ALL_DATABASE_REQUESTS:
            method, template = param.values
            kwargs = {"json": make_payload()} if method == "PUT" else {}
            response = unreachable_client.request(
                method, template.format(new_user_id()), headers=origin, **kwargs
            )
            assert_unavailable(response)
            assert response.headers["access-control-allow-origin"] in ("*", BROWSER_ORIGIN)


def test_liveness_stays_200_while_postgresql_is_unreachable(unreachable_client):
    assert_unavailable(unreachable_client.get("/health"))

    response = unreachable_client.get("/health/live")

    assert response.status_code == 200


@pytest.fixture
def single_connection_client(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings.with_changes(pool_min=1, pool_max=1, pool_timeout=0.2))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_a_request_finding_the_pool_exhausted_is_503_with_retry_after(single_connection_client):
    client = single_connection_client
    pool = client.app_state["pool"]
    held = client.portal.call(pool.getconn)
    try:
        response = client.get(f"/api/sync/{new_user_id()}")
    finally:
        client.portal.call(pool.putconn, held)

    assert_unavailable(response)
    assert client.get(f"/api/sync/{new_user_id()}").status_code == 404


# --- Operations endpoints ---------------------------------------------------------------


def test_health_answers_200_status_ok_when_postgresql_answers(client):
    response = client.get("/health")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"status": "ok"}


def test_liveness_answers_200(client):
    response = client.get("/health/live")

    assert response.status_code == 200
