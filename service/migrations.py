"""Apply migrations/NNN_name.sql in order, each once, each in its own transaction.

Each applied file is recorded with its SHA-256 in `schema_migrations`; a recorded file
that was edited afterwards stops the runner, because the database no longer matches
what the file says. A session advisory lock serialises runners, so replicas that start
together apply every migration exactly once. On a Citus coordinator the runner then
distributes user_sync_data by user_id (distribute_on_citus).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg

from service import MIGRATIONS_DIR
from service.db import queries

logger = logging.getLogger(__name__)

LOCK_KEY = 0x6C6F_6769_6B69_6473 >> 1
"""Advisory lock id ("logikids" in ASCII, halved to fit a signed BIGINT)."""

_FILE_NAME = re.compile(r"(\d{3})_[a-z0-9_]+\.sql")

EARLIER_WORDINGS: dict[str, frozenset[str]] = {
    # The first comment line cited a design document outside the repository; it now
    # cites docs/protocol.md. Same statements, so a database that recorded the old file's
    # digest applied exactly what the file says (tests/test_migrations.py checks this
    # digest against the file as released).
    "002_positive_sizes": frozenset(
        {"1d35a05a5956727a3fd45c6ea000e670c16b504e97a3ec4ab999e4cd8b7bc201"}
    ),
}
"""For a version, the SHA-256 of earlier wordings that differ from its file only in
comments. An applied file must not change (a changed statement goes in a new migration);
rewording a comment should not stop databases that applied the old words, so each such
rewording is listed here, explicitly, rather than comparing files without comments."""


class MigrationError(RuntimeError):
    """The migrations on disk and in the database disagree; the message says how."""


@dataclass(frozen=True)
class Migration:
    """One file of migrations/."""

    version: str
    path: Path
    sha256: str

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    def matches(self, recorded: str) -> bool:
        """Whether a digest recorded in schema_migrations is this file as applied: its
        SHA-256, or that of an earlier comment-only wording (EARLIER_WORDINGS)."""
        return recorded == self.sha256 or recorded in EARLIER_WORDINGS.get(self.version, ())


@dataclass(frozen=True)
class MigrationStatus:
    """A file (or a recorded version without a file) and where it stands."""

    version: str
    state: str  # "applied", "pending", "changed" or "missing-file"
    applied_at: datetime | None = None


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files, ordered by number; a misnamed .sql file is an error."""
    found: list[Migration] = []
    numbers: set[str] = set()
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNN_name.sql")
        if match.group(1) in numbers:
            raise MigrationError(f"{path.name}: two migrations share the number {match.group(1)}")
        numbers.add(match.group(1))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        found.append(Migration(version=path.stem, path=path, sha256=digest))
    return found


async def status(
    conn: psycopg.AsyncConnection, directory: Path = MIGRATIONS_DIR
) -> list[MigrationStatus]:
    """Where each migration stands, without changing the database."""
    applied: dict[str, tuple[str, datetime]] = {}
    if await queries.migrations_table_exists(conn):
        async for version, sha256, applied_at in queries.applied_migrations(conn):
            applied[version] = (sha256.strip(), applied_at)
    result: list[MigrationStatus] = []
    on_disk = discover(directory)
    for migration in on_disk:
        if migration.version not in applied:
            result.append(MigrationStatus(migration.version, "pending"))
            continue
        sha256, applied_at = applied[migration.version]
        state = "applied" if migration.matches(sha256) else "changed"
        result.append(MigrationStatus(migration.version, state, applied_at))
    known = {m.version for m in on_disk}
    for version, (_, applied_at) in sorted(applied.items()):
        if version not in known:
            result.append(MigrationStatus(version, "missing-file", applied_at))
    return result


async def migrate(
    conn: psycopg.AsyncConnection,
    directory: Path = MIGRATIONS_DIR,
    *,
    lock_timeout: float | None = None,
) -> list[str]:
    """Apply every pending migration; return the versions applied by this call.

    `conn` must be in autocommit mode: the advisory lock is held for the session while
    each migration runs in a transaction of its own. With `lock_timeout` (seconds), waiting
    longer than that for the lock, or for a table lock in a migration, is a MigrationError
    instead of a hang.
    """
    migrations = discover(directory)
    if lock_timeout is not None:
        await queries.set_lock_timeout(conn, milliseconds=max(1, int(lock_timeout * 1000)))
    try:
        await queries.lock_migrations(conn, lock_key=LOCK_KEY)
    except psycopg.errors.LockNotAvailable:
        raise MigrationError(
            f"another process has held the migration lock for over {lock_timeout:g}s"
        ) from None
    try:
        await queries.create_migrations_table(conn)
        applied = {
            version: sha256.strip() async for version, sha256, _ in queries.applied_migrations(conn)
        }
        if not applied and await queries.seed_schema_present(conn):
            applied = await _adopt_seed_schema(conn, migrations)
        _refuse_changed(migrations, applied)
        done: list[str] = []
        for migration in migrations:
            if migration.version in applied:
                continue
            logger.info("Applying migration %s", migration.version)
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql.encode("utf-8"))
                    await queries.record_migration(
                        conn, version=migration.version, sha256=migration.sha256
                    )
            except psycopg.DatabaseError as exc:
                raise MigrationError(
                    f"{migration.path.name} failed and was rolled back: {exc}"
                ) from exc
            done.append(migration.version)
        await distribute_on_citus(conn)
        return done
    finally:
        await queries.unlock_migrations(conn, lock_key=LOCK_KEY)


