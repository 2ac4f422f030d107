"""`make bench-scale`: how cost grows with the number of stored records.

    python -m bench.scale [--sizes 1000,100000,1000000] [--seconds 10] [--expired 1000,10000,100000]

One durable PostgreSQL and one production-shaped service (bench/stack.py). The table is
grown to each size in turn (4 KB blobs, so 1M records is about 6 GB with TOAST), and at
each size wrk measures GET and PUT over users picked from the whole table. Then the GDPR
cleanup (`logikids-sync cleanup`, the real CLI) is timed against growing numbers of expired
records sitting next to the live ones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import stack
from bench.load import Result, run_wrk

BLOB = 4096
EXPIRED_AGE_DAYS = 800
"""Older than the default 730-day horizon, so the cleanup erases them."""


def grow_and_measure(
    url: str, svc: stack.Service, sizes: list[int], seconds: int, body: Path
) -> dict[int, dict[str, object]]:
    results: dict[int, dict[str, object]] = {}
    have = 0
    for size in sizes:
        started = time.monotonic()
        stack.seed(url, have + 1, size, BLOB)
        seeded = time.monotonic() - started
        table_bytes = stack.table_size(url)  # before the PUTs below leave dead versions
        have = size
        run_wrk(svc.base_url, "get", users=size, body=body, seconds=3)  # warm the statements
        cases: dict[str, Result] = {}
        for mode in ("get", "put"):
            for connections in (1, 32):  # one client alone, then wrk -t2 -c32
                stack.forget_rate_limits(url)
                stack.settle()
                cases[f"{mode}_c{connections}"] = run_wrk(
                    svc.base_url, mode, users=size, body=body, seconds=seconds,
                    threads=min(2, connections), connections=connections,
                )  # fmt: skip
        results[size] = {
            "seed_seconds": seeded,
            "table_bytes": table_bytes,
            "bytes_per_record": table_bytes / size,
            **{mode: r.__dict__ | {"rate": r.rate} for mode, r in cases.items()},
        }
        print(
            f"{size:>9,} records, {table_bytes / 2**30:.2f} GiB ({table_bytes / size:,.0f} bytes "
            f"per record), seeded in {seeded:.0f} s",
            flush=True,
        )
        for name, r in cases.items():
            print(
                f"    {name:<7} {r.rate:7.0f}/s  p50 {r.p50:6.2f} ms  p90 {r.p90:6.2f} ms  "
                f"p99 {r.p99:6.2f} ms  errors {r.errors}",
                flush=True,
            )
    return results


def time_cleanups(url: str, live: int, expired_counts: list[int]) -> dict[int, float]:
    """Seconds `logikids-sync cleanup` takes to erase each number of expired records."""
    timings: dict[int, float] = {}
    first = 10_000_000  # expired users live in an id range of their own
    for count in expired_counts:
        stack.seed(url, first, first + count - 1, BLOB, age_days=EXPIRED_AGE_DAYS)
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "service", "cleanup"],
            env={**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "WARNING"},
            cwd=stack.ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        timings[count] = time.monotonic() - started
        print(
            f"cleanup of {count:>7,} expired records next to {live:,} live ones: "
            f"{timings[count]:.2f} s ({count / timings[count]:,.0f} records/s)",
            flush=True,
        )
        first += count
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--expired", default="1000,10000,100000")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    with stack.database() as url, tempfile.TemporaryDirectory(prefix="logikids-bench-") as tmp:
        stack.migrate(url)
        body = Path(tmp) / "small.json"
        stack.Payload(BLOB).write(body)
        with stack.service(url, stack.SERVICE_ENV, Path(tmp) / "service.log") as svc:
            growth = grow_and_measure(url, svc, sizes, args.seconds, body)
        cleanup = time_cleanups(url, sizes[-1], [int(x) for x in args.expired.split(",")])
    first, last = growth[sizes[0]], growth[sizes[-1]]
    for name in first:
        if isinstance(first[name], dict):
            print(
                f"{name:<7} at {sizes[-1]:,} / at {sizes[0]:,} records: p50 "
                f"{last[name]['p50'] / first[name]['p50']:.2f}x, throughput "
                f"{last[name]['rate'] / first[name]['rate']:.2f}x"
            )
    if args.json:
        args.json.write_text(
            json.dumps({"growth": growth, "cleanup_seconds": cleanup}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
