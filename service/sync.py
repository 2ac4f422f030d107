"""The four sync endpoints: parse, check the rules, run one named query, answer JSON."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import Response

from service.db import queries
from service.errors import PayloadTooLarge, RecordNotFound, UnsupportedMediaType
from service.payload import MAX_BODY_BYTES, parse_json_body, parse_user_id, validate_payload
from service.responses import ORJSONResponse

SUCCESS = {"success": True}


class SyncRecord(HTTPEndpoint):
    """/api/sync/{user_id}: PUT, GET and DELETE of one user's record; other methods get 405."""

    async def put(self, request: Request) -> Response:
        """PUT /api/sync/{userId}: insert or replace the user's record."""
        user_id = parse_user_id(request.path_params["user_id"])
        _require_json(request)
        payload = validate_payload(parse_json_body(await read_body(request, MAX_BODY_BYTES)))
        async with admitted(request, user_id) as conn:
            await queries.store_record(
                conn,
                user_id=user_id,
                encrypted_blob=payload.encrypted_blob,
                iv=payload.iv,
                timestamp=payload.timestamp,
                checksum=payload.checksum,
                blob_size=payload.blob_size,
            )
        return respond(request, SUCCESS)

    async def get(self, request: Request) -> Response:
        """GET /api/sync/{userId}: the record, exactly the four client fields."""
        user_id = parse_user_id(request.path_params["user_id"])
        async with admitted(request, user_id) as conn:
            row = await queries.fetch_record(conn, user_id=user_id)
        if row is None:
            raise RecordNotFound()
        blob, iv, timestamp, checksum = row
        return respond(
            request,
            {"encryptedBlob": blob, "iv": iv, "timestamp": timestamp, "checksum": checksum},
        )

    async def delete(self, request: Request) -> Response:
        """DELETE /api/sync/{userId}: erase the record, whether or not it existed."""
        user_id = parse_user_id(request.path_params["user_id"])
        async with admitted(request, user_id) as conn:
            await queries.erase_record(conn, user_id=user_id)
        return respond(request, SUCCESS)


class SyncVerify(HTTPEndpoint):
    """/api/sync/{user_id}/verify."""

    async def post(self, request: Request) -> Response:
        """POST /api/sync/{userId}/verify: whether a record exists (device pairing)."""
        user_id = parse_user_id(request.path_params["user_id"])
        async with admitted(request, user_id) as conn:
            exists = await queries.record_exists(conn, user_id=user_id)
        return respond(request, {"exists": bool(exists)})


@asynccontextmanager
async def admitted(request: Request, user_id: uuid.UUID) -> AsyncIterator[psycopg.AsyncConnection]:
    """A pooled connection for this request, once the rate limiter has counted it.

    The count runs on the same connection as the request's statement, so limiting costs
    one statement and no extra pool checkout; its quota is kept for the response headers.
    """
    async with request.state.pool.connection() as conn:
        client = request.client.host if request.client else None
        request.state.quota = await request.state.limiter.admit(
            conn, user_id=user_id, client_ip=client
        )
        yield conn


def respond(request: Request, content: object) -> Response:
    """A 200 JSON response carrying the request's RateLimit headers."""
    return ORJSONResponse(content, headers=quota_headers(request))


def quota_headers(request: Request) -> dict[str, str]:
    quota = getattr(request.state, "quota", None)
    return quota.headers() if quota is not None else {}


def _require_json(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit`.

    A declared Content-Length over the limit is refused before reading a byte; a body
    that streams past the limit (chunked, or lying about its length) is refused at the
    chunk that crosses it, so an oversized body is never held in memory whole.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)
