"""The HTTP contract of docs/protocol.md as an OpenAPI 3.1 document, served at /openapi.json.

The document is built here as data so that its constraints come from the same constants
as the rules in `service.payload`; `python -m service.openapi` writes the checked-in copy
(openapi.json at the project root) and `--check` tells whether that copy is current.
The tests hold the served document to the file and the running service to the document.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from service import __version__
from service.errors import (
    AccessDenied,
    AuthorizationFormatInvalid,
    PayloadTooLarge,
    RecordNotFound,
    ServiceUnavailable,
    TokenExpired,
    TokenInvalid,
    TokenMissing,
    UnsupportedMediaType,
    ValidationFailed,
)
from service.payload import MAX_BLOB_BYTES, MAX_TIMESTAMP
from service.ratelimit import RateLimitExceeded

DEFAULT_PATH = Path("openapi.json")  # `make openapi` runs in the checkout

Schema = dict[str, Any]

_HEX = "[0-9a-fA-F]"
USER_ID_PATTERN = f"^{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}$"
# Canonical base64 (what the client's `btoa` produces): whole quartets, `=` padding, and
# zero padding bits, so the character before `==` is one of AQgw and before `=` one of
# AEIMQUYcgkosw048. Decoding and re-encoding gives the same text exactly when this matches.
_B64 = "[A-Za-z0-9+/]"
BLOB_PATTERN = f"^(?:{_B64}{{4}})*(?:{_B64}[AQgw]==|{_B64}{{2}}[AEIMQUYcgkosw048]=)?$"
MAX_BLOB_CHARS = -(-MAX_BLOB_BYTES // 3) * 4  # 1,333,336: the base64 length of the largest blob
IV_PATTERN = "^[A-Za-z0-9+/]{16}$"
CHECKSUM_PATTERN = "^[a-f0-9]{64}$"
# RFC 9110 §8.8.3 / §13.1.1: "*" or a comma-separated list of entity tags, as parsed by
# service.conditional (empty list elements allowed, at least one tag).
_TAG = r'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"'
CONDITION_PATTERN = rf"^(?:[ \t]*\*[ \t]*|[ \t,]*{_TAG}(?:[ \t]*,[ \t,]*{_TAG})*[ \t,]*)$"
ETAG_PATTERN = '^"[0-9a-f]{32}"$'

PRECONDITION_FAILED = "Precondition failed"  # service.conditional.PreconditionFailed.message
METHOD_NOT_ALLOWED = "Method not allowed"  # service.app's message for Starlette's 405
NOT_FOUND = "Not found"  # service.app's message for Starlette's 404 (an unserved path)


def _ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def _error(*messages: str) -> Schema:
    """An error body whose `error` is one of `messages`."""
    error: Schema = {"const": messages[0]} if len(messages) == 1 else {"enum": list(messages)}
    return {
        "allOf": [_ref("schemas", "Error"), {"properties": {"error": error}}],
    }


def _json(
    description: str,
    schema: Schema,
    *,
    headers: dict[str, Schema] | None = None,
    links: Sequence[str] = (),
) -> Schema:
    """A JSON response with `schema` as its body, `headers`, and `links` (components/links)."""
    response: Schema = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    if links:
        response["links"] = {name: _ref("links", name) for name in links}
    return response


def _link(operation_id: str, description: str, **headers: str) -> Schema:
    """A link to `operation_id` on the same userId, with `headers` from this response."""
    parameters = {"userId": "$request.path.userId"}
    parameters |= {f"header.{name.replace('_', '-')}": value for name, value in headers.items()}
    return {"operationId": operation_id, "description": description, "parameters": parameters}


# What a client does next with a record it stored or fetched: the ETag round trip.
_LINKS: dict[str, Schema] = {
    "FetchRecord": _link("fetchRecord", "Fetch the record of the same user."),
    "FetchIfChanged": _link(
        "fetchRecord",
        "Fetch it only if it changed (304 otherwise).",
        If_None_Match="$response.header.ETag",
    ),
    "ReplaceIfUnchanged": _link(
        "storeRecord",
        "Replace it only while unchanged (412 otherwise).",
        If_Match="$response.header.ETag",
    ),
    "EraseIfUnchanged": _link(
        "eraseRecord",
        "Erase it only while unchanged (412 otherwise).",
        If_Match="$response.header.ETag",
    ),
    "EraseRecord": _link("eraseRecord", "Erase the record of the same user."),
    "VerifyRecord": _link("verifyRecord", "Ask whether the same user has a record."),
    "StoreRecord": _link("storeRecord", "Store a record for the same user."),
}
_AFTER_WRITE = (
    "FetchRecord",
    "FetchIfChanged",
    "ReplaceIfUnchanged",
    "EraseIfUnchanged",
    "VerifyRecord",
)


_QUOTA = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def _quota() -> dict[str, Schema]:
    """The RateLimit headers of a counted request: present only while limiting is on."""
    return {name: _ref("headers", name.replace("-", "")) for name in _QUOTA}


def _etag(*, required: bool = True) -> dict[str, Schema]:
    return {"ETag": _ref("headers", "ETag" if required else "ETagIfRecord")}


def _sync_responses(specific: dict[str, Schema]) -> dict[str, Schema]:
    """`specific` responses plus those every /api/sync operation can give."""
    common = {
        "400": _ref("responses", "BadRequest"),
        "401": _ref("responses", "Unauthorized"),
        "403": _ref("responses", "Forbidden"),
        "404": _ref("responses", "NotFound"),
        "429": _ref("responses", "TooManyRequests"),
        "503": _ref("responses", "ServiceUnavailable"),
    }
    return dict(sorted({**common, **specific}.items()))


def _components() -> Schema:
    string = {"type": "string"}
    schemas: dict[str, Schema] = {
        "UserId": {
            "type": "string",
            "pattern": USER_ID_PATTERN,
            "description": "A UUID in its 8-4-4-4-12 hex form, either case; anything else is 400.",
        },
        "EncryptedBlob": {
            "type": "string",
            "minLength": 4,
            "maxLength": MAX_BLOB_CHARS,
            "pattern": BLOB_PATTERN,
            "description": (
                "Canonical standard base64 (RFC 4648 alphabet, `=` padding, no whitespace, "
                f"zero padding bits) of the AES-256-GCM ciphertext, 1 … {MAX_BLOB_BYTES:,} "
                "bytes decoded. A blob that decodes to more is refused with 413."
            ),
        },
        "Iv": {
            "type": "string",
            "pattern": IV_PATTERN,
            "description": "The 12-byte AES-GCM IV as 16 base64 characters.",
        },
        "Timestamp": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_TIMESTAMP,
            "description": "Client epoch milliseconds; a JSON integer (not a float, string or "
            "boolean).",
        },
        "Checksum": {
            "type": "string",
            "pattern": CHECKSUM_PATTERN,
            "description": "Lowercase hex SHA-256 over IV ‖ ciphertext.",
        },
        "SyncPayload": {
            "type": "object",
            "description": "PUT body; every rule must hold, unknown fields are ignored.",
            "required": ["encryptedBlob", "iv", "timestamp", "checksum"],
            "properties": {
                "encryptedBlob": _ref("schemas", "EncryptedBlob"),
                "iv": _ref("schemas", "Iv"),
                "timestamp": _ref("schemas", "Timestamp"),
                "checksum": _ref("schemas", "Checksum"),
            },
        },
        "SyncRecord": {
            "type": "object",
            "description": "GET body: exactly the four fields the client stored.",
            "required": ["encryptedBlob", "iv", "timestamp", "checksum"],
            "additionalProperties": False,
            "properties": {
                "encryptedBlob": _ref("schemas", "EncryptedBlob"),
                "iv": _ref("schemas", "Iv"),
                "timestamp": _ref("schemas", "Timestamp"),
                "checksum": _ref("schemas", "Checksum"),
            },
        },
        "SuccessResponse": {
            "type": "object",
            "required": ["success"],
            "additionalProperties": False,
            "properties": {"success": {"const": True}},
        },
        "ExistsResponse": {
            "type": "object",
            "required": ["exists"],
            "additionalProperties": False,
            "properties": {"exists": {"type": "boolean"}},
        },
        "HealthStatus": {
            "type": "object",
            "required": ["status"],
            "additionalProperties": False,
            "properties": {"status": {"const": "ok"}},
        },
        "Error": {
            "type": "object",
            "description": "Every error: a message, never a stack trace or driver message.",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {"error": string},
        },
        "ValidationError": {
            "type": "object",
            "description": "400: each broken rule, by field (`body`, `userId`, a payload field, "
            "or a conditional header's name).",
            "required": ["error", "details"],
            "additionalProperties": False,
            "properties": {
                "error": {"const": ValidationFailed.message},
                "details": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["field", "message"],
                        "additionalProperties": False,
                        "properties": {"field": string, "message": string},
                    },
                },
            },
        },
    }
    count = {"type": "integer", "minimum": 0}
    retry_after = {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
    headers: dict[str, Schema] = {
        "ETag": {
            "description": "The record's current version, a strong entity tag.",
            "required": True,
            "schema": {"type": "string", "pattern": ETAG_PATTERN},
        },
        "ETagIfRecord": {
            "description": "The record's current version, when there is a record.",
            "schema": {"type": "string", "pattern": ETAG_PATTERN},
        },
        "RateLimitLimit": {
            "description": "Requests allowed per window (absent while limiting is off).",
            "schema": count,
        },
        "RateLimitRemaining": {
            "description": "Requests left in this window (absent while limiting is off).",
            "schema": count,
        },
        "RateLimitReset": {
            "description": "Seconds until the window resets (absent while limiting is off).",
            "schema": count,
        },
        "WWWAuthenticate": {
            "description": "The bearer challenge (RFC 6750 §3): `Bearer` when no bearer token "
            'was sent, `Bearer error="invalid_token"` (or `error="insufficient_scope"` on 403) '
            "when it was refused.",
            "required": True,
            "schema": {"type": "string", "pattern": "^Bearer( |$)"},
        },
    }
    challenge = {"WWW-Authenticate": _ref("headers", "WWWAuthenticate")}
    responses: dict[str, Schema] = {
        "BadRequest": _json(
            "A rule broken: malformed userId, body, or If-Match / If-None-Match header.",
            _ref("schemas", "ValidationError"),
            headers=_quota(),
        ),
        "Unauthorized": _json(
            "Only while bearer tokens are configured: no `Authorization: Bearer <token>`, "
            "or a token that is malformed, badly signed, expired, not yet valid, for another "
            "audience or issuer, or without the user claim. Counted against the client "
            "address, never the user id (RateLimit-* then describe the address's budget).",
            _error(
                TokenMissing.message,
                AuthorizationFormatInvalid.message,
                TokenInvalid.message,
                TokenExpired.message,
            ),
            headers={**challenge, **_quota()},
        ),
        "Forbidden": _json(
            "Only while bearer tokens are configured: a valid token for another user id.",
            _error(AccessDenied.message),
            headers={**challenge, **_quota()},
        ),
        "NotFound": _json(
            "`User not found` (GET of a user without a record), or `Not found` for a path the "
            "service does not serve (e.g. a userId containing `/`).",
            _error(RecordNotFound.message, NOT_FOUND),
            headers=_quota(),
        ),
        "MethodNotAllowed": _json(
            "The path exists but not for this method (e.g. a userId ending in `/verify` names "
            "the verify resource).",
            _error(METHOD_NOT_ALLOWED),
            headers={
                "Allow": {
                    "description": "The methods the resource supports.",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
        ),
        "PreconditionFailed": _json(
            "If-Match / If-None-Match did not hold; ETag is the current version, if any.",
            _error(PRECONDITION_FAILED),
            headers={**_etag(required=False), **_quota()},
        ),
        "TooManyRequests": _json(
            "The user id (or client address) spent its requests for this window.",
            _error(RateLimitExceeded.message),
            headers={
                "Retry-After": retry_after,
                **{name: {"required": True, "schema": count} for name in _QUOTA},
            },
        ),
        "ServiceUnavailable": _json(
            "PostgreSQL is unreachable or every pooled connection is busy.",
            _error(ServiceUnavailable.message),
            headers={"Retry-After": retry_after},
        ),
    }
    parameters: dict[str, Schema] = {
        "UserId": {
            "name": "userId",
            "in": "path",
            "required": True,
            "schema": _ref("schemas", "UserId"),
        },
        "If-Match": {
            "name": "If-Match",
            "in": "header",
            "description": 'Write only while the record is at one of these versions; "*": '
            "only while one exists. Compared strongly; 412 otherwise.",
            "schema": {"type": "string", "pattern": CONDITION_PATTERN},
        },
        "If-None-Match": {
            "name": "If-None-Match",
            "in": "header",
            "description": 'Not at any of these versions; "*": no record exists. Compared '
            "weakly. On GET a match is 304, on PUT 412.",
            "schema": {"type": "string", "pattern": CONDITION_PATTERN},
        },
    }
    security_schemes: dict[str, Schema] = {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "Optional: required only when the operator configures "
            "AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY_FILE. A JWT whose user claim (`userId` by "
            "default) is the path's userId; otherwise 401 or 403.",
        },
    }
    return {
        "schemas": schemas,
        "headers": headers,
        "responses": responses,
        "parameters": parameters,
        "links": _LINKS,
        "securitySchemes": security_schemes,
    }


# Bearer tokens are optional (off unless configured): no credentials `{}` or a bearer token.
_OPTIONAL_BEARER: list[Schema] = [{}, {"bearerAuth": []}]


def _paths() -> Schema:
    user_id = _ref("parameters", "UserId")
    if_match = _ref("parameters", "If-Match")
    if_none_match = _ref("parameters", "If-None-Match")
    success = _ref("schemas", "SuccessResponse")
    precondition_failed = _ref("responses", "PreconditionFailed")
    method_not_allowed = _ref("responses", "MethodNotAllowed")
    return {
        "/api/sync/{userId}": {
            "parameters": [user_id],
            "put": {
                "operationId": "storeRecord",
                "security": _OPTIONAL_BEARER,
                "summary": "Store or replace the user's record",
                "description": "Inserts the record or replaces blob, iv, timestamp and checksum "
                "in one statement; created_at is kept.",
                "parameters": [if_match, if_none_match],
                "requestBody": {
                    "required": True,
                    "description": "`application/json` (parameters such as charset allowed).",
                    "content": {"application/json": {"schema": _ref("schemas", "SyncPayload")}},
                },
                "responses": _sync_responses(
                    {
                        "200": _json(
                            "Stored; ETag is the new version.",
                            success,
                            headers={**_etag(), **_quota()},
                            links=(*_AFTER_WRITE, "EraseRecord"),
                        ),
                        "405": method_not_allowed,
                        "412": precondition_failed,
                        "413": _json(
                            "The blob decodes to more than 1,000,000 bytes, or the body is over "
                            "the body limit (refused while it streams in).",
                            _error(PayloadTooLarge.message),
                        ),
                        "415": _json("The body is not JSON.", _error(UnsupportedMediaType.message)),
                    }
                ),
            },
            "get": {
                "operationId": "fetchRecord",
                "security": _OPTIONAL_BEARER,
                "summary": "Fetch the user's record",
                "description": "Also marks the record accessed (coarsely, never over a day stale).",
                "parameters": [if_none_match],
                "responses": _sync_responses(
                    {
                        "200": _json(
                            "The record, with its version as ETag.",
                            _ref("schemas", "SyncRecord"),
                            headers={**_etag(), **_quota()},
                            links=_AFTER_WRITE,
                        ),
                        "304": {
                            "description": "If-None-Match names the current version; no body.",
                            "headers": {**_etag(), **_quota()},
                        },
                        "405": method_not_allowed,
                    }
                ),
            },
            "delete": {
                "operationId": "eraseRecord",
                "security": _OPTIONAL_BEARER,
                "summary": "Erase the user's record (GDPR right to erasure)",
                "description": "200 whether or not a record existed; with If-Match only while "
                "the record is at that version.",
                "parameters": [if_match],
                "responses": _sync_responses(
                    {
                        "200": _json(
                            "Erased, or there was nothing to erase.",
                            success,
                            headers=_quota(),
                            links=("FetchRecord", "VerifyRecord", "StoreRecord"),
                        ),
                        "405": method_not_allowed,
                        "412": precondition_failed,
                    }
                ),
            },
        },
        "/api/sync/{userId}/verify": {
            "parameters": [user_id],
            "post": {
                "operationId": "verifyRecord",
                "security": _OPTIONAL_BEARER,
                "summary": "Does the user have a record? (device pairing)",
                "responses": _sync_responses(
                    {
                        "200": _json(
                            "Whether a record exists; ETag is its version when it does.",
                            _ref("schemas", "ExistsResponse"),
                            headers={**_etag(required=False), **_quota()},
                            links=("FetchRecord", "StoreRecord"),
                        ),
                    }
                ),
            },
        },
        "/health": {
            "get": {
                "operationId": "readiness",
                "summary": "Readiness: PostgreSQL answers",
                "responses": {
                    "200": _json("PostgreSQL answers.", _ref("schemas", "HealthStatus")),
                    "503": _ref("responses", "ServiceUnavailable"),
                },
            },
        },
        "/health/live": {
            "get": {
                "operationId": "liveness",
                "summary": "Liveness: the process serves requests",
                "responses": {"200": _json("Serving.", _ref("schemas", "HealthStatus"))},
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _json("OpenAPI 3.1 document.", {"type": "object"})},
            },
        },
    }


_DESCRIPTION = """\
Stores one client-encrypted record per anonymous user (AES-256-GCM; the server never sees a \
key). Wire-compatible with the TypeScript service it replaces.

