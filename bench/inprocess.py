"""The Python cost of a request's path through the app, with no socket and no database.

    python -m bench.inprocess [--requests 10000] [--repeats 15]

Why: under wrk the service, PostgreSQL and the load generator share two vCPUs, and a
change of a few µs per request is below the noise of a 5-round run. Here the service's
app (bench/stack.py's settings: limiter on and set high, access log on, written to
/dev/null) and the floor's `batcher_app` (bench/floor.py) are called with ASGI messages
in one process, each with a statement batcher that answers at once, so what is timed is
uvicorn-free Python: Starlette, the edge, the handler, the limiter, the response and the
access line. The report is the best of `--repeats` runs of `--requests` requests, per
request, for GET, PUT (a 4 KB blob) and verify of 1,000 users; the difference between the
two apps is what the contract's own work costs. A profiler can be pointed at it too
(`py-spy record -- python -m bench.inprocess`). It sets up logging for its own process,
so run it as a command, not from inside another program.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any
from unittest import mock

import orjson

from bench import stack

USERS = [stack.user_id(n) for n in range(1, 1001)]
ROW = ("A" * 5464, "A" * 16, 1_700_000_000_000, "a" * 64, uuid.uuid4(), False)
CASES = {"get": ("GET", ""), "put": ("PUT", ""), "verify": ("POST", "/verify")}
PUT_BODY = orjson.dumps(stack.Payload(4096).fields())


class AnsweringBatcher:
    """A StatementBatcher's `fetchone` that answers every statement at once: a record
    for the GET statement, a version for the others (verify, and a PUT's upsert)."""

    async def fetchone(self, sql: str, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return ROW if "known_versions" in params else (ROW[4],)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """The service's logging writes to the stderr it finds: /dev/null while timed."""
    saved = sys.stderr
    with open(os.devnull, "w") as devnull:
        sys.stderr = devnull
        try:
            yield
        finally:
            sys.stderr = saved


def apps() -> dict[str, tuple[Any, dict[str, object]]]:
    """Each app to time and the lifespan state its requests carry."""
    from bench.floor import batcher_app
    from service.app import create_app
    from service.bodies import BodyDeadlines, UploadBudget
    from service.config import Settings
    from service.logs import configure_logging
    from service.ratelimit import RateLimiter

    env = {**stack.SERVICE_ENV, "DATABASE_URL": "postgresql://bench@localhost/none"}
    settings = Settings.from_env(env)
    with mock.patch.dict(os.environ, env):  # batcher_app reads its settings from there
        floor = batcher_app()
    configure_logging(log_format=settings.log_format, log_level=settings.log_level)
    limiter = RateLimiter.from_settings(settings)
    state = {
        "batcher": AnsweringBatcher(),
        "limiter": limiter,
        "settings": settings,
        "auth": None,
        "upload_budget": UploadBudget(settings.upload_buffer_mb * 1024 * 1024),
        "body_deadlines": BodyDeadlines(settings.body_timeout),
    }
    return {
        "floor (Starlette + batcher)": (floor, state),
        "service": (create_app(settings), state),
    }


def _scope(method: str, path: str, state: dict[str, object]) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1"), (b"user-agent", b"wrk")]
    if method == "PUT":
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(PUT_BODY)),
        ]
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 5175), "state": dict(state),
    }  # fmt: skip


async def time_requests(app: Any, state: dict[str, object], case: str, count: int) -> float:
    """µs per request over `count` requests of `case`, answered in full."""
    method, suffix = CASES[case]
    statuses: list[int] = []
    body = PUT_BODY if method == "PUT" else b""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    started = time.perf_counter()
    for i in range(count):
        await app(_scope(method, f"/api/sync/{USERS[i % 1000]}{suffix}", state), receive, send)
    elapsed = time.perf_counter() - started
    if set(statuses) != {200}:
        raise SystemExit(f"{case}: answered {sorted(set(statuses))}, not only 200")
    return elapsed / count * 1e6


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    with _quiet_stderr():
        built = apps()
        gc.collect()
        gc.freeze()  # as the service does after start-up (service/app.py)

        async def run() -> None:
            for case in CASES:
                for name, (app, state) in built.items():
                    await time_requests(app, state, case, args.requests)  # warm-up
                    times = [
                        await time_requests(app, state, case, args.requests)
                        for _ in range(args.repeats)
                    ]
                    results.setdefault(case, {})[name] = min(times)

        try:
            asyncio.run(run())
        finally:
            gc.unfreeze()
    for case, by_app in results.items():
        floor, service = by_app.values()
        print(f"{case:<7} " + "  ".join(f"{name}: {us:6.1f} µs" for name, us in by_app.items())
              + f"  difference: {service - floor:5.1f} µs")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
