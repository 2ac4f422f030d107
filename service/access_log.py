"""One log line and the metrics per request, with the route template, not the raw path.

The raw path holds the user id, which is a secret; the line carries its short hash.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.logs import log_access, user_hash

_KNOWN_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"})


class AccessLogMiddleware:
    """Logs method, route template, status, duration and user hash at INFO, and counts
    the request in the Prometheus metrics when they are served (nobody reads them
    otherwise, and with multiprocess workers each count is a write to a shared file)."""

    def __init__(self, app: ASGIApp, *, count_metrics: bool = True) -> None:
        self.app = app
        self.count_metrics = count_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            user_id = scope.get("path_params", {}).get("user_id")
            user = user_hash(user_id) if user_id else None
            elapsed = time.perf_counter() - started
            duration_ms = elapsed * 1000
            # Any token is a valid method: an unknown one must not grow the label set.
            method = scope["method"] if scope["method"] in _KNOWN_METHODS else "OTHER"
            if self.count_metrics:
                metrics.REQUESTS.labels(method, template, str(status)).inc()
                metrics.LATENCY.labels(method, template).observe(elapsed)
            log_access(scope["method"], template, status, duration_ms, user)
