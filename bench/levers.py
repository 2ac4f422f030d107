"""`make bench-levers`: service settings compared side by side under the same wrk load.

    python -m bench.levers --variant "pool 4:DB_POOL_MAX=4" --variant "pool 16:DB_POOL_MAX=16" \
        [--cases get,put,verify,mixed] [--rounds 5] [--seconds 5] [--connections 32]

`--connections 1,8,16,32` runs every case at each load, for latency against load.

A variant named `NAME@PATH` runs the code of another checkout at PATH, for before/after
comparisons of code changes on one schema:

    git worktree add /tmp/before <commit>
    python -m bench.levers --variant "before@/tmp/before:" --variant "after:"

Every variant runs as its own service (the production shape of bench/stack.py plus the
variant's settings) on one database. Each round runs every case against every variant in
turn, alternating, and starts one variant later than the round before, so the machine's
noise lands on all of them alike, and so does whatever the place in the order costs (two
runs of the same code, first and third, once measured 1.09x apart); the report gives the
median over rounds, each variant's ratio to the first, and the CPU per request of the
service's processes, of PostgreSQL and of wrk (bench/load.py: every uvicorn worker on the
machine counts as the service's, so only the idle variants add to a variant's number).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import tempfile
from pathlib import Path

from bench import stack
from bench.load import Result, run_wrk


def parse_variant(text: str) -> tuple[str, tuple[Path, dict[str, str]]]:
    """`NAME[@CHECKOUT]:K=V,K=V` -> (name, (checkout, settings))."""
    label, _, settings = text.partition(":")
    name, _, checkout = label.partition("@")
    env = dict(item.split("=", 1) for item in settings.split(",") if item)
    return name, (Path(checkout).resolve() if checkout else stack.ROOT, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, metavar="NAME:K=V,K=V")
    parser.add_argument("--cases", default="get,put,verify,mixed")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument(
        "--connections", default="32",
        help="wrk connections, or several to compare, e.g. 1,8,16,32 (latency against load)",
    )  # fmt: skip
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--blob-bytes", type=int, default=4096)
    args = parser.parse_args()
    variants = dict(parse_variant(v) for v in args.variant)
    cases = args.cases.split(",")
    connections = [int(c) for c in args.connections.split(",")]
    runs: dict[tuple[str, int, str], list[Result]] = {}  # (case, connections, variant)
    with (
        stack.database() as url,
        tempfile.TemporaryDirectory(prefix="logikids-bench-") as tmp,
        contextlib.ExitStack() as services,
    ):
        stack.migrate(url)
        stack.seed(url, 1, args.users, args.blob_bytes)
        body = Path(tmp) / "body.json"
        stack.Payload(args.blob_bytes).write(body)
        running = {
            name: services.enter_context(
                stack.service(url, {**stack.SERVICE_ENV, **env}, Path(tmp) / f"{i}.log", root=root)
            )
            for i, (name, (root, env)) in enumerate(variants.items())
        }
        for svc in running.values():
            run_wrk(svc.base_url, "mixed", users=args.users, body=body, seconds=2)  # warm-up
        for round_no in range(1, args.rounds + 1):
            for case, conns in itertools.product(cases, connections):
                for name, svc in stack.rotated(running.items(), round_no):
                    stack.forget_rate_limits(url)
                    stack.settle(0.5)
                    result = run_wrk(
                        svc.base_url, case, users=args.users, body=body, seconds=args.seconds,
                        threads=min(2, conns), connections=conns,
                    )  # fmt: skip
                    runs.setdefault((case, conns, name), []).append(result)
            print(f"round {round_no} done", flush=True)
    first = next(iter(variants))
    print(f"\nmedians over {args.rounds} rounds of {args.seconds} s, wrk -t2 (-t1 for -c1)")
    print(
        f"{'case':<7} {'conns':>5} {'variant':<22} {'req/s':>7} {'ratio':>6} {'p50':>7} "
        f"{'p99':>7} errors | µs/request: service PostgreSQL  wrk"
    )
    for case, conns in itertools.product(cases, connections):
        base = statistics.median(r.rate for r in runs[(case, conns, first)])
        for name in variants:
            results = runs[(case, conns, name)]
            rate = statistics.median(r.rate for r in results)
            p50 = statistics.median(r.p50 for r in results)
            p99 = statistics.median(r.p99 for r in results)
            errors = sum(r.errors for r in results)
            cpu = [
                statistics.median((r.cpu_us or {}).get(kind, 0.0) for r in results)
                for kind in ("service", "postgres", "wrk")
            ]
            print(
                f"{case:<7} {conns:>5} {name:<22} {rate:7.0f} {rate / base:6.2f} "
                f"{p50:7.2f} {p99:7.2f} {errors:>6} | {cpu[0]:19.0f} {cpu[1]:10.0f} {cpu[2]:4.0f}"
            )


if __name__ == "__main__":
    main()
