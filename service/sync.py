"""The four sync endpoints: parse, check the rules, run one named query, answer JSON.

The handlers read the lifespan state (the batcher, the limiter, the settings) and keep
the request's quota in `request.scope["state"]`, the dict the ASGI lifespan spec gives
each request, rather than through Starlette's `request.state` wrapper of that same dict:
every read through the wrapper is two Python calls (bench/inprocess.py measures the path).
`request.state.quota` still reads what they keep (the error handlers do)."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service.auth import authorize
from service.bodies import UploadBudgetExhausted, read_body
from service.conditional import Condition, PreconditionFailed, parse_condition
from service.conditional import etag as etag_header
from service.db import queries
from service.errors import (
    RecordNotFound,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from service.payload import (
    MAX_BODY_BYTES,
    SyncPayload,
    parse_json_body,
    parse_user_key,
    validate_payload,
)
from service.responses import JSONAnswer

SUCCESS = {"success": True}


async def put_record(request: Request) -> Response:
    """PUT /api/sync/{userId}: insert or replace the record (conditionally with
    If-Match / If-None-Match); answers with the new version's ETag."""
    user_id = parse_user_key(request.path_params["user_id"])
    authorize(request, user_id)  # before the body is read or the user's quota spent
    if_match = parse_condition(request.headers, "If-Match")
    if_none_match = parse_condition(request.headers, "If-None-Match")
    _require_json(request)
    state = request.scope["state"]
    # The reservation lasts until the record is stored: the payload is held till then.
    with state["upload_budget"].reservation() as reservation:
        try:
            body = await read_body(
                request,
                MAX_BODY_BYTES,
                deadlines=state["body_deadlines"],
                reservation=reservation,
            )
        except UploadBudgetExhausted:
            raise ServiceUnavailable(state["settings"].retry_after) from None
        payload = validate_payload(parse_json_body(body))
        return await _store(request, user_id, payload, if_match, if_none_match)


async def _store(
    request: Request,
    user_id: str,
    payload: SyncPayload,
    if_match: Condition | None,
    if_none_match: Condition | None,
) -> Response:
    """Store a valid payload with the statement its conditional headers call for."""
    fields = {
        "user_id": user_id,
        "encrypted_blob": payload.encrypted_blob,
        "iv": payload.iv,
        "timestamp": payload.timestamp,
        "checksum": payload.checksum,
        "blob_size": payload.blob_size,
        "version": uuid.uuid4(),  # drawn here: Citus allows no volatile function there
    }
    if if_match is not None and if_none_match is not None and if_none_match.any:
        raise PreconditionFailed()  # exists (If-Match) and does not exist (*): never
    if if_match is not None:
        excluded = if_none_match.versions(weak_ok=True) if if_none_match else None
        row = await run_statement(
            request,
            queries.replace_record_if_match,
            **fields,
            versions=None if if_match.any else if_match.versions(weak_ok=False),
            excluded_versions=excluded,
        )
    elif if_none_match is not None:
        stored_version = await run_statement(
            request,
            queries.store_record_unless_match,
            **fields,
            versions=None if if_none_match.any else if_none_match.versions(weak_ok=True),
        )  # no row: the record is at one of those versions (or exists, for `*`)
        row = (True, *stored_version) if stored_version is not None else None
    else:
        row = (True, *await _one_row(request, queries.store_record, **fields))
    stored, version = row if row is not None else (None, None)
    if not stored:  # False: another version; None: no record to match
        raise PreconditionFailed(await _current_version(request, user_id))
    return respond(request, SUCCESS, etag=version)


async def get_record(request: Request) -> Response:
    """GET /api/sync/{userId}: the record, exactly the four client fields, with its
    ETag; 304 without a body when If-None-Match names the current version."""
    user_id = parse_user_key(request.path_params["user_id"])
    authorize(request, user_id)
    if_none_match = parse_condition(request.headers, "If-None-Match")
    row = await run_statement(
        request,
        queries.fetch_record,
        user_id=user_id,
        known_versions=if_none_match.versions(weak_ok=True) if if_none_match else None,
        any_version=bool(if_none_match and if_none_match.any),
    )
    if row is None:
        raise RecordNotFound()
    blob, iv, timestamp, checksum, version, unchanged = row
    if unchanged:
        headers = {**quota_headers(request), "ETag": etag_header(version)}
        return Response(status_code=304, headers=headers)
    return respond(
        request,
        {"encryptedBlob": blob, "iv": iv, "timestamp": timestamp, "checksum": checksum},
        etag=version,
    )


