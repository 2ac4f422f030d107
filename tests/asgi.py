"""Driving the app at the ASGI level, for what TestClient cannot do: it buffers request
bodies whole, so trickling, oversized-while-streaming and hang-up cases need this."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Message = dict[str, Any]


def put_scope(client: Any, path: str) -> dict[str, Any]:
    """The scope of a JSON PUT to `path` on the app behind a started TestClient."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": dict(client.app_state),
    }


def call_app(
    client: Any, scope: dict[str, Any], receive: Callable[[], Awaitable[Message]]
) -> list[Message]:
    """Run one request through the app on the client's event loop; the messages it sent."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    client.portal.call(client.app, scope, receive, send)
    return sent


def status_of(sent: list[Message]) -> int:
    return next(m for m in sent if m["type"] == "http.response.start")["status"]
