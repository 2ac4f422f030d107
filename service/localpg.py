"""A PostgreSQL cluster of our own on 127.0.0.1, for `make dev` and the test suite.

`initdb` refuses to run as root, so as root the cluster belongs to the `postgres` user and
every server command runs through `runuser`. Usage:

    python -m service.localpg start DIR [--port N]   # init if needed, start, print the URL
    python -m service.localpg stop DIR
    python -m service.localpg url DIR
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

DATABASE = "logikids"
USER = "logikids"


def bindir() -> Path:
    """Where initdb, pg_ctl and postgres live (pg_config knows; Debian hides them)."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").exists():
            return Path(out.stdout.strip())
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise SystemExit(
        "PostgreSQL server binaries not found (install postgresql, or set DATABASE_URL)"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalCluster:
    """One data directory, one postmaster on 127.0.0.1:port, trust authentication."""

    def __init__(self, datadir: Path, port: int | None = None) -> None:
        self.datadir = Path(datadir).resolve()
        self.bin = bindir()
        port_file = self.datadir / "logikids.port"
        if port is None and port_file.exists():
            port = int(port_file.read_text())
        self.port = port or free_port()
        self._as_postgres = os.geteuid() == 0

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        cmd = list(args)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, **kwargs)

    def initialised(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def init(self) -> None:
        """initdb with a `logikids` superuser and database, owned by the right user."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.datadir, entry.pw_uid, entry.pw_gid)
            probe = self._run("test", "-w", str(self.datadir), check=False)
            if probe.returncode != 0:
                blocked = next(
                    (p for p in self.datadir.parents if not os.stat(p).st_mode & 0o001), None
                )
                where = (
                    f" ({blocked} is mode {os.stat(blocked).st_mode & 0o777:o})" if blocked else ""
                )
                raise SystemExit(
                    f"the postgres user cannot reach {self.datadir}{where}: as root the "
                    "cluster runs as postgres, which must be able to traverse every parent "
                    "folder; `chmod o+x` that folder, or set PGDATA_DEV to a folder elsewhere"
                )
        self._run(
            str(self.bin / "initdb"),
            "-D", str(self.datadir),
            "-U", USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        (self.datadir / "logikids.port").write_text(str(self.port))
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.datadir / "logikids.port", entry.pw_uid, entry.pw_gid)

    def running(self) -> bool:
        result = self._run(
            str(self.bin / "pg_ctl"), "status", "-D", str(self.datadir),
            check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return result.returncode == 0

    def start(
        self, *, fast_and_unsafe: bool = False, settings: Mapping[str, str] | None = None
    ) -> None:
        """Start the postmaster and wait until it accepts connections.

        `fast_and_unsafe` turns fsync off: right for throwaway test clusters only.
        `settings` are extra server settings (the benchmark sizes memory and connections).
        """
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        if fast_and_unsafe:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        for name, value in (settings or {}).items():
            options += f" -c {name}={value}"
        self._run(
            str(self.bin / "pg_ctl"), "start", "-w", "-t", "60",
            "-D", str(self.datadir),
            "-l", str(self.datadir / "server.log"),
            "-o", options,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def ensure_database(self, name: str = DATABASE) -> None:
        """Create the database unless it exists (createdb says so; that is fine)."""
        result = self._run(
            str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name,
            check=False, capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode != 0 and "already exists" not in result.stderr:
            raise subprocess.CalledProcessError(result.returncode, "createdb", stderr=result.stderr)

    def stop(self, mode: str = "fast") -> None:
        if self.initialised() and self.running():
            self._run(
                str(self.bin / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.datadir),
                stdout=subprocess.DEVNULL,
            )  # fmt: skip

    def postmaster_pid(self) -> int | None:
        pidfile = self.datadir / "postmaster.pid"
        try:
            return int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None


@contextlib.contextmanager
def throwaway_cluster(
    prefix: str = "logikids-pg-",
    *,
    start: bool = True,
    fast_and_unsafe: bool = True,
    settings: Mapping[str, str] | None = None,
) -> Iterator[LocalCluster]:
    """An initialised cluster in a fresh temp folder (started unless `start=False`),
    stopped and deleted afterwards. As root the folder is handed to `postgres`, which
    must be able to reach it: a mkdtemp folder under /tmp is, a checkout under /root
    would not be."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
    cluster = LocalCluster(workdir / "data")
    try:
        cluster.init()
        if start:
            cluster.start(fast_and_unsafe=fast_and_unsafe, settings=settings)
        yield cluster
    finally:
        cluster.stop(mode="immediate")
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.localpg", description=__doc__)
    parser.add_argument("action", choices=["start", "stop", "url"])
    parser.add_argument("datadir", type=Path)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.datadir, args.port)
    if args.action == "start":
        if not cluster.initialised():
            print(f"Creating a PostgreSQL cluster in {cluster.datadir}", file=sys.stderr)
            cluster.init()
        if not cluster.running():
            cluster.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    cluster.ensure_database()
                    break
                except subprocess.CalledProcessError:
                    time.sleep(0.5)
        print(f"PostgreSQL running on 127.0.0.1:{cluster.port}", file=sys.stderr)
        print(cluster.url())
    elif args.action == "stop":
        cluster.stop()
    elif not cluster.initialised():
        print(f"no cluster in {cluster.datadir} (start one with `make dev`)", file=sys.stderr)
        return 1
    else:
        print(cluster.url())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
