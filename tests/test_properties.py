"""Property tests of the PUT payload rules (docs/protocol.md) against the service and PostgreSQL.

The oracle below is written from docs/protocol.md alone, on purpose without `service.payload`:
base64 via the standard library plus a re-encoding check, character-set membership for the
iv and checksum, exact type checks for the timestamp. The service, the CHECK constraints and
the oracle must all agree.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import string
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tests.conftest import new_user_id, test_queries

settings.register_profile(
    "logikids-properties",
    max_examples=150,
    deadline=None,
    # One database per test function, shared by its examples: each example uses a new user id.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PROPERTY_SETTINGS = settings.get_profile("logikids-properties")

# --- The oracle: docs/protocol.md, written out independently -----------------------------

MAX_BLOB_BYTES = 1_000_000
MAX_TIMESTAMP = 2**63 - 1
B64_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
HEX_LOWER = "0123456789abcdef"
FIELDS = ("encryptedBlob", "iv", "timestamp", "checksum")
TOO_LARGE = {"error": "Payload too large (max 1MB)"}


def oracle_blob_size(blob: object) -> int | None:
    """Decoded size of canonical standard base64, or None when `blob` is not that."""
    if not isinstance(blob, str) or len(blob) % 4 != 0:
        return None
    body = blob.rstrip("=")
    if len(blob) - len(body) > 2 or any(c not in B64_ALPHABET for c in body):
        return None
    try:
        decoded = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return None
    if base64.b64encode(decoded).decode("ascii") != blob:
        return None
    return len(decoded)


def oracle_iv_ok(iv: object) -> bool:
    return isinstance(iv, str) and len(iv) == 16 and all(c in B64_ALPHABET for c in iv)


def oracle_checksum_ok(checksum: object) -> bool:
    return (
        isinstance(checksum, str) and len(checksum) == 64 and all(c in HEX_LOWER for c in checksum)
    )


def oracle_timestamp_ok(timestamp: object) -> bool:
    # type() rather than isinstance(): a JSON true is not an integer timestamp.
    return type(timestamp) is int and 1 <= timestamp <= MAX_TIMESTAMP


def oracle_broken_fields(body: dict[str, Any]) -> set[str]:
    """The fields of an object body that break a rule."""
    size = oracle_blob_size(body.get("encryptedBlob"))
    checks = {
        "encryptedBlob": size is not None and 1 <= size <= MAX_BLOB_BYTES,
        "iv": oracle_iv_ok(body.get("iv")),
        "timestamp": oracle_timestamp_ok(body.get("timestamp")),
        "checksum": oracle_checksum_ok(body.get("checksum")),
    }
    return {field for field, ok in checks.items() if not ok}


def oracle_status(body: object) -> int:
    """200, 400 or 413 for a parsed JSON body, as docs/protocol.md says."""
    if not isinstance(body, dict):
        return 400
    size = oracle_blob_size(body.get("encryptedBlob"))
    if size is not None and size > MAX_BLOB_BYTES:
        return 413
    return 400 if oracle_broken_fields(body) else 200


def oracle_status_of_bytes(raw: bytes) -> int:
    """The status for a raw body: malformed JSON is a 400 like any other broken rule."""
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return 400
    return oracle_status(parsed)


# --- Helpers -------------------------------------------------------------------------------


def encode(body: object, *, ensure_ascii: bool = True) -> bytes:
    return json.dumps(body, ensure_ascii=ensure_ascii, allow_nan=False).encode("utf-8")


def put_raw(client: TestClient, user_id: str, raw: bytes) -> Any:
    return client.put(
        f"/api/sync/{user_id}", content=raw, headers={"content-type": "application/json"}
    )


def assert_error_shape(response: Any, body: object) -> None:
    """4xx bodies follow the contract; a 400 names exactly the broken fields."""
    if response.status_code == 413:
        assert response.json() == TOO_LARGE
        return
    assert response.status_code == 400
    got = response.json()
    assert set(got) == {"error", "details"}
    assert got["error"] == "Validation error"
    assert isinstance(got["details"], list) and got["details"]
    for detail in got["details"]:
        assert set(detail) == {"field", "message"}
        assert isinstance(detail["field"], str) and isinstance(detail["message"], str)
        assert detail["message"]
    if isinstance(body, dict):
        assert {d["field"] for d in got["details"]} == oracle_broken_fields(body)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def valid_payload(**overrides: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "encryptedBlob": "dGVzdCBibG9iIGRhdGE=",
        "iv": "MTIzNDU2Nzg5MGFi",
        "timestamp": 1698765432000,
        "checksum": "abc123def456abc123def456abc123def456abc123def456abc123def456abcd",
    }
    payload.update(overrides)
    return payload


# --- Strategies ----------------------------------------------------------------------------

NON_ASCII = ["é", "\u0663", "\u0661", "\uff21", "ß", "\u00a0", "\u2028", "😀", "ǅ"]
WHITESPACE = [" ", "\n", "\r\n", "\t", "\r", "\f", "\v"]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
non_strings = st.one_of(
    json_scalars.filter(lambda v: not isinstance(v, str)),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def mostly(usual: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> Any:
    """`usual` three times in four: valid fields, so that whole payloads are often accepted,
    and near misses rather than noise, so that the interesting mutations come up often."""
    # An interior band rather than an end of the range: Hypothesis favours the ends.
    return st.integers(0, 99).flatmap(lambda k: rare if 30 <= k < 65 else usual)


@st.composite
def splice(draw: st.DrawFn, base: str, insert: st.SearchStrategy[str]) -> str:
    """`base` with one drawn string inserted at a drawn position."""
    at = draw(st.integers(0, len(base)))
    return base[:at] + draw(insert) + base[at:]


@st.composite
def replace_one(draw: st.DrawFn, base: str, by: st.SearchStrategy[str]) -> str:
    """`base` with one character replaced by a drawn string."""
    at = draw(st.integers(0, len(base) - 1))
    return base[:at] + draw(by) + base[at + 1 :]


# Mostly small blobs; the 1 MB edges are explicit tests below.
blob_bytes = st.one_of(st.binary(min_size=1, max_size=48), st.binary(min_size=1, max_size=3000))
valid_blobs = blob_bytes.map(b64)


@st.composite
def mutated_blobs(draw: st.DrawFn) -> str:
    """A canonical blob bent in one of the ways clients and attackers bend base64."""
    data = draw(blob_bytes)
    blob = b64(data)
    kind = draw(
        st.sampled_from(
            [
                "whitespace",
                "trailing_newline",
                "urlsafe",
                "strip_padding",
                "extra_padding",
                "padding_bits",
                "non_ascii",
                "replace",
                "truncate",
                "concat",
            ]
        )
    )
    if kind == "whitespace":
        return draw(splice(blob, st.sampled_from(WHITESPACE)))
    if kind == "trailing_newline":
        return blob + "\n"
    if kind == "urlsafe":
        safe = base64.urlsafe_b64encode(data).decode("ascii")
        return safe if safe != blob else draw(replace_one(blob, st.sampled_from("-_")))
    if kind == "strip_padding":
        return blob.rstrip("=")
    if kind == "extra_padding":
        return blob + draw(st.sampled_from(["=", "==", "===", "===="]))
    if kind == "padding_bits":
        last = len(blob.rstrip("=")) - 1
        return blob[:last] + draw(st.sampled_from(B64_ALPHABET)) + blob[last + 1 :]
    if kind == "non_ascii":
        return draw(
            st.one_of(
                splice(blob, st.sampled_from(NON_ASCII)),
                replace_one(blob, st.sampled_from(NON_ASCII)),
            )
        )
    if kind == "replace":
        return draw(replace_one(blob, st.sampled_from(B64_ALPHABET + "=-_.: ")))
    if kind == "truncate":
        return blob[: draw(st.integers(0, len(blob) - 1))]
    return blob + draw(valid_blobs)  # "concat": padding in the middle when blob has some


invalid_blobs = mostly(
    mutated_blobs(),
    st.one_of(
        st.just(""),
        st.text(alphabet=B64_ALPHABET + "=-_ \n", max_size=24),
        st.text(max_size=12),
        non_strings,
    ),
)
blobs = mostly(valid_blobs, invalid_blobs)

valid_ivs = st.text(alphabet=B64_ALPHABET, min_size=16, max_size=16)


@st.composite
def mutated_ivs(draw: st.DrawFn) -> str:
    iv = draw(valid_ivs)
    return draw(
        st.one_of(
            st.just(iv + "\n"),
            st.just(iv[:15] + "\n"),
            st.just(iv + " "),
            st.just(iv[:15]),
            replace_one(iv, st.sampled_from(["=", "-", "_", " ", "\n", "\x00", *NON_ASCII])),
            splice(iv, st.sampled_from(["=", "-", "\n", *NON_ASCII])),
        )
    )


invalid_iv_strings = mostly(
    mutated_ivs(),
    st.one_of(
        st.text(alphabet=B64_ALPHABET, max_size=24).filter(lambda s: len(s) != 16),
        st.text(max_size=20),
    ),
)
ivs = mostly(valid_ivs, mostly(invalid_iv_strings, non_strings))

valid_checksums = st.text(alphabet=HEX_LOWER, min_size=64, max_size=64)


@st.composite
def mutated_checksums(draw: st.DrawFn) -> str:
    checksum = draw(valid_checksums)
    return draw(
        st.one_of(
            st.just(checksum.upper()),
            st.just(checksum + "\n"),
            st.just(checksum[:63] + "\n"),
            st.just(checksum + " "),
            st.just(checksum[:63]),
            st.just(checksum + draw(st.sampled_from(HEX_LOWER))),
            replace_one(checksum, st.sampled_from(["g", "A", "F", " ", "\x00", *NON_ASCII])),
        )
    )


invalid_checksum_strings = mostly(
    mutated_checksums(),
    st.one_of(
        st.text(alphabet=HEX_LOWER + "ABCDEF", min_size=60, max_size=68),
        st.text(max_size=20),
    ),
)
checksums = mostly(valid_checksums, mostly(invalid_checksum_strings, non_strings))

valid_timestamps = st.one_of(
    st.integers(min_value=1, max_value=MAX_TIMESTAMP),
    st.sampled_from([1, MAX_TIMESTAMP, 1698765432000]),
)
invalid_timestamps = st.one_of(
    st.integers(max_value=0, min_value=-(2**70)),
    st.integers(min_value=MAX_TIMESTAMP + 1, max_value=2**70),
    st.sampled_from([0, -1, 2**63, 2**64, True, False, 1.0, 1e3, "1698765432000", None]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)
timestamps = mostly(valid_timestamps, invalid_timestamps)

extra_fields = st.dictionaries(
    st.text(max_size=8).filter(lambda k: k not in FIELDS), json_scalars, max_size=2
)


@st.composite
def payload_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """An object body: each field mostly valid, sometimes broken or missing; extras ignored."""
    body: dict[str, Any] = draw(extra_fields)
    fields = {"encryptedBlob": blobs, "iv": ivs, "timestamp": timestamps, "checksum": checksums}
    for name, strategy in fields.items():
        if not 50 <= draw(st.integers(0, 99)) < 54:
            body[name] = draw(strategy)
    return body


non_object_bodies = st.one_of(json_scalars, st.lists(json_scalars, max_size=3))
bodies = st.integers(0, 99).flatmap(
    lambda k: non_object_bodies if 45 <= k < 55 else payload_bodies()
)

valid_payloads = st.fixed_dictionaries(
    {
        "encryptedBlob": valid_blobs,
        "iv": valid_ivs,
        "timestamp": valid_timestamps,
        "checksum": valid_checksums,
    }
)


# --- Property 0: the blob rule alone, without HTTP ----------------------------------------


@settings(max_examples=3000, deadline=None)
@given(
    blob=st.one_of(
        valid_blobs,
        mutated_blobs(),
        st.text(alphabet=B64_ALPHABET[::5] + "=", max_size=12),
        st.text(max_size=12),
    )
)
@example(blob="")
@example(blob="====")
@example(blob="A===")
@example(blob="AB==")
@example(blob="AAB=")
@example(blob="AA=A")
def test_the_blob_rule_gives_the_oracle_s_size(blob: str) -> None:
    """service.payload's shape check of a blob (no decoding) gives exactly the oracle's
    decoded size, or None where the oracle refuses: thousands of cases without HTTP."""
    from service.payload import decoded_blob_size

    assert decoded_blob_size(blob) == oracle_blob_size(blob)


# --- Property 1: the service answers what the oracle says ----------------------------------


@PROPERTY_SETTINGS
@given(body=bodies, ensure_ascii=st.booleans())
@example(body=valid_payload(), ensure_ascii=True)
@example(body=valid_payload(encryptedBlob="QR=="), ensure_ascii=True)
@example(body=valid_payload(iv="MTIzNDU2Nzg5MGF\n"), ensure_ascii=True)
@example(body=valid_payload(iv="MTIzNDU2Nzg5MGFi\n"), ensure_ascii=True)
@example(body=valid_payload(checksum="a" * 64 + "\n"), ensure_ascii=True)
@example(body=valid_payload(checksum="ABCDEF" * 10 + "ABCD"), ensure_ascii=True)
@example(body=valid_payload(encryptedBlob="-_8="), ensure_ascii=True)
@example(body=valid_payload(encryptedBlob="QUJD\nRUZH"), ensure_ascii=True)
@example(body=valid_payload(iv="MTIzNDU2Nzg5MGF\u0661"), ensure_ascii=False)
@example(body=valid_payload(timestamp=True), ensure_ascii=True)
@example(body=valid_payload(timestamp=2**63), ensure_ascii=True)
@example(body=valid_payload(timestamp=2**64), ensure_ascii=True)
def test_put_status_is_what_the_rules_say(
    client: TestClient, db: psycopg.Connection, body: object, ensure_ascii: bool
) -> None:
    """The service answers a PUT with exactly the oracle's status (200, 400 or 413); a 4xx
    has the contract's body, a 400 names exactly the broken fields, and nothing is stored."""
    user_id = new_user_id()
    response = put_raw(client, user_id, encode(body, ensure_ascii=ensure_ascii))
    status = oracle_status(body)
    event(f"status {status}")
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json() == {"success": True}
    else:
        assert_error_shape(response, body)
        assert test_queries.raw_record(db, user_id=user_id) is None


