"""Optional bearer tokens (service/auth.py): real tokens made by PyJWT, real keys made by
`cryptography`, the app on a real PostgreSQL database."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from starlette.testclient import TestClient

from service.app import create_app
from service.auth import MAX_TOKEN_CHARS, build_verifier
from service.config import ConfigError, Settings
from service.logs import ACCESS_LOGGER, user_hash
from service.payload import MAX_BLOB_BYTES, MAX_BODY_BYTES
from tests.asgi import call_app, put_scope, status_of
from tests.conftest import new_user_id
from tests.processes import service_process
from tests.test_contract import BROWSER_ORIGIN, make_payload, padded_body, stored

SECRET = "logikids-backend-jwt-secret-for-tests-0123456789"  # 48 bytes, as JWT_SECRET
MISSING = {"error": "No authorization token provided"}
BAD_FORMAT = {"error": "Invalid authorization format. Use: Bearer <token>"}
INVALID = {"error": "Invalid authentication token"}
EXPIRED = {"error": "Token expired. Please login again."}
FORBIDDEN = {"error": "Access denied: token is for another user"}
LIMITED = {"error": "Too many sync requests. Please try again later."}


def claims(user_id: object, *, lifetime: int = 3600, **extra: object) -> dict[str, object]:
    """What the Logikids backend signs: userId, inviteCode, iat, exp (one hour); an
    `extra` value of None removes that claim."""
    now = int(time.time())
    payload: dict[str, object] = {
        "userId": str(user_id),
        "inviteCode": "ABCD-1234",
        "iat": now,
        "exp": now + lifetime,
    }
    payload.update(extra)
    return {k: v for k, v in payload.items() if v is not None}


def hs256(user_id: object, *, secret: str = SECRET, **extra: object) -> str:
    return jwt.encode(claims(user_id, **extra), secret, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(payload: dict[str, object], header: dict[str, object]) -> str:
    """A token built by hand, with an empty signature (`alg: none`)."""
    parts = [json.dumps(header).encode(), json.dumps(payload).encode()]
    return ".".join(b64url(p) for p in parts) + "."


def hmac_token(payload: dict[str, object], secret: bytes, alg: str = "HS256") -> str:
    """An HMAC token signed by hand (PyJWT refuses to sign with a PEM key as secret)."""
    header = {"alg": alg, "typ": "JWT"}
    signing_input = ".".join(b64url(json.dumps(p).encode()) for p in (header, payload))
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[alg]
    signature = hmac.new(secret, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url(signature)}"


def public_pem(private_key: Any) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_key(tmp_path: Path, private_key: Any, name: str = "issuer.pem") -> str:
    path = tmp_path / name
    path.write_bytes(public_pem(private_key))
    return str(path)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def start(settings: Settings) -> Iterator[Callable[..., TestClient]]:
    """Start the app on the test's database with `changes` to its settings."""
    with ExitStack() as stack:

        def make(**changes: object) -> TestClient:
            app = create_app(settings.with_changes(**changes))
            return stack.enter_context(TestClient(app, raise_server_exceptions=False))

        yield make


@pytest.fixture
def client(start) -> TestClient:
    """The app requiring HS256 tokens signed with SECRET, as the Logikids backend's."""
    return start(auth_jwt_secret=SECRET)


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> Callable[[], list[logging.LogRecord]]:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    return lambda: [r for r in caplog.records if r.name == ACCESS_LOGGER]