async def delete_record(request: Request) -> Response:
    """DELETE /api/sync/{userId}: erase the record, whether or not it existed; with
    If-Match only while it is at that version."""
    user_id = parse_user_key(request.path_params["user_id"])
    authorize(request, user_id)
    if_match = parse_condition(request.headers, "If-Match")
    if if_match is None:
        await run_statement(request, queries.erase_record, user_id=user_id)
        return respond(request, SUCCESS)
    row = await run_statement(
        request,
        queries.erase_record_if_match,
        user_id=user_id,
        versions=None if if_match.any else if_match.versions(weak_ok=False),
    )
    if row is None or not row[0]:
        raise PreconditionFailed(await _current_version(request, user_id))
    return respond(request, SUCCESS)


async def verify_record(request: Request) -> Response:
    """POST /api/sync/{userId}/verify: whether a record exists (device pairing), with
    its ETag when it does."""
    user_id = parse_user_key(request.path_params["user_id"])
    authorize(request, user_id)
    row = await run_statement(request, queries.record_version, user_id=user_id)
    version = row[0] if row is not None else None
    return respond(request, {"exists": version is not None}, etag=version)


_BY_METHOD = {
    "GET": get_record,
    "HEAD": get_record,
    "PUT": put_record,
    "DELETE": delete_record,
}


async def sync_record(request: Request) -> Response:
    """/api/sync/{user_id}: PUT, GET (and HEAD) and DELETE of one user's record. The
    route lists these methods, so Starlette answers any other with 405 and Allow; a
    function route costs less per request than an HTTPEndpoint class."""
    return await _BY_METHOD[request.method](request)


async def run_statement(request: Request, query: Any, **params: object) -> tuple | None:
    """Count this request against the rate limits, then run its sync statement
    (queries/sync.sql) and answer its first row, or None when it answered none.

    The count is decided in this process at once (service/ratelimit.py) and raises 429
    before any statement runs; the statement travels to PostgreSQL with those of
    concurrent requests, in one round trip (service/batching.py), and is still its own
    transaction. The quota is kept for the response headers."""
    state = request.scope["state"]
    client = request.scope.get("client")  # (host, port), or None (ASGI connection scope)
    state["quota"] = state["limiter"].admit(
        user_id=params["user_id"], client_ip=client[0] if client else None
    )
    return await state["batcher"].fetchone(query.sql, params)


async def _one_row(request: Request, query: Any, **params: object) -> tuple:
    """run_statement for a statement that always answers a row (an upsert's RETURNING)."""
    row = await run_statement(request, query, **params)
    if row is None:
        raise RuntimeError(f"{query.__name__} returned no row")
    return row


async def _current_version(request: Request, user_id: str) -> uuid.UUID | None:
    """The record's version for a 412, read afresh: the failed statement's snapshot may
    predate the write that made the precondition fail, and the client needs the ETag
    that is current now to retry. Only failed preconditions pay this extra statement."""
    batcher = request.scope["state"]["batcher"]
    row = await batcher.fetchone(queries.record_version.sql, {"user_id": user_id})
    return row[0] if row is not None else None


def respond(request: Request, content: object, *, etag: uuid.UUID | None = None) -> Response:
    """A 200 JSON response carrying the request's RateLimit headers and the ETag."""
    quota = request.scope["state"].get("quota")
    headers = quota.header_pairs() if quota is not None else []
    if etag is not None:
        headers.append((b"etag", etag_header(etag).encode()))
    return JSONAnswer(content, headers)


def quota_headers(request: Request) -> dict[str, str]:
    quota = getattr(request.state, "quota", None)
    return quota.headers() if quota is not None else {}


def _require_json(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType()
