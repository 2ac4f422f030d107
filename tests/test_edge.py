"""The edge layer on its own (service/edge.py): proxy headers, CORS and the access line
around a small app, for what the contract tests reach only through the whole service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from service.edge import EdgeMiddleware
from service.logs import ACCESS_LOGGER, user_hash

ORIGIN = "https://app.example"
USER = "550e8400-e29b-41d4-a716-446655440000"


def edge_client(*, trusted_hosts: str = "127.0.0.1") -> TestClient:
    async def record(request: Request) -> Response:
        client = request.client.host if request.client else None
        return JSONResponse({"client": client, "scheme": request.url.scheme})

    async def boom(request: Request) -> Response:
        raise RuntimeError("a bug")

    async def internal_error(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": "Internal server error"}, status_code=500)

    app = Starlette(
        routes=[
            Route("/api/sync/{user_id}", record),
            Route("/api/sync/{user_id}/boom", boom),
        ],
        middleware=[
            Middleware(
                EdgeMiddleware,
                trusted_hosts=trusted_hosts,
                cors={
                    "allow_origins": [ORIGIN],
                    "allow_methods": ["GET", "PUT"],
                    "allow_headers": ["Content-Type"],
                    "expose_headers": ["ETag"],
                },
                count_metrics=False,
            )
        ],
        exception_handlers={Exception: internal_error},
    )
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> Callable[[], list[logging.LogRecord]]:
    """The access lines logged so far in the test."""
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    return lambda: [r for r in caplog.records if r.name == ACCESS_LOGGER]


def test_a_request_without_origin_gets_no_allow_origin():
    response = edge_client().get(f"/api/sync/{USER}")
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_an_allowed_origin_is_echoed_with_its_exposed_headers():
    response = edge_client().get(f"/api/sync/{USER}", headers={"Origin": ORIGIN})
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["access-control-expose-headers"] == "ETag"
    assert "Origin" in response.headers["vary"]


def test_another_origin_is_answered_without_allow_origin():
    response = edge_client().get(f"/api/sync/{USER}", headers={"Origin": "https://evil.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_a_preflight_for_a_method_not_allowed_is_a_json_400_and_one_access_line(access):
    response = edge_client().options(
        f"/api/sync/{USER}",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "PATCH"},
    )
    assert response.status_code == 400
    assert response.json() == {"error": "Disallowed CORS method"}
    assert "Origin" in response.headers["vary"]  # the preflight's own, not added twice
    assert response.headers["vary"].count("Origin") == 1
    [line] = access()
    assert (line.method, line.status) == ("OPTIONS", 400)


def test_an_allowed_preflight_lists_the_methods_and_reaches_no_route(access):
    response = edge_client().options(
        f"/api/sync/{USER}",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "PUT"},
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "PUT" in response.headers["access-control-allow-methods"]
    [line] = access()
    assert line.route == "<unmatched>"


def test_behind_a_trusted_proxy_the_app_sees_the_forwarded_client_and_scheme():
    headers = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    trusted = edge_client(trusted_hosts="*").get(f"/api/sync/{USER}", headers=headers)
    assert trusted.json() == {"client": "203.0.113.9", "scheme": "https"}
    # TestClient's peer is "testclient", which "127.0.0.1" does not trust.
    untrusted = edge_client().get(f"/api/sync/{USER}", headers=headers)
    assert untrusted.json() == {"client": "testclient", "scheme": "http"}


def test_an_unhandled_error_is_logged_as_a_500_with_the_route_and_the_user_hash(access):
    response = edge_client().get(f"/api/sync/{USER}/boom", headers={"Origin": ORIGIN})
    assert response.status_code == 500
    [line] = access()
    assert (line.status, line.route, line.user) == (
        500,
        "/api/sync/{user_id}/boom",
        user_hash(USER),
    )
    assert USER not in line.getMessage()


def test_an_unknown_method_is_logged_as_it_came_and_answered_405(access):
    response = edge_client().request("PURGE", f"/api/sync/{USER}")
    assert response.status_code == 405
    [line] = access()
    assert (line.method, line.status) == ("PURGE", 405)


@pytest.mark.parametrize("origins", [["*"], ["http://localhost:5173"]])
@pytest.mark.parametrize("origin", [None, "http://localhost:5173", "https://elsewhere.example"])
@pytest.mark.parametrize(
    "response_headers",
    [[], [(b"content-type", b"application/json"), (b"etag", b'"v"')], [(b"vary", b"Accept")]],
)
def test_the_cors_headers_are_exactly_starlettes(origins, origin, response_headers):
    """JSONCORSMiddleware's constant headers (all origins allowed) are what Starlette's
    CORSMiddleware adds, for every response: with and without Origin, with a Vary."""
    from starlette.datastructures import Headers
    from starlette.middleware.cors import CORSMiddleware

    from service.edge import JSONCORSMiddleware

    options = {
        "allow_origins": origins, "allow_methods": ["GET"], "allow_headers": ["Content-Type"],
        "expose_headers": ["ETag"], "max_age": 600,
    }  # fmt: skip

    async def headers_after(middleware) -> list[tuple[bytes, bytes]]:
        sent = []

        async def keep(message):
            sent.append(message)

        raw = [(b"origin", origin.encode())] if origin else []
        for _ in range(2):  # the first call takes the constants, the second uses them
            message = {"type": "http.response.start", "status": 200,
                       "headers": list(response_headers)}  # fmt: skip
            if isinstance(middleware, JSONCORSMiddleware):
                scope = {"type": "http", "headers": raw}
                await middleware.send_with(message, keep, scope, origin is not None)
            else:
                await middleware.send(message, keep, Headers(raw=raw))
        return [sorted(m["headers"]) for m in sent]

    ours = asyncio.run(headers_after(JSONCORSMiddleware(None, **options)))
    starlettes = asyncio.run(headers_after(CORSMiddleware(None, **options)))
    assert ours == starlettes
