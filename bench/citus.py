"""`make bench-citus`: the service on a 3-node Citus cluster next to the same service on
one plain PostgreSQL, side by side under the same wrk load, on this one machine.

    python -m bench.citus [--cases get,put,verify,mixed] [--rounds 3] [--seconds 5]
                          [--explain]

Both databases run the same PostgreSQL binaries (the system's, which Citus is built
into) with the benchmark's durable settings: plain is one cluster, Citus is a
coordinator and two workers, each a cluster of its own, with `user_sync_data`
distributed by `user_id` by the service's own `migrate`. One service (the production
shape of bench/stack.py) runs against each; every round runs each case against both in
turn. Besides throughput and latency it reports the CPU per request of the service, of
the coordinator and of the workers, which says where Citus's time goes. `--explain`
prints Citus's plan of every sync statement first.

On one machine Citus can only be slower: a request crosses two PostgreSQL servers
(coordinator, then the worker) on the same two cores. What it buys is room to grow past
one server; docs/scaling.md reads these numbers that way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import statistics
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

from bench import stack
from bench.load import Result, run_wrk
from service.db import queries
from service.localpg import LocalCluster, cluster_user
from tests.citus.harness import NODE_SETTINGS, CitusCluster, citus_bindir

EXPLAIN = "EXPLAIN (COSTS OFF) "
"""Prefixed to a named query's own text: the plan of exactly what the service runs."""

EXPLAINED = [
    "store_record",
    "store_record_unless_match",
    "replace_record_if_match",
    "fetch_record",
    "record_version",
    "erase_record",
    "erase_record_if_match",
]


def _sample(name: str) -> dict[str, object]:
    version = uuid.UUID("7d0f6c4e-8a51-4c1e-9f8e-2b1c3d4e5f60")
    fields = stack.Payload(64).fields()
    values = {
        "user_id": uuid.UUID(stack.user_id(1)),
        "encrypted_blob": fields["encryptedBlob"],
        "iv": fields["iv"],
        "timestamp": fields["timestamp"],
        "checksum": fields["checksum"],
        "blob_size": 64,
        "version": version,
        "versions": [version],
        "excluded_versions": None,
        "known_versions": None,
        "any_version": False,
    }
    return {key: values[key] for key in getattr(queries, name).parameters}


def explain(url: str) -> None:
    """Citus's plan of each sync statement, as docs/scaling.md shows them."""
    with psycopg.connect(url, autocommit=True) as conn:
        for name in EXPLAINED:
            query = getattr(queries, name)
            rows = conn.execute(EXPLAIN + query.sql, _sample(name))
            plan = "\n".join(f"    {row[0]}" for row in rows)
            print(f"{name}:\n{plan}\n", flush=True)


@contextlib.contextmanager
def databases() -> Iterator[tuple[str, CitusCluster, LocalCluster]]:
    """(plain URL, the Citus cluster, the plain node), started with the same binaries and
    settings, stopped and deleted afterwards."""
    binaries = citus_bindir()
    workdir = Path(tempfile.mkdtemp(prefix="logikids-bench-citus-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(cluster_user())
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
    cluster = CitusCluster(workdir / "citus", bindir=binaries)
    plain = LocalCluster(workdir / "plain", binaries=binaries)
    settings = {**stack.POSTGRES_SETTINGS, "shared_buffers": "512MB"}
    try:
        plain.init()
        plain.start(fast_and_unsafe=False, settings=settings)
        plain.ensure_database()
        for node in cluster.nodes:
            node.init()
            node.start(fast_and_unsafe=False, settings={**settings, **NODE_SETTINGS})
        yield plain.url(), cluster, plain
    finally:
        for node in [plain, *cluster.nodes]:
            with contextlib.suppress(Exception):
                node.stop(mode="immediate")
        shutil.rmtree(workdir, ignore_errors=True)


def node_cpu(node: LocalCluster) -> float:
    """CPU seconds of one node: its postmaster and backends, exited ones included."""
    tick = os.sysconf("SC_CLK_TCK")
    pid = node.postmaster_pid()
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        own = (int(fields[11]) + int(fields[12])) / tick
        if int(entry.name) == pid:
            total += own + (int(fields[13]) + int(fields[14])) / tick
        elif int(fields[1]) == pid:
            total += own
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="get,put,verify,mixed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--blob-bytes", type=int, default=4096)
    parser.add_argument("--explain", action="store_true")
    args = parser.parse_args()
    cases = args.cases.split(",")
    runs: dict[tuple[str, str], list[tuple[Result, dict[str, float]]]] = {}
    with databases() as (plain_url, cluster, plain), tempfile.TemporaryDirectory() as tmp:
        citus_url = cluster.create_database(stack.DATABASE)
        targets = {"plain": plain_url, "citus": citus_url}
        for url in targets.values():
            stack.migrate(url)  # on the coordinator this distributes user_sync_data
            stack.seed(url, 1, args.users, args.blob_bytes)
        if args.explain:
            explain(citus_url)
        body = Path(tmp) / "body.json"
        stack.Payload(args.blob_bytes).write(body)
        with contextlib.ExitStack() as services:
            running = {
                name: services.enter_context(
                    stack.service(url, stack.SERVICE_ENV, Path(tmp) / f"{name}.log")
                )
                for name, url in targets.items()
            }
            for svc in running.values():
                run_wrk(svc.base_url, "mixed", users=args.users, body=body, seconds=2)
            for round_no in range(1, args.rounds + 1):
                for case in cases:
                    for name, svc in running.items():
                        stack.forget_rate_limits(targets[name])
                        stack.settle(0.5)
                        nodes = {"plain": [plain]} if name == "plain" else {
                            "coordinator": [cluster.coordinator], "workers": cluster.workers,
                        }  # fmt: skip
                        before = {k: sum(node_cpu(n) for n in v) for k, v in nodes.items()}
                        result = run_wrk(
                            svc.base_url, case, users=args.users, body=body, seconds=args.seconds
                        )
                        used = {
                            k: (sum(node_cpu(n) for n in v) - before[k]) * 1e6 / result.requests
                            for k, v in nodes.items()
                        }
                        runs.setdefault((case, name), []).append((result, used))
                print(f"round {round_no} done", flush=True)
    print(f"\nmedians over {args.rounds} rounds of {args.seconds} s, wrk -t2 -c32")
    print(
        f"{'case':<7} {'database':<7} {'req/s':>7} {'ratio':>6} {'p50':>6} {'p99':>7} "
        f"{'service us':>10} {'database us/request':<30}"
    )
    for case in cases:
        base = statistics.median(r.rate for r, _ in runs[(case, "plain")])
        for name in ("plain", "citus"):
            results = runs[(case, name)]
            rate = statistics.median(r.rate for r, _ in results)
            p50 = statistics.median(r.p50 for r, _ in results)
            p99 = statistics.median(r.p99 for r, _ in results)
            service = statistics.median((r.cpu_us or {}).get("service", 0) for r, _ in results)
            keys = results[0][1].keys()
            database = ", ".join(
                f"{k} {statistics.median(u[k] for _, u in results):.0f}" for k in keys
            )
            print(
                f"{case:<7} {name:<7} {rate:7.0f} {rate / base:6.2f} {p50:6.2f} {p99:7.2f} "
                f"{service:10.0f} {database}"
            )


if __name__ == "__main__":
    main()