DISTRIBUTED_TABLE = "user_sync_data"
DISTRIBUTION_COLUMN = "user_id"


async def distribute_on_citus(conn: psycopg.AsyncConnection) -> bool:
    """On a Citus coordinator, distribute user_sync_data by user_id; True when this call did.

    Runs after the migrations, under their advisory lock (so replicas starting together
    distribute once), and does nothing: on plain PostgreSQL (no `citus` extension in this
    database); on a coordinator with no worker registered yet (the table stays a local
    table there, and logs so; re-running `migrate` once workers are added distributes it);
    and on a table that is already distributed. The shards get the rows the table held,
    and the coordinator's leftover local copy of them is truncated (queries/citus.sql).

    rate_limit_hits and schema_migrations stay local tables on the coordinator: nothing
    joins them to user_sync_data, and the counters are touched only by their own
    statements.

    Later migrations keep working on the distributed table, with rules of Citus's own.
    Citus propagates ALTER TABLE (ADD/DROP COLUMN, volatile defaults included; ADD
    CONSTRAINT CHECK; ALTER COLUMN TYPE of any column but user_id), CREATE/DROP INDEX and
    the like to every shard, inside the migration's transaction next to its
    schema_migrations row. But for most of them (all but a lone ADD COLUMN, and COMMENT)
    it sends the shards the text it was sent, and that fails when the text holds more
    than one statement ("cannot insert multiple commands into a prepared statement"):
    this runner sends each file as one text, so each statement that changes
    user_sync_data goes in a migration file of its own. Citus also refuses an ADD
    CONSTRAINT next to other subcommands of one ALTER TABLE (as in 002_positive_sizes),
    and what cannot hold per shard (changing user_id's type; a UNIQUE constraint or
    primary key without user_id). A refused migration fails and is rolled back like any
    other. Files up to 005 run before the table is distributed, so they are not bound;
    tests/citus/test_distribution.py applies each kind, and every later file of the
    repository on a distributed table.
    """
    if not await queries.citus_installed(conn):
        return False
    if await queries.citus_distributed(conn, table_name=DISTRIBUTED_TABLE):
        return False
    workers = await queries.citus_worker_count(conn)
    if not workers:
        logger.info(
            "Citus without workers: %s stays a local table until workers are added "
            "(citus_add_node), then run migrate again to distribute it",
            DISTRIBUTED_TABLE,
        )
        return False
    try:
        async with conn.transaction():
            await queries.citus_distribute_user_sync_data(conn)
            await queries.citus_truncate_local_user_sync_data(conn)
    except psycopg.DatabaseError as exc:
        raise MigrationError(
            f"distributing {DISTRIBUTED_TABLE} on Citus failed and was rolled back: {exc}"
        ) from exc
    logger.info(
        "Distributed %s by %s over %d Citus workers",
        DISTRIBUTED_TABLE,
        DISTRIBUTION_COLUMN,
        workers,
    )
    return True


SEED_VERSION = "001_init"


async def _adopt_seed_schema(
    conn: psycopg.AsyncConnection, migrations: list[Migration]
) -> dict[str, str]:
    """Record 001 as applied on a database the seed's initdb script built, so upgrading
    it needs no wiped volume (docs/architecture.md); the later migrations then apply as usual."""
    seed = next((m for m in migrations if m.version == SEED_VERSION), None)
    if seed is None:
        return {}
    await queries.record_migration(conn, version=seed.version, sha256=seed.sha256)
    logger.info("Adopted the existing seed schema (user_sync_data) as %s", seed.version)
    return {seed.version: seed.sha256}


def _refuse_changed(migrations: list[Migration], applied: dict[str, str]) -> None:
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is not None and not migration.matches(recorded):
            raise MigrationError(
                f"migration {migration.path.name} was edited after it was applied "
                f"(applied sha256 {recorded[:12]}…, file now {migration.sha256[:12]}…); "
                "restore the file and put the change in a new migration"
            )