def assert_refused(response, status: int, body: dict[str, str], challenge: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == body
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["www-authenticate"] == challenge


# --- valid tokens -----------------------------------------------------------------------


def test_a_valid_token_for_the_path_s_user_opens_every_endpoint(client, db):
    user_id = new_user_id()
    auth = bearer(hs256(user_id))

    put = client.put(f"/api/sync/{user_id}", json=make_payload(), headers=auth)
    got = client.get(f"/api/sync/{user_id}", headers=auth)
    verify = client.post(f"/api/sync/{user_id}/verify", headers=auth)
    erased = client.delete(f"/api/sync/{user_id}", headers=auth)

    assert [r.status_code for r in (put, got, verify, erased)] == [200] * 4
    assert got.json() == make_payload()
    assert verify.json() == {"exists": True}
    assert stored(db, user_id) is None


def test_the_user_claim_and_the_path_are_compared_as_uuids_in_either_case(client):
    user_id = new_user_id()
    upper_path = client.put(
        f"/api/sync/{user_id.upper()}", json=make_payload(), headers=bearer(hs256(user_id))
    )
    upper_claim = client.get(f"/api/sync/{user_id}", headers=bearer(hs256(user_id.upper())))
    assert (upper_path.status_code, upper_claim.status_code) == (200, 200)


def test_two_devices_of_one_user_each_with_its_own_token_both_sync(client):
    user_id = new_user_id()
    laptop = bearer(hs256(user_id, inviteCode="LAPTOP", iat=int(time.time()) - 600))
    tablet = bearer(hs256(user_id, inviteCode="TABLET"))
    assert laptop != tablet

    first = client.put(f"/api/sync/{user_id}", json=make_payload(b"laptop"), headers=laptop)
    seen = client.get(f"/api/sync/{user_id}", headers=tablet)
    second = client.put(
        f"/api/sync/{user_id}",
        json=make_payload(b"tablet"),
        headers={**tablet, "If-Match": seen.headers["etag"]},
    )
    back = client.get(f"/api/sync/{user_id}", headers=laptop)

    assert (first.status_code, seen.status_code, second.status_code) == (200, 200, 200)
    assert back.json() == make_payload(b"tablet")


def test_a_put_of_the_largest_body_with_a_valid_token_is_stored(client, db):
    user_id = new_user_id()
    payload = make_payload(b"\x5a" * MAX_BLOB_BYTES)

    response = client.put(
        f"/api/sync/{user_id}",
        content=padded_body(payload, MAX_BODY_BYTES),
        headers={"Content-Type": "application/json", **bearer(hs256(user_id))},
    )

    assert response.status_code == 200
    assert stored(db, user_id)["blob_size"] == MAX_BLOB_BYTES


def test_an_expiry_within_the_leeway_is_still_accepted(client):
    user_id = new_user_id()
    token = hs256(user_id, exp=int(time.time()) - 10)  # leeway: 30 s by default
    assert client.post(f"/api/sync/{user_id}/verify", headers=bearer(token)).status_code == 200


# --- the Authorization header ------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_the_scheme_name_is_case_insensitive(client, scheme):
    """RFC 7235 §2.1: auth-scheme is a case-insensitive token."""
    user_id = new_user_id()
    headers = {"Authorization": f"{scheme} {hs256(user_id)}"}
    assert client.post(f"/api/sync/{user_id}/verify", headers=headers).status_code == 200


@pytest.mark.parametrize("spaces", ["  ", "     "])
def test_several_spaces_between_scheme_and_token_are_accepted(client, spaces):
    """RFC 7235 §2.1 (credentials = auth-scheme 1*SP token68); surrounding whitespace
    is not part of the field value (RFC 9110 §5.5)."""
    user_id = new_user_id()
    headers = {"Authorization": f"  Bearer{spaces}{hs256(user_id)}  "}
    assert client.post(f"/api/sync/{user_id}/verify", headers=headers).status_code == 200


def test_no_authorization_header_is_401_with_a_bare_challenge(client, db):
    user_id = new_user_id()
    response = client.put(f"/api/sync/{user_id}", json=make_payload())
    assert_refused(response, 401, MISSING, "Bearer")
    assert stored(db, user_id) is None


def test_an_empty_authorization_header_counts_as_missing(client):
    response = client.get(f"/api/sync/{new_user_id()}", headers={"Authorization": ""})
    assert_refused(response, 401, MISSING, "Bearer")


@pytest.mark.parametrize(
    "value",
    [
        "Basic dXNlcjpwYXNz",
        "Token abc.def.ghi",
        "Bearer",
        "Bearer ",
        "Bearertoken",
        "Bearer\tabc.def.ghi",
        "Bearer abc.def.ghi extra",
        "abc.def.ghi",
    ],
)
def test_an_authorization_that_is_not_bearer_and_one_token_is_401_invalid_format(client, value):
    response = client.get(f"/api/sync/{new_user_id()}", headers={"Authorization": value})
    assert_refused(response, 401, BAD_FORMAT, "Bearer")


def test_two_authorization_headers_are_refused_as_invalid_format(client):
    user_id = new_user_id()
    token = hs256(user_id)
    response = client.get(
        f"/api/sync/{user_id}",
        headers=[("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")],
    )
    assert_refused(response, 401, BAD_FORMAT, "Bearer")


@pytest.mark.parametrize("size", [10 * 1024, 64 * 1024])
def test_a_huge_authorization_header_is_a_clean_401(client, size):
    user_id = new_user_id()
    token = hs256(user_id)
    padded = token + "A" * (size - len(token))  # the real token, then garbage
    assert len(padded) > MAX_TOKEN_CHARS
    response = client.get(f"/api/sync/{user_id}", headers=bearer(padded))
    assert_refused(response, 401, INVALID, 'Bearer error="invalid_token"')


@pytest.mark.parametrize(
    "token",
    [b"abc", b"a.b.c", b"....", b"eyJhbGciOiJIUzI1NiJ9.e30.", b"\xe9t\xe9.x.y", b"%00.%00.%00"],
)
def test_malformed_tokens_are_401_invalid(client, token):
    headers = {"Authorization": b"Bearer " + token}  # bytes: latin-1 passes as it is
    response = client.get(f"/api/sync/{new_user_id()}", headers=headers)
    assert_refused(response, 401, INVALID, 'Bearer error="invalid_token"')


# --- refused tokens -----------------------------------------------------------------------


def test_an_expired_token_is_401_token_expired(client):
    user_id = new_user_id()
    token = hs256(user_id, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
    response = client.get(f"/api/sync/{user_id}", headers=bearer(token))
    assert_refused(
        response,
        401,
        EXPIRED,
        'Bearer error="invalid_token", error_description="The access token expired"',
    )


def test_an_expired_token_with_a_wrong_signature_is_invalid_not_expired(client):
    user_id = new_user_id()
    forged = hs256(user_id, exp=int(time.time()) - 3600, secret="x" * 48)
    response = client.get(f"/api/sync/{user_id}", headers=bearer(forged))
    assert response.json() == INVALID


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_a_token_not_yet_valid_beyond_the_leeway_is_401_invalid(client, claim):
    user_id = new_user_id()
    future = int(time.time()) + 600
    token = hs256(user_id, **{claim: future, "exp": future + 3600})
    response = client.get(f"/api/sync/{user_id}", headers=bearer(token))
    assert_refused(response, 401, INVALID, 'Bearer error="invalid_token"')


def test_a_token_signed_with_another_secret_is_401_invalid(client):
    user_id = new_user_id()
    token = hs256(user_id, secret="another-secret-of-another-backend-0123456789")
    response = client.put(f"/api/sync/{user_id}", json=make_payload(), headers=bearer(token))
    assert_refused(response, 401, INVALID, 'Bearer error="invalid_token"')


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_an_unsigned_alg_none_token_is_refused(client, alg):
    user_id = new_user_id()
    token = unsigned_token(claims(user_id), {"alg": alg, "typ": "JWT"})
    response = client.delete(f"/api/sync/{user_id}", headers=bearer(token))
    assert_refused(response, 401, INVALID, 'Bearer error="invalid_token"')


def test_a_token_of_another_hmac_algorithm_with_the_right_secret_is_refused(client):
    user_id = new_user_id()
    token = hmac_token(claims(user_id), SECRET.encode(), alg="HS512")
    response = client.get(f"/api/sync/{user_id}", headers=bearer(token))
    assert_refused(response, 401, INVALID, 'Bearer error="invalid_token"')


def test_a_token_for_an_audience_is_refused_while_no_audience_is_configured(client):
    """RFC 7519 §4.1.3: a service that is not in `aud` must refuse the token."""
    user_id = new_user_id()
    token = hs256(user_id, aud="another-api")
    assert client.get(f"/api/sync/{user_id}", headers=bearer(token)).json() == INVALID


def test_a_token_without_exp_is_refused(client):
    user_id = new_user_id()
    response = client.get(f"/api/sync/{user_id}", headers=bearer(hs256(user_id, exp=None)))
    assert response.json() == INVALID


@pytest.mark.parametrize("value", [None, 42, ["x"], "", "not-a-uuid"])
def test_a_token_without_a_usable_user_claim_is_401_invalid(client, value):
    user_id = new_user_id()
    token = jwt.encode({**claims(user_id), "userId": value}, SECRET, algorithm="HS256")
    if value is None:
        token = hs256(user_id, userId=None)
    response = client.get(f"/api/sync/{user_id}", headers=bearer(token))
    assert_refused(response, 401, INVALID, 'Bearer error="invalid_token"')


def test_another_user_s_token_is_403_and_changes_nothing(client, db):
    owner, intruder = new_user_id(), new_user_id()
    client.put(f"/api/sync/{owner}", json=make_payload(), headers=bearer(hs256(owner)))
    theirs = bearer(hs256(intruder))

    responses = [
        client.get(f"/api/sync/{owner}", headers=theirs),
        client.put(f"/api/sync/{owner}", json=make_payload(b"overwritten"), headers=theirs),
        client.post(f"/api/sync/{owner}/verify", headers=theirs),
        client.delete(f"/api/sync/{owner}", headers=theirs),
    ]

    for response in responses:
        assert_refused(response, 403, FORBIDDEN, 'Bearer error="insufficient_scope"')
    assert stored(db, owner)["encrypted_blob"] == make_payload()["encryptedBlob"]


def test_an_invalid_user_id_is_still_400_before_the_token_is_looked_at(client):
    response = client.get("/api/sync/not-a-uuid")
    assert response.status_code == 400
    assert "www-authenticate" not in response.headers


# --- before anything costly; rate limits -------------------------------------------------


def test_a_refused_put_is_answered_before_its_body_is_read(client):
    """The 401 comes before the handler asks for a single body chunk."""
    scope = put_scope(client, f"/api/sync/{new_user_id()}")
    asked = 0

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        return {"type": "http.request", "body": b"{}", "more_body": True}

    sent = call_app(client, scope, receive)
    assert status_of(sent) == 401
    assert asked == 0


def test_refused_requests_cost_the_path_s_user_nothing_and_slow_the_client_down(start):
    limited = start(auth_jwt_secret=SECRET, user_limit_per_window=3)
    victim = new_user_id()
    forged = bearer(hs256(victim, secret="an-attacker-guessing-the-secret-0123456789"))

    refusals = [limited.get(f"/api/sync/{victim}", headers=forged) for _ in range(4)]

    # Counted against the client's address, with the per-user limit as no per-IP one is set.
    assert [r.status_code for r in refusals] == [401, 401, 401, 429]
    assert [r.headers["RateLimit-Remaining"] for r in refusals[:3]] == ["2", "1", "0"]
    assert refusals[3].json() == LIMITED
    own = bearer(hs256(victim))
    admitted = [
        limited.put(f"/api/sync/{victim}", json=make_payload(), headers=own),
        limited.get(f"/api/sync/{victim}", headers=own),
        limited.post(f"/api/sync/{victim}/verify", headers=own),
    ]
    assert [r.status_code for r in admitted] == [200, 200, 200]
    assert [r.headers["RateLimit-Remaining"] for r in admitted] == ["2", "1", "0"]


def test_a_refusal_is_counted_against_the_per_ip_limit_when_one_is_set(start):
    limited = start(auth_jwt_secret=SECRET, user_limit_per_window=100, ip_limit_per_window=2)
    user_id = new_user_id()
    statuses = [limited.get(f"/api/sync/{user_id}").status_code for _ in range(3)]
    assert statuses == [401, 401, 429]


# --- what stays open, what stays the same --------------------------------------------------


def test_health_liveness_and_the_openapi_document_need_no_token(client):
    for path in ("/health", "/health/live", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_without_auth_settings_tokens_are_neither_needed_nor_checked(start, access):
    open_client = start()
    user_id = new_user_id()
    plain = open_client.put(f"/api/sync/{user_id}", json=make_payload())
    garbage = open_client.get(f"/api/sync/{user_id}", headers={"Authorization": "Bearer x"})
    other = open_client.get(f"/api/sync/{user_id}", headers=bearer(hs256(new_user_id())))
    assert [r.status_code for r in (plain, garbage, other)] == [200, 200, 200]
    assert all("auth=" not in line.getMessage() for line in access())
    assert all(not hasattr(line, "auth") for line in access())


def test_a_refusal_carries_the_cors_headers_so_the_browser_app_can_read_it(client):
    response = client.get(f"/api/sync/{new_user_id()}", headers={"Origin": BROWSER_ORIGIN})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] in ("*", BROWSER_ORIGIN)
    exposed = response.headers["access-control-expose-headers"].lower()
    assert "www-authenticate" in exposed


# --- the access line ----------------------------------------------------------------------


def test_the_access_line_names_the_outcome_and_never_the_token(client, access):
    user_id, other = new_user_id(), new_user_id()
    valid = hs256(user_id)
    expired = hs256(user_id, exp=int(time.time()) - 3600)
    forged = hs256(user_id, secret="x" * 48)
    theirs = hs256(other)
    path = f"/api/sync/{user_id}/verify"

    client.post(path, headers=bearer(valid))
    client.post(path)
    client.post(path, headers=bearer(forged))
    client.post(path, headers=bearer(expired))
    client.post(path, headers=bearer(theirs))
    client.post(path, headers={"Authorization": "Basic abc"})
    client.get("/health/live")

    lines = access()
    assert [(line.status, getattr(line, "auth", None)) for line in lines] == [
        (200, "ok"),
        (401, "missing"),
        (401, "invalid"),
        (401, "expired"),
        (403, "forbidden"),
        (401, "invalid"),
        (200, None),
    ]
    assert lines[0].getMessage().endswith(f"user={user_hash(user_id)} auth=ok")
    text = "\n".join(line.getMessage() + repr(vars(line)) for line in lines)
    for token in (valid, expired, forged, theirs):
        for part in token.split("."):
            assert part not in text
    assert user_id not in text


def test_a_served_process_logs_no_token_and_answers_a_10_kb_header_with_401(database_url, tmp_path):
    """Through uvicorn's HTTP parser and the JSON access line of a real process."""
    log_file = tmp_path / "service.log"
    user_id = new_user_id()
    token = hs256(user_id)
    with service_process(
        database_url,
        log_file=log_file,
        AUTH_JWT_SECRET=SECRET,
        LOG_LEVEL="INFO",
        LOG_FORMAT="json",
    ) as base:
        ok = httpx2.post(f"{base}/api/sync/{user_id}/verify", headers=bearer(token))
        big = httpx2.post(f"{base}/api/sync/{user_id}/verify", headers=bearer("A" * 10_240))
        missing = httpx2.post(f"{base}/api/sync/{user_id}/verify")
    assert (ok.status_code, big.status_code, missing.status_code) == (200, 401, 401)
    logs = log_file.read_text(encoding="utf-8")
    access_lines = [json.loads(line) for line in logs.splitlines() if '"service.access"' in line]
    outcomes = [(entry["status"], entry.get("auth")) for entry in access_lines]
    assert (200, "ok") in outcomes and (401, "invalid") in outcomes
    assert (401, "missing") in outcomes
    assert "Bearer tokens required on /api/sync: HS256" in logs
    for secret in (token, *token.split("."), SECRET, "A" * 64):
        assert secret not in logs


# --- public keys ----------------------------------------------------------------------------


def test_rs256_tokens_of_another_issuer_with_sub_audience_and_issuer(start, tmp_path, rsa_key):
    client = start(
        auth_jwt_public_key_file=write_key(tmp_path, rsa_key),
        auth_user_claim="sub",
        auth_jwt_audience="logikids-sync",
        auth_jwt_issuer="https://id.example",
    )
    user_id = new_user_id()

    def token(**extra: object) -> str:
        issued = {"sub": user_id, "aud": "logikids-sync", "iss": "https://id.example"}
        payload = claims(user_id, **{"userId": None, **issued, **extra})
        return jwt.encode(payload, rsa_key, algorithm="RS256")

    path = f"/api/sync/{user_id}/verify"
    assert client.post(path, headers=bearer(token())).status_code == 200
    for wrong in (
        {"aud": "another-api"},
        {"aud": None},
        {"iss": "https://evil.example"},
        {"iss": None},
        {"sub": None, "userId": user_id},
    ):
        response = client.post(path, headers=bearer(token(**wrong)))
        assert response.json() == INVALID, wrong


def test_key_confusion_an_hs256_token_keyed_with_the_public_pem_is_refused(
    start, tmp_path, rsa_key
):
    client = start(auth_jwt_public_key_file=write_key(tmp_path, rsa_key))
    user_id = new_user_id()
    confused = hmac_token(claims(user_id), public_pem(rsa_key))
    unsigned = unsigned_token(claims(user_id), {"alg": "none"})
    genuine = jwt.encode(claims(user_id), rsa_key, algorithm="RS256")

    assert client.get(f"/api/sync/{user_id}", headers=bearer(confused)).json() == INVALID
    assert client.get(f"/api/sync/{user_id}", headers=bearer(unsigned)).json() == INVALID
    assert client.post(f"/api/sync/{user_id}/verify", headers=bearer(genuine)).status_code == 200


def test_a_pinned_algorithm_refuses_the_key_s_other_algorithms(start, tmp_path, rsa_key):
    client = start(
        auth_jwt_public_key_file=write_key(tmp_path, rsa_key), auth_jwt_algorithm="PS256"
    )
    user_id = new_user_id()
    path = f"/api/sync/{user_id}/verify"
    pss = jwt.encode(claims(user_id), rsa_key, algorithm="PS256")
    pkcs1 = jwt.encode(claims(user_id), rsa_key, algorithm="RS256")
    assert client.post(path, headers=bearer(pss)).status_code == 200
    assert client.post(path, headers=bearer(pkcs1)).json() == INVALID


@pytest.mark.parametrize(
    ("make_key", "algorithm"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
        (ed25519.Ed25519PrivateKey.generate, "EdDSA"),
    ],
)
def test_ec_and_eddsa_keys_verify_their_own_algorithm(start, tmp_path, make_key, algorithm):
    key = make_key()
    client = start(auth_jwt_public_key_file=write_key(tmp_path, key))
    user_id = new_user_id()
    token = jwt.encode(claims(user_id), key, algorithm=algorithm)
    other_key = jwt.encode(claims(user_id), make_key(), algorithm=algorithm)
    put = client.put(f"/api/sync/{user_id}", json=make_payload(), headers=bearer(token))
    assert put.status_code == 200
    assert client.get(f"/api/sync/{user_id}", headers=bearer(other_key)).json() == INVALID


def test_a_certificate_file_is_read_for_its_public_key(start, tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer.example")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "issuer.crt"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    client = start(auth_jwt_public_key_file=str(path))
    user_id = new_user_id()
    token = jwt.encode(claims(user_id), key, algorithm="ES256")
    assert client.post(f"/api/sync/{user_id}/verify", headers=bearer(token)).status_code == 200


# --- configuration ------------------------------------------------------------------------

BASE_ENV = {"DATABASE_URL": "postgresql://localhost/logikids"}


def config_error(**env: str) -> str:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**BASE_ENV, **env})
    return str(raised.value)


def test_without_auth_variables_auth_is_off():
    settings = Settings.from_env(BASE_ENV)
    assert build_verifier(settings) is None
    assert settings.cors_allow_headers == (
        "Content-Type",
        "Authorization",
        "If-Match",
        "If-None-Match",
    )


def test_the_auth_variables_are_read():
    settings = Settings.from_env(
        {
            **BASE_ENV,
            "AUTH_JWT_SECRET": SECRET,
            "AUTH_USER_CLAIM": "sub",
            "AUTH_JWT_AUDIENCE": "sync",
            "AUTH_JWT_ISSUER": "https://logikids.example",
            "AUTH_JWT_LEEWAY_SECONDS": "5",
            "CORS_ALLOW_HEADERS": "Content-Type, Authorization, X-Client-Version",
        }
    )
    verifier = build_verifier(settings)
    assert verifier is not None
    assert (verifier.algorithm, verifier.user_claim, verifier.leeway) == ("HS256", "sub", 5)
    assert (verifier.audience, verifier.issuer) == ("sync", "https://logikids.example")
    assert settings.cors_allow_headers == ("Content-Type", "Authorization", "X-Client-Version")
    assert SECRET not in repr(settings) and SECRET not in repr(verifier)


def test_a_secret_and_a_key_file_together_are_a_config_error(tmp_path, rsa_key):
    message = config_error(
        AUTH_JWT_SECRET=SECRET, AUTH_JWT_PUBLIC_KEY_FILE=write_key(tmp_path, rsa_key)
    )
    assert "AUTH_JWT_SECRET" in message and "AUTH_JWT_PUBLIC_KEY_FILE" in message
    assert SECRET not in message


@pytest.mark.parametrize("secret", ["", "   ", "tiny", "x" * 31])
def test_an_empty_or_short_secret_is_a_config_error_that_does_not_show_it(secret):
    message = config_error(AUTH_JWT_SECRET=secret)
    assert "AUTH_JWT_SECRET" in message
    if secret.strip():
        assert secret not in message


def test_a_longer_hmac_algorithm_needs_a_longer_secret():
    assert "HS512" in config_error(AUTH_JWT_SECRET=SECRET, AUTH_JWT_ALGORITHM="HS512")
    assert "AUTH_JWT_ALGORITHM" in config_error(AUTH_JWT_SECRET=SECRET, AUTH_JWT_ALGORITHM="RS256")
    assert "AUTH_JWT_ALGORITHM" in config_error(AUTH_JWT_SECRET=SECRET, AUTH_JWT_ALGORITHM="none")


def test_an_unreadable_or_wrong_key_file_is_a_config_error(tmp_path, rsa_key):
    missing = config_error(AUTH_JWT_PUBLIC_KEY_FILE=str(tmp_path / "nope.pem"))
    assert "AUTH_JWT_PUBLIC_KEY_FILE" in missing and "cannot be read" in missing
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    assert "PEM public key" in config_error(AUTH_JWT_PUBLIC_KEY_FILE=str(garbage))
    private = tmp_path / "private.pem"
    private.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert "private key" in config_error(AUTH_JWT_PUBLIC_KEY_FILE=str(private))
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert "1024-bit" in config_error(AUTH_JWT_PUBLIC_KEY_FILE=write_key(tmp_path, weak, "w.pem"))
    es = ec.generate_private_key(ec.SECP256R1())
    mismatch = config_error(
        AUTH_JWT_PUBLIC_KEY_FILE=write_key(tmp_path, es, "es.pem"), AUTH_JWT_ALGORITHM="RS256"
    )
    assert "AUTH_JWT_ALGORITHM" in mismatch and "ES256" in mismatch


def test_auth_options_without_a_secret_or_key_are_a_config_error():
    assert "authentication would be off" in config_error(AUTH_JWT_AUDIENCE="sync")
    assert "AUTH_JWT_PUBLIC_KEY_FILE" in config_error(AUTH_JWT_PUBLIC_KEY_FILE=" ")


@pytest.mark.parametrize("value", ["-1", "301", "soon"])
def test_the_leeway_is_a_small_number_of_seconds(value):
    assert "AUTH_JWT_LEEWAY_SECONDS" in config_error(
        AUTH_JWT_SECRET=SECRET, AUTH_JWT_LEEWAY_SECONDS=value
    )


def test_cors_allow_headers_must_be_header_names():
    assert "CORS_ALLOW_HEADERS" in config_error(CORS_ALLOW_HEADERS="Content Type, (x)")


def test_the_app_refuses_to_start_on_settings_it_cannot_verify_with(settings):
    app = create_app(settings.with_changes(auth_jwt_secret="short"))
    with pytest.raises(ConfigError), TestClient(app):
        pass


def test_a_user_id_claim_is_parsed_as_any_uuid_form_the_issuer_signs():
    verifier = build_verifier(
        Settings(database_url="postgresql://localhost/x", auth_jwt_secret=SECRET)
    )
    assert verifier is not None
    user = uuid.uuid4()
    token = hs256(str(user).upper())
    assert verifier.user_of([f"Bearer {token}"]) == user
