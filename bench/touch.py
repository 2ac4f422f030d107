"""How often GET should write `last_accessed`: the database's ceiling for the GET statement
as shipped (a write at most once an hour per record) against a write on every read.

    python -m bench.touch [--rounds 3] [--seconds 5]

pgbench -M prepared, 32 clients, the two variants alternating round after round.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench import stack
from bench.ceiling import find_pgbench, script

HOURLY = "last_accessed < now() - interval '1 hour'"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    shipped = script("get", 1000)
    if HOURLY not in shipped:
        raise SystemExit("fetch_record no longer has the hourly condition this compares")
    variants = {"hourly (shipped)": shipped, "every read": shipped.replace(HOURLY, "true")}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    with stack.database() as url, tempfile.TemporaryDirectory() as tmp:
        stack.migrate(url)
        stack.seed(url, 1, 1000, 4096)
        files = {}
        for i, (name, text) in enumerate(variants.items()):
            files[name] = Path(tmp) / f"{i}.sql"
            files[name].write_text(text)
        for _ in range(args.rounds):
            for name, path in files.items():
                out = subprocess.run(
                    [
                        find_pgbench() or "pgbench", "-n", "-M", "prepared", "-c32", "-j2",
                        f"-T{args.seconds}",
                        "-f", str(path), url,
                    ],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                tps = next(x for x in out.stdout.splitlines() if x.startswith("tps"))
                rates[name].append(float(tps.split()[2]))
    for name, values in rates.items():
        print(f"{name:<18} median {statistics.median(values):9.0f} tx/s  rounds {values}")


if __name__ == "__main__":
    main()
