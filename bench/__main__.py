"""`make bench`: the service under wrk load next to the database ceiling, in one run.

    python -m bench [--rounds 3] [--seconds 10] [--users 1000] [--json FILE]

Starts a durable PostgreSQL and `logikids-sync serve` the way production runs it (two
workers, pool of 4 each, rate limiter on and set high, access log on), seeds USERS users
with 4 KB blobs, then for each case (GET, PUT, verify, a 6:3:1 mix) runs
`wrk -t2 -c32` against the service and `pgbench -M prepared -c32 -j2` on the same
statements and data, alternating them round after round so machine noise lands on both.
Reports medians over rounds: requests/s, p50/p90/p99, and service / ceiling. Then the
1 MB cases: sequential PUT+GET latency on an idle service, 32 concurrent 1 MB PUTs and
GETs, and each worker's peak memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx2

from bench import stack
from bench.ceiling import run_pgbench
from bench.load import Result, run_wrk

CASES = ("get", "put", "verify", "mixed")
SMALL = 4096
LARGE = 1_000_000


def median_result(results: list[Result]) -> Result:
    """The round with the median throughput (its percentiles belong together)."""
    ordered = sorted(results, key=lambda r: r.rate)
    return ordered[len(ordered) // 2]


def small_cases(
    svc: stack.Service, url: str, args: argparse.Namespace, body: Path, fields: dict
) -> dict[str, dict[str, list[Result]]]:
    runs: dict[str, dict[str, list[Result]]] = {c: {"service": [], "ceiling": []} for c in CASES}
    run_wrk(svc.base_url, "mixed", users=args.users, body=body, seconds=3)  # warm-up
    for round_no in range(1, args.rounds + 1):
        for case in CASES:
            stack.forget_rate_limits(url)
            stack.settle()
            service = run_wrk(svc.base_url, case, users=args.users, body=body, seconds=args.seconds)
            stack.forget_rate_limits(url)
            stack.settle()
            ceiling = run_pgbench(url, case, users=args.users, fields=fields, seconds=args.seconds)
            runs[case]["service"].append(service)
            runs[case]["ceiling"].append(ceiling)
            print(
                f"round {round_no} {case:<6} service {service.rate:8.0f}/s p99 "
                f"{service.p99:6.2f} ms (errors {service.errors})   ceiling "
                f"{ceiling.rate:8.0f}/s p99 {ceiling.p99:6.2f} ms",
                flush=True,
            )
    return runs


def large_cases(
    svc: stack.Service, url: str, args: argparse.Namespace, tmp: Path
) -> dict[str, object]:
    """1 MB blobs: idle PUT+GET latency, then 32 concurrent PUTs and GETs with wrk."""
    stack.quiesce(url)
    body = tmp / "large.json"
    stack.Payload(LARGE).write(body)
    raw = body.read_bytes()
    headers = {"Content-Type": "application/json"}
    pairs = []
    with httpx2.Client(timeout=30) as client:
        for i in range(args.large_pairs + 3):
            record = f"{svc.base_url}/api/sync/{stack.user_id(args.users + 1 + i % 5)}"
            started = time.perf_counter()
            put = client.put(record, content=raw, headers=headers)
            got = client.get(record)
            elapsed = time.perf_counter() - started
            if put.status_code != 200 or got.status_code != 200:
                raise SystemExit(f"1 MB PUT/GET failed: {put.status_code} {got.status_code}")
            if i >= 3:  # the first pairs warm the connection and the statements
                pairs.append(elapsed * 1000)
    put = run_wrk(svc.base_url, "put", users=args.users, body=body, seconds=args.seconds)
    get = run_wrk(svc.base_url, "get", users=args.users, body=body, seconds=args.seconds)
    return {
        "put_get_pair_ms": {
            "p50": statistics.median(pairs),
            "p90": statistics.quantiles(pairs, n=10)[-1],
            "pairs": len(pairs),
        },
        "put_32": put,
        "get_32": get,
        "peak_rss_mb": svc.peak_rss_mb(),
    }


def report(runs: dict[str, dict[str, list[Result]]], large: dict[str, object]) -> dict:
    out: dict[str, object] = {}
    print("\ncase     service req/s  p50 ms  p90 ms  p99 ms  errors | ceiling tx/s  p99 ms | ratio")
    for case, sides in runs.items():
        svc, ceil = median_result(sides["service"]), median_result(sides["ceiling"])
        ratio = svc.rate / ceil.rate
        ratios = [s.rate / c.rate for s, c in zip(sides["service"], sides["ceiling"], strict=True)]
        print(
            f"{case:<8} {svc.rate:13.0f} {svc.p50:7.2f} {svc.p90:7.2f} {svc.p99:7.2f} "
            f"{sum(r.errors for r in sides['service']):7d} | {ceil.rate:12.0f} {ceil.p99:7.2f} "
            f"| {ratio:5.2f} (rounds {', '.join(f'{r:.2f}' for r in ratios)})"
        )
        out[case] = {
            "service": svc.__dict__ | {"rate": svc.rate},
            "ceiling": ceil.__dict__ | {"rate": ceil.rate},
            "ratio": ratio,
            "round_ratios": ratios,
        }
    print(
        "\nCPU per request (us), median rounds: service / PostgreSQL / wrk under the "
        "service load | PostgreSQL / pgbench under the ceiling"
    )
    for case, sides in runs.items():
        cpu = median_result(sides["service"]).cpu_us or {}
        ceiling_cpu = median_result(sides["ceiling"]).cpu_us or {}
        print(
            f"{case:<8} "
            + " / ".join(f"{cpu.get(k, 0):.0f}" for k in ("service", "postgres", "wrk"))
            + " | "
            + " / ".join(f"{ceiling_cpu.get(k, 0):.0f}" for k in ("postgres", "pgbench"))
        )
    if not large:
        return out
    pair = large["put_get_pair_ms"]
    print(
        f"\n1 MB PUT then GET, one client, idle: p50 {pair['p50']:.1f} ms, "
        f"p90 {pair['p90']:.1f} ms over {pair['pairs']} pairs"
    )
    for name in ("put_32", "get_32"):
        r = large[name]
        print(
            f"1 MB {name[:3].upper()} x32 in flight: {r.rate:.0f}/s, p50 {r.p50:.1f} ms, "
            f"p99 {r.p99:.1f} ms, errors {r.errors}"
        )
    peaks = ", ".join(f"{mb:.0f} MB" for mb in large["peak_rss_mb"].values())
    print(f"peak RSS per worker over the whole run: {peaks}")
    out["large"] = {
        **{k: v for k, v in large.items() if k not in ("put_32", "get_32")},
        "put_32": large["put_32"].__dict__,
        "get_32": large["get_32"].__dict__,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--large-pairs", type=int, default=30)
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--skip-small", action="store_true", help="only the 1 MB cases")
    only.add_argument("--skip-large", action="store_true", help="only the 4 KB cases")
    parser.add_argument(
        "--unix-socket", action="store_true",
        help="service and pgbench reach PostgreSQL over a Unix socket instead of TCP",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE",
        help="override a service setting, e.g. --env WORKERS=3",
    )  # fmt: skip
    args = parser.parse_args()
    env = {**stack.SERVICE_ENV, **dict(item.split("=", 1) for item in args.env)}
    print("service settings:", " ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    with (
        stack.database(unix_socket=args.unix_socket) as url,
        tempfile.TemporaryDirectory(prefix="logikids-bench-") as tmp,
    ):
        stack.migrate(url)
        stack.seed(url, 1, args.users, SMALL)
        body = Path(tmp) / "small.json"
        fields = stack.Payload(SMALL).write(body) | {"blob_size": SMALL}
        with stack.service(url, env, Path(tmp) / "service.log") as svc:
            runs = {} if args.skip_small else small_cases(svc, url, args, body, fields)
            large = {} if args.skip_large else large_cases(svc, url, args, Path(tmp))
        results = report(runs, large)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
