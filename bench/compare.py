"""`make bench`: latency and throughput of the sync endpoints, variants side by side.

Starts a throwaway PostgreSQL (or uses BENCH_DATABASE_URL) and one service process per
variant on the same database, then runs the same workload against each variant in
alternating rounds (A B A B ...), so machine noise lands on both alike. Reports the median
per-request latency of sequential requests and the median throughput of concurrent ones,
per variant, plus the ratio to the first variant.

    python bench/bench.py [--rounds 5] [--requests 300] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2

from service.localpg import free_port, throwaway_cluster

VARIANTS: dict[str, dict[str, str]] = {
    "limiter off": {"RATE_LIMIT_PER_HOUR": "0"},
    "limiter on": {"RATE_LIMIT_PER_HOUR": "1000000000"},
}


def payload(size: int) -> dict[str, object]:
    blob = os.urandom(size)
    iv = base64.b64encode(os.urandom(12)).decode()
    return {
        "encryptedBlob": base64.b64encode(blob).decode(),
        "iv": iv,
        "timestamp": int(time.time() * 1000),
        "checksum": hashlib.sha256(blob).hexdigest(),
    }


@contextlib.contextmanager
def database() -> Iterator[str]:
    given = os.environ.get("BENCH_DATABASE_URL")
    if given:
        yield given
        return
    # Durable settings (fsync on), like production: commits cost what they really cost.
    with throwaway_cluster("logikids-bench-pg-", fast_and_unsafe=False) as cluster:
        cluster.ensure_database()
        yield cluster.url()


@contextlib.contextmanager
def service(database_url: str, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port)],
        env={**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING", **env},
        cwd=Path(__file__).resolve().parent.parent,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise SystemExit("service did not start")
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


async def sequential(client: httpx2.AsyncClient, method: str, urls: list[str], body) -> float:
    """Median seconds per request, one request at a time."""
    times = []
    for url in urls:
        started = time.perf_counter()
        response = await client.request(method, url, json=body)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, (response.status_code, response.text[:200])
    return statistics.median(times)


async def concurrent(
    client: httpx2.AsyncClient, method: str, urls: list[str], body, concurrency: int
) -> float:
    """Requests per second with `concurrency` requests in flight."""
    queue = list(urls)

    async def worker() -> None:
        while queue:
            url = queue.pop()
            response = await client.request(method, url, json=body)
            assert response.status_code == 200, response.status_code

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(urls) / (time.perf_counter() - started)


async def run(bases: dict[str, str], args: argparse.Namespace) -> None:
    body = payload(args.blob_bytes)
    users = [str(uuid.uuid4()) for _ in range(args.requests)]
    limits = httpx2.Limits(max_connections=args.concurrency + 4)
    async with httpx2.AsyncClient(timeout=60, limits=limits) as client:
        for base in bases.values():  # every user exists before GETs are measured
            await concurrent(
                client, "PUT", [f"{base}/api/sync/{u}" for u in users], body, args.concurrency
            )
        workloads = {
            f"PUT {args.blob_bytes} B": ("PUT", "/api/sync/{u}", body),
            f"GET {args.blob_bytes} B": ("GET", "/api/sync/{u}", None),
            "POST verify": ("POST", "/api/sync/{u}/verify", None),
        }
        latency: dict[tuple[str, str], list[float]] = {}
        throughput: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for name, (method, path, payload_body) in workloads.items():
                for variant, base in bases.items():
                    urls = [base + path.format(u=u) for u in users]
                    latency.setdefault((name, variant), []).append(
                        await sequential(client, method, urls[: args.requests // 3], payload_body)
                    )
                    throughput.setdefault((name, variant), []).append(
                        await concurrent(client, method, urls, payload_body, args.concurrency)
                    )
    first = next(iter(bases))
    print(
        f"\n{args.rounds} rounds, {args.requests} requests per round and variant, "
        f"concurrency {args.concurrency}, variants alternated; medians over rounds"
    )
    header = ("workload", "variant", "latency ms", "ratio", "req/s", "ratio")
    print("{:<18} {:<14} {:>11} {:>6} {:>8} {:>6}".format(*header))
    for name in workloads:
        for variant in bases:
            lat = statistics.median(latency[(name, variant)]) * 1000
            rps = statistics.median(throughput[(name, variant)])
            lat0 = statistics.median(latency[(name, first)]) * 1000
            rps0 = statistics.median(throughput[(name, first)])
            print(
                f"{name:<18} {variant:<14} {lat:>11.3f} {lat / lat0:>6.2f} {rps:>8.0f} "
                f"{rps / rps0:>6.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--blob-bytes", type=int, default=10_000)
    args = parser.parse_args()
    with database() as url, contextlib.ExitStack() as stack:
        bases = {name: stack.enter_context(service(url, env)) for name, env in VARIANTS.items()}
        asyncio.run(run(bases, args))


if __name__ == "__main__":
    main()