@PROPERTY_SETTINGS
@given(
    raw=st.one_of(
        st.binary(max_size=64),
        st.text(alphabet='{}[]":,0123456789.eE-+ tfrualns\\\n', max_size=40).map(str.encode),
        valid_payloads.map(lambda p: encode(p)[:-1]),
    )
)
@example(raw=b"")
@example(raw=b"{")
@example(raw=b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[")
@example(raw=b'{"encryptedBlob": "QQ==", "iv": NaN}')
@example(raw=b"\xff\xfe{\x00}\x00")
def test_put_with_arbitrary_bytes_is_answered_like_the_rules_say(
    client: TestClient, raw: bytes
) -> None:
    """Whatever bytes arrive as a JSON body, the status is the oracle's (malformed JSON and
    non-object bodies are a 400 with the contract's shape, never a 500)."""
    response = put_raw(client, new_user_id(), raw)
    assert response.status_code == oracle_status_of_bytes(raw), response.text
    if response.status_code != 200:
        assert response.json()["error"] in {"Validation error", TOO_LARGE["error"]}


# --- Property 2: the app's rules and the CHECK constraints agree ---------------------------


def raw_insert(db: psycopg.Connection, row: dict[str, Any]) -> None:
    test_queries.insert_raw_record(db, user_id=new_user_id(), **row)


def as_row(payload: dict[str, Any]) -> dict[str, Any]:
    size = oracle_blob_size(payload["encryptedBlob"])
    assert size is not None
    return {
        "encrypted_blob": payload["encryptedBlob"],
        "iv": payload["iv"],
        "timestamp": payload["timestamp"],
        "checksum": payload["checksum"],
        "blob_size": size,
    }


@PROPERTY_SETTINGS
@given(payload=valid_payloads)
@example(payload=valid_payload(timestamp=MAX_TIMESTAMP))
@example(payload=valid_payload(timestamp=1, iv="+/" * 8, checksum="f" * 64))
def test_postgresql_accepts_every_payload_the_service_accepts(
    db: psycopg.Connection, payload: dict[str, Any]
) -> None:
    """Whatever the rules accept, a raw INSERT (bypassing the service) accepts too."""
    assert oracle_status(payload) == 200
    raw_insert(db, as_row(payload))


def _padded_past(value: str, width: int) -> bool:
    """VARCHAR(n) silently drops excess characters when they are all spaces (SQL standard)."""
    return len(value) > width and value[width:].strip(" ") == ""


COLUMN_WIDTH = {"iv": 16, "checksum": 64}


@st.composite
def rows_the_rules_reject(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid row with exactly one of iv, checksum, blob_size or timestamp broken."""
    row = as_row(draw(valid_payloads))
    column = draw(st.sampled_from(["iv", "checksum", "blob_size", "timestamp"]))
    if column == "iv":
        value = draw(invalid_iv_strings.filter(lambda s: not oracle_iv_ok(s)))
    elif column == "checksum":
        value = draw(invalid_checksum_strings.filter(lambda s: not oracle_checksum_ok(s)))
    elif column == "blob_size":
        value = draw(
            st.one_of(
                st.sampled_from([0, -1, MAX_BLOB_BYTES + 1, 2**31]),
                st.integers(min_value=-(2**31), max_value=0),
                st.integers(min_value=MAX_BLOB_BYTES + 1, max_value=2**40),
            )
        )
    else:
        value = draw(invalid_timestamps.filter(lambda t: type(t) is int))
    if isinstance(value, str):
        # PostgreSQL text cannot hold NUL at all: psycopg refuses it before the server sees it.
        assume("\x00" not in value)
    row[column] = value
    return row, column


def expected_refusal(column: str, value: object) -> type[Exception]:
    """The CHECK refuses a broken value that fits the column; the column type refuses an
    INTEGER/BIGINT overflow before any CHECK runs. (iv and checksum are TEXT since migration
    005, so the CHECK sees every string whole.)"""
    if isinstance(value, str):
        return psycopg.errors.CheckViolation
    limit = 2**31 if column == "blob_size" else 2**63
    assert isinstance(value, int)
    if not -limit <= value < limit:
        return psycopg.errors.NumericValueOutOfRange
    return psycopg.errors.CheckViolation


@PROPERTY_SETTINGS
@given(case=rows_the_rules_reject())
@example(case=(as_row(valid_payload(iv="MTIzNDU2Nzg5MGF\n")), "iv"))
@example(case=(as_row(valid_payload(iv="MTIzNDU2Nzg5MGFi\n")), "iv"))
@example(case=(as_row(valid_payload(checksum="a" * 63 + "\n")), "checksum"))
@example(case=(as_row(valid_payload(checksum="A" * 64)), "checksum"))
@example(case=(as_row(valid_payload(iv="MTIzNDU2Nzg5MGF\u0661")), "iv"))
@example(case=({**as_row(valid_payload()), "blob_size": MAX_BLOB_BYTES + 1}, "blob_size"))
@example(case=({**as_row(valid_payload()), "blob_size": 0}, "blob_size"))
@example(case=(as_row(valid_payload(timestamp=0)), "timestamp"))
@example(case=(as_row(valid_payload(timestamp=2**63)), "timestamp"))
def test_postgresql_refuses_what_the_rules_refuse(
    db: psycopg.Connection, case: tuple[dict[str, Any], str]
) -> None:
    """Whatever the rules refuse on iv, checksum, size or timestamp, a raw INSERT refuses too:
    the CHECK constraints raise CheckViolation (or the column type refuses a value that does
    not fit it, which is a refusal all the same)."""
    row, column = case
    with pytest.raises(expected_refusal(column, row[column])):
        raw_insert(db, row)


@pytest.mark.parametrize(
    ("column", "value"),
    [("iv", "MTIzNDU2Nzg5MGFi "), ("checksum", "a" * 64 + "  ")],
    ids=["iv", "checksum"],
)
def test_postgresql_refuses_values_with_trailing_spaces(
    db: psycopg.Connection, column: str, value: str
) -> None:
    """The rules refuse a valid iv/checksum followed by spaces; so does PostgreSQL, since
    migration 005 made the columns TEXT (VARCHAR(n) dropped the spaces before the CHECK)."""
    assert oracle_status(valid_payload(**{column: value})) == 400
    with pytest.raises(psycopg.errors.CheckViolation):
        raw_insert(db, {**as_row(valid_payload()), column: value})


# --- Property 3: what is accepted comes back as it was sent --------------------------------


@PROPERTY_SETTINGS
@given(payloads=st.lists(valid_payloads, min_size=1, max_size=3))
@example(payloads=[valid_payload(timestamp=MAX_TIMESTAMP), valid_payload(timestamp=1)])
def test_accepted_payloads_come_back_byte_identical(
    client: TestClient, db: psycopg.Connection, payloads: list[dict[str, Any]]
) -> None:
    """Every accepted payload comes back from GET with all four fields identical (timestamp a
    JSON integer); the row's blob_size is the decoded length; a replacement keeps created_at."""
    user_id = new_user_id()
    created_at = None
    for payload in payloads:
        response = put_raw(client, user_id, encode(payload))
        assert response.status_code == 200, response.text
        got = client.get(f"/api/sync/{user_id}")
        assert got.status_code == 200
        assert got.json() == payload
        assert type(got.json()["timestamp"]) is int
        row = test_queries.raw_record(db, user_id=user_id)
        assert row[1:5] == (
            payload["encryptedBlob"],
            payload["iv"],
            payload["timestamp"],
            payload["checksum"],
        )
        assert row[7] == len(base64.b64decode(payload["encryptedBlob"]))
        created_at = created_at or row[5]
        assert row[5] == created_at


# --- Property 4: explicit edges ------------------------------------------------------------

EDGES: list[tuple[str, object, int]] = [
    # padding
    ("blob_one_byte", valid_payload(encryptedBlob="QQ=="), 200),
    ("blob_two_bytes", valid_payload(encryptedBlob="QUI="), 200),
    ("blob_three_bytes", valid_payload(encryptedBlob="QUJD"), 200),
    ("blob_missing_one_pad", valid_payload(encryptedBlob="QQ="), 400),
    ("blob_missing_all_pads", valid_payload(encryptedBlob="QQ"), 400),
    ("blob_extra_pad", valid_payload(encryptedBlob="QQ==="), 400),
    ("blob_extra_pad_group", valid_payload(encryptedBlob="QUJD===="), 400),
    ("blob_padding_in_the_middle", valid_payload(encryptedBlob="QQ==QQ=="), 400),
    ("blob_only_padding", valid_payload(encryptedBlob="===="), 400),
    ("blob_nonzero_padding_bits_1", valid_payload(encryptedBlob="QR=="), 400),
    ("blob_nonzero_padding_bits_2", valid_payload(encryptedBlob="QUJ="), 400),
    # whitespace
    ("blob_trailing_newline", valid_payload(encryptedBlob="QUJD\n"), 400),
    ("blob_inner_space", valid_payload(encryptedBlob="QU JD"), 400),
    ("blob_mime_line_break", valid_payload(encryptedBlob="QUJD\r\nRUZH"), 400),
    ("blob_line_break_len_multiple_of_4", valid_payload(encryptedBlob="QUJ\nRUZH"), 400),
    ("blob_leading_space", valid_payload(encryptedBlob=" QUJD"), 400),
    # alphabet
    ("blob_standard_alphabet", valid_payload(encryptedBlob="+/8="), 200),
    ("blob_urlsafe_alphabet", valid_payload(encryptedBlob="-_8="), 400),
    ("blob_non_ascii", valid_payload(encryptedBlob="QUJé"), 400),
    ("blob_fullwidth_letters", valid_payload(encryptedBlob="\uff31\uff35\uff2a\uff24"), 400),
    ("blob_arabic_digit", valid_payload(encryptedBlob="QUJ\u0663"), 400),
    ("blob_empty", valid_payload(encryptedBlob=""), 400),
    ("blob_null", valid_payload(encryptedBlob=None), 400),
    ("blob_number", valid_payload(encryptedBlob=1234), 400),
    ("blob_list", valid_payload(encryptedBlob=["QUJD"]), 400),
    # iv
    ("iv_valid_symbols", valid_payload(iv="+/+/+/+/+/+/+/+/"), 200),
    ("iv_trailing_newline_17", valid_payload(iv="MTIzNDU2Nzg5MGFi\n"), 400),
    ("iv_trailing_newline_16", valid_payload(iv="MTIzNDU2Nzg5MGF\n"), 400),
    ("iv_trailing_space", valid_payload(iv="MTIzNDU2Nzg5MGFi "), 400),
    ("iv_15_chars", valid_payload(iv="MTIzNDU2Nzg5MGF"), 400),
    ("iv_17_chars", valid_payload(iv="MTIzNDU2Nzg5MGFiQ"), 400),
    ("iv_padding_char", valid_payload(iv="MTIzNDU2Nzg5MGF="), 400),
    ("iv_urlsafe_char", valid_payload(iv="MTIzNDU2Nzg5MGF-"), 400),
    ("iv_unicode_digit", valid_payload(iv="MTIzNDU2Nzg5MGF\u0661"), 400),
    ("iv_null", valid_payload(iv=None), 400),
    # checksum
    ("checksum_uppercase_hex", valid_payload(checksum="ABC123DEF456" * 5 + "ABCD"), 400),
    ("checksum_63_chars", valid_payload(checksum="a" * 63), 400),
    ("checksum_65_chars", valid_payload(checksum="a" * 65), 400),
    ("checksum_trailing_newline_65", valid_payload(checksum="a" * 64 + "\n"), 400),
    ("checksum_trailing_newline_64", valid_payload(checksum="a" * 63 + "\n"), 400),
    ("checksum_non_hex", valid_payload(checksum="g" * 64), 400),
    ("checksum_number", valid_payload(checksum=0), 400),
    # timestamp
    ("timestamp_1", valid_payload(timestamp=1), 200),
    ("timestamp_max_bigint", valid_payload(timestamp=2**63 - 1), 200),
    ("timestamp_past_bigint", valid_payload(timestamp=2**63), 400),
    ("timestamp_2_64", valid_payload(timestamp=2**64), 400),
    ("timestamp_0", valid_payload(timestamp=0), 400),
    ("timestamp_negative", valid_payload(timestamp=-1), 400),
    ("timestamp_true", valid_payload(timestamp=True), 400),
    ("timestamp_false", valid_payload(timestamp=False), 400),
    ("timestamp_float_1_0", valid_payload(timestamp=1.0), 400),
    ("timestamp_float_1e3", valid_payload(timestamp=1e3), 400),
    ("timestamp_string", valid_payload(timestamp="1698765432000"), 400),
    ("timestamp_null", valid_payload(timestamp=None), 400),
    # body
    ("unknown_fields_ignored", {**valid_payload(), "userId": "x", "extra": [1]}, 200),
    ("missing_iv", {k: v for k, v in valid_payload().items() if k != "iv"}, 400),
    ("empty_object", {}, 400),
    ("array_body", [valid_payload()], 400),
    ("string_body", "hello", 400),
    ("null_body", None, 400),
]


@pytest.mark.parametrize(("body", "status"), [e[1:] for e in EDGES], ids=[e[0] for e in EDGES])
def test_put_edge_cases(
    client: TestClient, db: psycopg.Connection, body: object, status: int
) -> None:
    """Hand-picked edges of docs/protocol.md get the status written beside them (and the oracle
    agrees, which keeps the oracle honest); accepted ones come back unchanged."""
    assert oracle_status(body) == status
    user_id = new_user_id()
    response = put_raw(client, user_id, encode(body))
    assert response.status_code == status, response.text
    if status == 200:
        assert client.get(f"/api/sync/{user_id}").json() == {f: body[f] for f in FIELDS}  # type: ignore[index]
    else:
        assert_error_shape(response, body)
        assert test_queries.raw_record(db, user_id=user_id) is None


def _blob_of(size: int) -> str:
    return b64(os.urandom(size))


def _with_newline(blob: str) -> str:
    return blob[:1000] + "\n" + blob[1000:]


LARGE: list[tuple[str, int, Callable[[str], dict[str, object]], int]] = [
    ("exactly_1MB_is_accepted", MAX_BLOB_BYTES, lambda b: valid_payload(encryptedBlob=b), 200),
    ("one_byte_over_is_413", MAX_BLOB_BYTES + 1, lambda b: valid_payload(encryptedBlob=b), 413),
    (
        "one_byte_over_with_broken_fields_is_still_413",
        MAX_BLOB_BYTES + 1,
        lambda b: {"encryptedBlob": b, "timestamp": True, "checksum": "X"},
        413,
    ),
    (
        "one_byte_over_but_not_canonical_is_400",
        MAX_BLOB_BYTES + 1,
        lambda b: valid_payload(encryptedBlob=_with_newline(b)),
        400,
    ),
    (
        "exactly_1MB_without_padding_is_400",
        MAX_BLOB_BYTES,
        lambda b: valid_payload(encryptedBlob=b.rstrip("=")),
        400,
    ),
]


@pytest.mark.parametrize(
    ("size", "build", "status"), [e[1:] for e in LARGE], ids=[e[0] for e in LARGE]
)
def test_put_at_the_1mb_edge(
    client: TestClient,
    db: psycopg.Connection,
    size: int,
    build: Callable[[str], dict[str, object]],
    status: int,
) -> None:
    """A decoded blob of 1,000,000 bytes is stored and comes back whole; one byte more is a
    413 whatever else is wrong, unless the blob is not canonical base64 (then 400)."""
    body = build(_blob_of(size))
    assert oracle_status(body) == status
    user_id = new_user_id()
    response = put_raw(client, user_id, encode(body))
    assert response.status_code == status, response.text[:500]
    if status == 200:
        assert client.get(f"/api/sync/{user_id}").json() == body
        assert test_queries.raw_record(db, user_id=user_id)[7] == size
    else:
        assert_error_shape(response, body)
        assert test_queries.raw_record(db, user_id=user_id) is None
