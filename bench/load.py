"""Load generation with wrk (Debian's `wrk`): a C load generator, so the client costs
little CPU next to the service on a 2-core machine, and its latency histogram gives
exact percentiles."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).with_name("wrk") / "sync.lua"


@dataclass(frozen=True)
class Result:
    """One load run: throughput, latency percentiles (ms), anything that went wrong, and
    the CPU microseconds per request each kind of process used (when measured)."""

    requests: int
    seconds: float
    p50: float
    p90: float
    p99: float
    errors: int
    cpu_us: dict[str, float] | None = None

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def wrk_path() -> str:
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    return found


def run_wrk(
    base_url: str,
    mode: str,
    *,
    users: int,
    body: Path,
    threads: int = 2,
    connections: int = 32,
    seconds: int = 10,
) -> Result:
    """Run one wrk load of `mode` (get, put, verify, mixed) and parse its summary."""
    before = cpu_seconds()
    children_before = children_cpu()
    out = subprocess.run(
        [
            wrk_path(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
            "-s", str(LUA), base_url, "--", mode, str(users), str(body),
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    after = cpu_seconds()
    after["wrk"] = before["wrk"] + children_cpu() - children_before  # wrk has exited
    line = next(x for x in out.stdout.splitlines() if x.startswith("BENCH_JSON "))
    data = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(
        data[k]
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return Result(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50=data["p50_us"] / 1000,
        p90=data["p90_us"] / 1000,
        p99=data["p99_us"] / 1000,
        errors=errors,
        cpu_us={k: (after[k] - before[k]) * 1e6 / max(1, data["requests"]) for k in after},
    )


def children_cpu() -> float:
    """CPU seconds of this process's exited children so far (wrk, pgbench)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by the processes of a run, by kind: the service (its
    supervisor and workers), PostgreSQL, and wrk. Read from /proc, so deltas around a
    load run tell where a request's CPU goes. PostgreSQL's count includes the backends
    that have exited (the postmaster's reaped children: pgbench's, say). It counts every
    PostgreSQL on the machine: run benchmarks with nothing else running."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = {"service": 0.0, "postgres": 0.0, "wrk": 0.0}
    postgres: dict[int, tuple[int, float, float]] = {}  # pid: (parent, own, reaped)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        used = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        if comm == "wrk":
            totals["wrk"] += used
        elif comm.startswith("postgres") or cmdline.startswith(b"postgres"):
            reaped = (int(fields[13]) + int(fields[14])) / tick  # cutime + cstime
            postgres[int(entry.name)] = (int(fields[1]), used, reaped)
        elif b"spawn_main" in cmdline or b"service\0serve" in cmdline:
            totals["service"] += used
    for parent, used, reaped in postgres.values():
        # The postmaster (whose parent is no postgres) also counts its exited backends.
        totals["postgres"] += used + (reaped if parent not in postgres else 0.0)
    return totals
