"""How far the service is above the floor of its own design, side by side.

    python -m bench.floor [--cases get,put,verify] [--rounds 3] [--seconds 5]

Why: the service/ceiling targets of docs/benchmarks.md leave a GET about 115 µs of worker
CPU. This measures, in one run and under `make bench`'s wrk load, what the fixed parts
of the design cost on their own, served the way the service is (uvicorn with httptools
and uvloop, two workers):

- `bare ASGI`: an ASGI callable that reads the request and answers a constant record;
- `Starlette`: a Starlette app doing the same through one route;
- `Starlette + batcher`: routes that count the request against the rate limit and run
  the service's own statement for the case through its StatementBatcher, with the body
  parsed by orjson for a PUT, and answer the row as orjson: no middleware, validation,
  headers or log line. The count is the service's own RateLimiter, admitting in the
  process and exchanging its counts with PostgreSQL as the service does (the load runs
  with the limiter on); it was part of the statement when this floor was first measured
  and moved off it with the in-process limiter;
- `service`: the real service (bench/stack.py's production shape);

and, last in each round, the ceiling: `pgbench -M prepared` on the same statement.
The report gives each one's requests/s, the CPU per request of its workers, of
PostgreSQL and of wrk, and its ratio to the ceiling: the third line is the best ratio
any code could reach on this design before it does a sync service's own work.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

from bench import stack
from bench.ceiling import run_pgbench
from bench.load import Result, run_wrk

USERS = 1000
BLOB_BYTES = 4096


def _record_body() -> bytes:
    fields = stack.Payload(BLOB_BYTES).fields()
    return orjson.dumps({k: fields[k] for k in ("encryptedBlob", "iv", "timestamp", "checksum")})


def bare_app() -> Callable[..., Any]:
    """uvicorn factory: an ASGI callable answering every request with one constant."""
    body = _record_body()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def starlette_app() -> Any:
    """uvicorn factory: a one-route Starlette app answering the same constant."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    body = _record_body()

    async def record(request: Any) -> Response:
        await request.body()
        return Response(body, media_type="application/json")

    methods = ["GET", "PUT", "POST"]
    return Starlette(
        routes=[
            Route("/api/sync/{user_id}", record, methods=methods),
            Route("/api/sync/{user_id}/verify", record, methods=methods),
            Route("/health", record),
        ]
    )


def batcher_app() -> Any:
    """uvicorn factory: routes running each case's statement through the service's
    StatementBatcher, with the pool the service's settings give it, each request counted
    by the service's RateLimiter."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from service.config import Settings
    from service.db import create_batcher, create_pool, exchange_counts, queries
    from service.ratelimit import RateLimiter

    settings = Settings.from_env()

    async def run(request: Any, query: Any, **params: object) -> tuple[Any, ...]:
        key = request.path_params["user_id"]
        request.state.limiter.admit(user_id=key, client_ip=request.client.host)
        row = await request.state.batcher.fetchone(query.sql, {"user_id": uuid.UUID(key), **params})
        return row if row is not None else (None,) * 6

    async def get(request: Any) -> Response:
        blob, iv, timestamp, checksum, *_ = await run(
            request, queries.fetch_record, known_versions=None, any_version=False
        )
        fields = {"encryptedBlob": blob, "iv": iv, "timestamp": timestamp, "checksum": checksum}
        return Response(orjson.dumps(fields), media_type="application/json")

    async def put(request: Any) -> Response:
        fields = orjson.loads(await request.body())
        blob = fields["encryptedBlob"]
        await run(
            request,
            queries.store_record,
            encrypted_blob=blob,
            iv=fields["iv"],
            timestamp=fields["timestamp"],
            checksum=fields["checksum"],
            blob_size=len(blob) * 3 // 4 - blob[-2:].count("="),
            version=uuid.uuid4(),
        )
        return Response(b'{"success":true}', media_type="application/json")

    async def verify(request: Any) -> Response:
        version, *_ = await run(request, queries.record_version)
        return Response(
            orjson.dumps({"exists": version is not None}), media_type="application/json"
        )

    async def health(request: Any) -> Response:
        return Response(b"{}", media_type="application/json")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        pool = create_pool(settings)
        limiter = RateLimiter.from_settings(settings)

        async def exchange(**bindings: object) -> list[tuple[str, int]]:
            async with pool.connection() as conn:
                return await exchange_counts(conn, **bindings)

        await pool.open(wait=True)
        try:
            interval = settings.rate_limit_exchange_interval
            async with limiter.exchanging(exchange, interval=interval):
                yield {"batcher": create_batcher(pool, settings), "limiter": limiter}
        finally:
            await pool.close()

    return Starlette(
        routes=[
            Route("/api/sync/{user_id}", get, methods=["GET"]),
            Route("/api/sync/{user_id}", put, methods=["PUT"]),
            Route("/api/sync/{user_id}/verify", verify, methods=["POST"]),
            Route("/health", health),
        ],
        lifespan=lifespan,
    )


CEILING = "ceiling (pgbench)"
FLOOR = "Starlette + batcher"
"""The floor of the design: the service's own parts doing only the essential work."""
FLOORS = {
    "bare ASGI": "bench.floor:bare_app",
    "Starlette": "bench.floor:starlette_app",
    FLOOR: "bench.floor:batcher_app",
}


