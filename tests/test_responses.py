"""JSONAnswer (service/responses.py) sends what Starlette's Response sends for the same
content and headers: it skips Starlette's header handling, not its output."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
from starlette.responses import Response

from service.conditional import etag
from service.ratelimit import Quota
from service.responses import JSONAnswer


def _sent(response: Response) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    asyncio.run(response(scope, receive, send))
    return messages


@pytest.mark.parametrize(
    "content",
    [{"exists": False}, {"success": True}, {"encryptedBlob": "QUJD" * 1000, "timestamp": 1}],
)
@pytest.mark.parametrize("with_etag", [True, False])
def test_a_json_answer_sends_what_starlette_s_response_sends(content, with_etag):
    quota = Quota(limit=1000, remaining=998, reset_seconds=3599)
    version = uuid.uuid4()
    headers = dict(quota.headers())
    pairs = quota.header_pairs()
    if with_etag:
        headers["ETag"] = etag(version)
        pairs.append((b"etag", etag(version).encode()))
    starlette = Response(orjson.dumps(content), headers=headers, media_type="application/json")
    answer = JSONAnswer(content, pairs)
    assert _sent(answer) == _sent(starlette)
    assert isinstance(answer, Response)
    assert answer.headers == starlette.headers  # Starlette's documented view of them
    assert (answer.status_code, answer.body, answer.media_type, answer.background) == (
        200,
        starlette.body,
        "application/json",
        None,
    )
