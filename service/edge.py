"""The edge of every request, in one ASGI layer: the client's address behind a trusted
proxy, CORS, and one access line (with the metrics) per request.

Why one layer: each ASGI middleware wraps every request and every message it sends, and
as three layers they cost GET and verify about a seventh of their throughput
(docs/benchmarks.md). The decisions stay with the libraries that make them well: uvicorn's
ProxyHeadersMiddleware reads X-Forwarded-For against FORWARDED_ALLOW_IPS, and
Starlette's CORSMiddleware answers preflights and adds the CORS headers. Only the
layering is ours.

The raw path holds the user id, which is a secret: the access line carries its short
hash and the route template, not the path. With bearer tokens on it also carries the
handler's `auth=` outcome, never the token.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service import metrics
from service.auth import OUTCOME_KEY as AUTH_OUTCOME
from service.logs import log_access, user_hash
from service.responses import ORJSONResponse

_KNOWN_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"})
_FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto"})


class JSONCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, except that a refused preflight answers in the contract's JSON,
    and that with every origin allowed (`*`, no credentials: the default) the headers
    it adds to a response are the same for every request with an Origin, and for every
    one without: those two lists are taken from Starlette's own `send` once, on a bare
    response, and added as they are, with no header scans per request (not measured
    apart: below the noise of a 5-round run). A response that already carries a Vary
    header takes Starlette's path; tests/test_edge.py compares both with Starlette's."""

    _constant: dict[bool, list[tuple[bytes, bytes]]] | None = None

    async def send_with(self, message: Message, send: Send, scope: Scope, has_origin: bool) -> None:
        """`send`, for a response start of the request in `scope` (`has_origin`: whether
        it came with an Origin header): the constant headers when they apply, else
        Starlette's own."""
        constant = self._constant
        if constant is None and self.allow_all_origins and not self.allow_credentials:
            constant = self._constant = {
                True: await self._added_headers(Headers({"origin": "https://any.example"})),
                False: await self._added_headers(Headers()),
            }
        headers = message.get("headers", ())
        if constant is None or _has_vary(headers):
            await super().send(message, send, Headers(scope=scope))
            return
        message["headers"] = [*headers, *constant[has_origin]]
        await send(message)

    async def _added_headers(self, request_headers: Headers) -> list[tuple[bytes, bytes]]:
        """What Starlette's `send` adds to a response without headers of its own."""
        sent: list[Message] = []

        async def keep(message: Message) -> None:
            sent.append(message)

        probe: Message = {"type": "http.response.start", "status": 200, "headers": []}
        await super().send(probe, keep, request_headers)
        return list(sent[0]["headers"])

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        headers = {
            k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")
        }
        return ORJSONResponse(
            {"error": bytes(response.body).decode()},
            status_code=response.status_code,
            headers=headers,
        )


def _has_vary(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a response start's headers hold a Vary; a loop, not any() over a
    generator, which cost a GET 0.5 µs of the edge's 2 (bench/inprocess.py)."""
    for name, _ in headers:  # noqa: SIM110 (the point is not to build a generator)
        if name == b"vary":
            return True
    return False


async def _scope_rewritten_only(scope: Scope, receive: Receive, send: Send) -> None:
    """What the proxy-header rewrite hands the request to: nothing, the edge goes on."""


class EdgeMiddleware:
    """Proxy headers, then CORS, then the app; the access line and the metrics after it.

    Logs method, route template, status, duration and user hash at INFO, and counts the
    request in the Prometheus metrics when they are served (nobody reads them
    otherwise, and with multiprocess workers each count is a write to a shared file)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        trusted_hosts: str,
        cors: dict[str, Any],
        count_metrics: bool = True,
    ) -> None:
        self.app = app
        self.proxy_headers = ProxyHeadersMiddleware(_scope_rewritten_only, trusted_hosts)
        self.cors = JSONCORSMiddleware(app, **cors)
        self.count_metrics = count_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan; websockets (no route takes one) untouched
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # One pass over the request's headers for what the edge decides on. uvicorn's
        # proxy-header rewrite changes nothing without X-Forwarded-For/-Proto, so it runs
        # only when one of them came (it still decides whether their sender is trusted).
        has_origin = forwarded = asks_method = False
        for name, _ in scope["headers"]:
            if name == b"origin":
                has_origin = True
            elif name in _FORWARDING:
                forwarded = True
            elif name == b"access-control-request-method":
                asks_method = True
        if forwarded:
            await self.proxy_headers(scope, receive, send)  # rewrites ["client"], ["scheme"]
        cors = self.cors
        preflight = has_origin and asks_method and scope["method"] == "OPTIONS"
        status = 500

        async def send_at_edge(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if not preflight:  # a preflight's answer carries its own CORS headers
                    await cors.send_with(message, send, scope, has_origin)
                    return
            await send(message)

        try:
            if preflight:
                response = cors.preflight_response(request_headers=Headers(scope=scope))
                await response(scope, receive, send_at_edge)
            else:
                await self.app(scope, receive, send_at_edge)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "<unmatched>"
        user_id = scope.get("path_params", {}).get("user_id")
        user = user_hash(user_id) if user_id else None
        # The handler's auth outcome (service/auth.py), in the request's state; absent
        # while bearer tokens are off or when the request never reached the check.
        state = scope.get("state")
        auth = state.get(AUTH_OUTCOME) if state else None
        if self.count_metrics:
            # Any token is a valid method: an unknown one must not grow the label set.
            method = scope["method"] if scope["method"] in _KNOWN_METHODS else "OTHER"
            metrics.REQUESTS.labels(method, template, str(status)).inc()
            metrics.LATENCY.labels(method, template).observe(elapsed)
        log_access(scope["method"], template, status, elapsed * 1000, user, auth=auth)