def floor_command(factory: str, port: int) -> list[str]:
    """The floor app served as the service is served (service/server.py's options)."""
    return [
        sys.executable, "-m", "uvicorn", "--factory", factory, "--port", str(port),
        "--workers", stack.SERVICE_ENV["WORKERS"], "--no-access-log", "--no-server-header",
        "--log-level", "warning",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="get,put,verify")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    cases = args.cases.split(",")
    runs: dict[tuple[str, str], list[Result]] = {}  # (case, server)
    with (
        stack.database() as url,
        tempfile.TemporaryDirectory(prefix="logikids-floor-") as tmp,
        ExitStack() as servers,
    ):
        stack.migrate(url)
        stack.seed(url, 1, USERS, BLOB_BYTES)
        body = Path(tmp) / "body.json"
        fields = stack.Payload(BLOB_BYTES).write(body) | {"blob_size": BLOB_BYTES}
        env = {**stack.SERVICE_ENV, "DATABASE_URL": url}
        running = {}
        for i, (name, factory) in enumerate(FLOORS.items()):
            port = stack.free_port()
            log = Path(tmp) / f"{i}.log"
            running[name] = servers.enter_context(
                stack.serving(floor_command(factory, port), port, env, log)
            )
        running["service"] = servers.enter_context(
            stack.service(url, stack.SERVICE_ENV, Path(tmp) / "service.log")
        )
        for svc in running.values():
            run_wrk(svc.base_url, "get", users=USERS, body=body, seconds=2)  # warm-up
        for round_no in range(1, args.rounds + 1):
            for case in cases:
                for name, svc in stack.rotated(running.items(), round_no):
                    stack.forget_rate_limits(url)
                    stack.settle(0.5)
                    result = run_wrk(
                        svc.base_url, case, users=USERS, body=body, seconds=args.seconds
                    )
                    runs.setdefault((case, name), []).append(result)
                stack.settle(0.5)
                ceiling = run_pgbench(url, case, users=USERS, fields=fields, seconds=args.seconds)
                runs.setdefault((case, CEILING), []).append(ceiling)
            print(f"round {round_no} done", flush=True)
    for case in cases:
        report(case, {name: results for (c, name), results in runs.items() if c == case}, args)


def report(case: str, runs: dict[str, list[Result]], args: argparse.Namespace) -> None:
    """Medians per server, and two ratios of each round's throughput, as the median over
    rounds (and their range): to the ceiling, and to the floor (`Starlette + batcher`)
    of the same round. Taken round by round, a ratio compares runs a few seconds apart,
    so the machine's slower and faster minutes cancel out of it."""
    ceiling = [r.rate for r in runs[CEILING]]
    floor = [r.rate for r in runs[FLOOR]]
    print(f"\n{case}, wrk -t2 -c32, medians over {args.rounds} rounds of {args.seconds} s")
    print(
        f"{'':<22} {'req/s':>7} {'p50':>6} {'p99':>7} | {'µs/request: client':>18} "
        f"{'PostgreSQL':>10} {'wrk':>5} | errors | to ceiling       | to the floor"
    )
    for name, results in runs.items():
        cpu = {k: statistics.median((r.cpu_us or {}).get(k, 0.0) for r in results)
               for k in ("service", "pgbench", "postgres", "wrk")}  # fmt: skip
        client = cpu["pgbench"] if name == CEILING else cpu["service"]
        print(
            f"{name:<22} {statistics.median(r.rate for r in results):7.0f} "
            f"{statistics.median(r.p50 for r in results):6.2f} "
            f"{statistics.median(r.p99 for r in results):7.2f} | {client:18.0f} "
            f"{cpu['postgres']:10.0f} {cpu['wrk']:5.0f} | {sum(r.errors for r in results):6} | "
            f"{_ratios(results, ceiling)} | {_ratios(results, floor)}"
        )


def _ratios(results: list[Result], reference: list[float]) -> str:
    """Each round's throughput over the reference's in that round: median (min-max)."""
    ratios = [r.rate / ref for r, ref in zip(results, reference, strict=True)]
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


if __name__ == "__main__":
    main()