- Every error body is JSON `{"error": "..."}`; 400 adds `details`.
- A wrong method is 405 `{"error": "Method not allowed"}` with `Allow`; an unknown path is 404 \
`{"error": "Not found"}`.
- PostgreSQL unreachable or the pool exhausted is 503 with `Retry-After`, never 500.
- Rate limit: by default 100 requests per user id per hour across the four /api/sync \
endpoints; responses carry `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` while \
limiting is on, and the request over the limit gets 429 with `Retry-After`.
- Versions: PUT, GET and verify return the record's `ETag`; `If-Match` (PUT, DELETE) and \
`If-None-Match` (PUT, GET) make a request conditional (RFC 9110): 412 with the current `ETag` \
when the condition fails, 304 for a GET whose If-None-Match names the current version, 400 \
for a header that is not `*` or a list of quoted entity tags.
- Authentication is optional (`security: [{}, {"bearerAuth": []}]`): off by default; when the \
operator configures it, every /api/sync request needs `Authorization: Bearer <JWT>` whose user \
claim is the path's userId (401 without a valid token, 403 for another user's). A malformed \
userId is still a 400 before the token is looked at. Health and this document stay open.
- CORS: allowed origins are configurable (default `*`); preflight allows GET, PUT, POST, \
DELETE and, by default, the Content-Type, Authorization, If-Match and If-None-Match headers \
(CORS_ALLOW_HEADERS).
"""


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1.0 document of the service's HTTP contract."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "logikids-sync",
            "version": __version__,
            "description": _DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "paths": _paths(),
        "components": _components(),
    }


def render(document: dict[str, Any]) -> str:
    """The document as the checked-in file spells it: 2-space indent, sorted keys."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@functools.cache
def _served() -> bytes:
    return orjson.dumps(openapi_document())


async def openapi_endpoint(request: Request) -> Response:
    """GET /openapi.json: the document, rendered once per process."""
    return Response(_served(), media_type="application/json")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.openapi", description="Write the OpenAPI document."
    )
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the file differs from the document"
    )
    args = parser.parse_args(argv)
    text = render(openapi_document())
    if args.check:
        current = args.path.read_text(encoding="utf-8") if args.path.exists() else None
        if current != text:
            print(f"{args.path} is stale: run `python -m service.openapi`", file=sys.stderr)
            return 1
        return 0
    args.path.write_text(text, encoding="utf-8")
    print(f"Wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
