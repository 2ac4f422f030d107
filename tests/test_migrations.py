"""The migration runner on a real PostgreSQL (docs/architecture.md): in order, once, atomically.

Most tests start from an EMPTY database (`new_database(migrated=False)`); those that need
to change the files work on a temporary copy of migrations/, which `migrate` accepts.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from service import MIGRATIONS_DIR, migrations
from service.migrations import LOCK_KEY, MigrationError
from tests.conftest import test_queries
from tests.paths import REPO_ROOT as PROJECT_ROOT

EXPECTED_VERSIONS = [path.stem for path in sorted(MIGRATIONS_DIR.glob("*.sql"))]
SEED_CHECKS = {"blob_size_limit", "iv_format", "checksum_format"}
CLI_TIMEOUT = 60
"""Seconds a CLI run may take before the test gives up on it (never a timing claim)."""


def apply(url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """One runner on its own connection, as the service's start-up does it."""

    async def run() -> list[str]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await migrations.migrate(conn, directory=directory)

    return asyncio.run(run())


def migration_status(url: str, directory: Path = MIGRATIONS_DIR) -> dict[str, str]:
    async def run() -> list[migrations.MigrationStatus]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            return await migrations.status(conn, directory=directory)

    return {row.version: row.state for row in asyncio.run(run())}


def cli_env(url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": url, "STARTUP_TIMEOUT": "10", **extra}


def run_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "migrate", *args],
        env=cli_env(url),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def cli_states(stdout: str) -> dict[str, str]:
    """`migrate --status` prints `VERSION STATE [APPLIED_AT]`, one migration a line."""
    return {line.split()[0]: line.split()[1] for line in stdout.splitlines() if line.strip()}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recorded(conn: psycopg.Connection) -> dict[str, str]:
    if not test_queries.table_exists(conn, name="schema_migrations"):
        return {}
    return {version: sha256.strip() for version, sha256 in test_queries.applied_versions(conn)}


def names(rows: list[tuple[str]]) -> set[str]:
    return {row[0] for row in rows}


@pytest.fixture
def empty_url(new_database) -> str:
    """A fresh database with no tables at all."""
    return new_database(migrated=False)


@pytest.fixture
def conn(empty_url: str) -> Iterator[psycopg.Connection]:
    """A connection of the test's own to the empty database, to look at what changed."""
    with psycopg.connect(empty_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    """A copy of migrations/ that a test may edit."""
    return Path(shutil.copytree(MIGRATIONS_DIR, tmp_path / "migrations"))


def test_the_project_ships_the_seed_migration_first():
    assert EXPECTED_VERSIONS[0] == "001_init"


# --- a fresh database ---------------------------------------------------------------------


def test_a_fresh_database_gets_every_migration_in_order(empty_url, conn):
    assert apply(empty_url) == EXPECTED_VERSIONS

    assert test_queries.table_exists(conn, name="user_sync_data")
    assert test_queries.table_exists(conn, name="schema_migrations")
    assert names(test_queries.constraint_names(conn, table_name="user_sync_data")) >= SEED_CHECKS
    assert "idx_last_accessed" in names(test_queries.index_names(conn, table_name="user_sync_data"))


def test_each_applied_migration_is_recorded_with_the_sha256_of_its_file(empty_url, conn):
    apply(empty_url)

    assert recorded(conn) == {
        path.stem: sha256_of(path) for path in sorted(MIGRATIONS_DIR.glob("*.sql"))
    }


def test_the_runner_leaves_no_advisory_lock_behind(empty_url, conn):
    apply(empty_url)

    assert test_queries.advisory_locks_held(conn) == 0


def test_a_second_run_applies_nothing_and_changes_no_record(empty_url, conn):
    apply(empty_url)
    before = recorded(conn)

    assert apply(empty_url) == []
    assert recorded(conn) == before


def test_a_new_migration_file_is_applied_on_the_next_run_alone(empty_url, conn, migrations_copy):
    apply(empty_url, migrations_copy)
    new_file = migrations_copy / "900_add_a_note.sql"
    new_file.write_text("ALTER TABLE user_sync_data ADD COLUMN note TEXT;\n", encoding="utf-8")

    assert apply(empty_url, migrations_copy) == ["900_add_a_note"]
    assert "note" in names(test_queries.column_names(conn, table_name="user_sync_data"))
    assert recorded(conn)["900_add_a_note"] == sha256_of(new_file)


# --- files the runner refuses -----------------------------------------------------------


def test_an_applied_migration_edited_afterwards_is_refused_naming_the_file(
    empty_url, conn, migrations_copy
):
    apply(empty_url, migrations_copy)
    edited = migrations_copy / "001_init.sql"
    edited.write_text(edited.read_text(encoding="utf-8") + "\n-- a harmless edit\n", "utf-8")
    (migrations_copy / "900_after_the_edit.sql").write_text("CREATE TABLE after_the_edit ();\n")

    with pytest.raises(MigrationError) as refused:
        apply(empty_url, migrations_copy)

    message = str(refused.value)
    assert "001_init.sql" in message
    assert "edited" in message
    # Refused before anything else ran: the pending file was not applied either.
    assert not test_queries.table_exists(conn, name="after_the_edit")
    assert "900_after_the_edit" not in recorded(conn)
    assert test_queries.advisory_locks_held(conn) == 0


@pytest.mark.parametrize(
    "bad_name", ["3_short_number.sql", "003-dash.sql", "003_UpperCase.sql", "003.sql", "abc.sql"]
)
def test_a_misnamed_migration_file_is_refused_before_touching_the_database(
    empty_url, conn, migrations_copy, bad_name
):
    (migrations_copy / bad_name).write_text("CREATE TABLE should_not_exist ();\n")

    with pytest.raises(MigrationError) as refused:
        apply(empty_url, migrations_copy)

    assert bad_name in str(refused.value)
    assert not test_queries.table_exists(conn, name="schema_migrations")
    assert not test_queries.table_exists(conn, name="user_sync_data")


def test_two_migration_files_with_one_number_are_refused(empty_url, conn, migrations_copy):
    (migrations_copy / "001_again.sql").write_text("CREATE TABLE should_not_exist ();\n")

    with pytest.raises(MigrationError, match="001"):
        apply(empty_url, migrations_copy)

    assert not test_queries.table_exists(conn, name="user_sync_data")


# --- a comment reworded after it was applied ---------------------------------------------

REWORDED = "002_positive_sizes"
EARLIER_FIRST_LINE = "-- An earlier wording of this comment."
RELEASED_AT = "3785fd4"
"""A commit whose 002 has the first line databases applied before it cited docs/protocol.md."""


def earlier_wording(first_line: str = EARLIER_FIRST_LINE) -> bytes:
    """Today's 002 with another first comment line."""
    text = (MIGRATIONS_DIR / f"{REWORDED}.sql").read_bytes()
    return first_line.encode("utf-8") + b"\n" + text.split(b"\n", 1)[1]


@pytest.fixture
def earlier_accepted(monkeypatch):
    """EARLIER_WORDINGS listing `earlier_wording()` for 002, as a rewording would."""
    digest = hashlib.sha256(earlier_wording()).hexdigest()
    monkeypatch.setitem(migrations.EARLIER_WORDINGS, REWORDED, frozenset({digest}))
    return digest


def test_the_listed_earlier_digest_is_002_as_released_with_only_its_first_line_changed():
    shown = subprocess.run(
        ["git", "show", f"{RELEASED_AT}:migrations/{REWORDED}.sql"],
        cwd=PROJECT_ROOT, capture_output=True,
    )  # fmt: skip
    if shown.returncode != 0:
        pytest.skip("no git history here (a source archive, not a clone)")
    released = shown.stdout
    today = (MIGRATIONS_DIR / f"{REWORDED}.sql").read_bytes()
    assert released.split(b"\n", 1)[1] == today.split(b"\n", 1)[1]
    assert migrations.EARLIER_WORDINGS[REWORDED] == {hashlib.sha256(released).hexdigest()}


def test_a_database_that_applied_the_earlier_wording_migrates_and_reports_applied(
    empty_url, conn, migrations_copy, earlier_accepted
):
    (migrations_copy / f"{REWORDED}.sql").write_bytes(earlier_wording())
    apply(empty_url, migrations_copy)
    assert recorded(conn)[REWORDED] == hashlib.sha256(earlier_wording()).hexdigest()

    assert apply(empty_url) == []  # what start-up runs: nothing to do, nothing refused
    assert migration_status(empty_url) == dict.fromkeys(EXPECTED_VERSIONS, "applied")
    assert recorded(conn)[REWORDED] == hashlib.sha256(earlier_wording()).hexdigest()


def test_a_database_that_recorded_any_other_digest_for_it_is_still_refused(
    empty_url, migrations_copy, earlier_accepted
):
    other = earlier_wording("-- Yet another wording, never listed.")
    (migrations_copy / f"{REWORDED}.sql").write_bytes(other)
    apply(empty_url, migrations_copy)

    with pytest.raises(MigrationError, match=f"{REWORDED}.sql was edited"):
        apply(empty_url)
    assert migration_status(empty_url)[REWORDED] == "changed"


# --- a migration that fails -------------------------------------------------------------

BROKEN_MIGRATION = """\
CREATE TABLE half_done (id INTEGER);
ALTER TABLE user_sync_data ADD COLUMN half_done_column INTEGER;
SELECT * FROM no_such_table;
"""


def test_a_failing_migration_rolls_back_completely_and_is_not_recorded(
    empty_url, conn, migrations_copy
):
    (migrations_copy / "900_broken.sql").write_text(BROKEN_MIGRATION, encoding="utf-8")

    with pytest.raises(MigrationError) as failed:
        apply(empty_url, migrations_copy)

    assert "900_broken.sql" in str(failed.value)
    assert "no_such_table" in str(failed.value)
    # The migrations before it ran in transactions of their own and stay applied ...
    assert set(recorded(conn)) == set(EXPECTED_VERSIONS)
    # ... while nothing of the broken one is left behind.
    assert not test_queries.table_exists(conn, name="half_done")
    columns = names(test_queries.column_names(conn, table_name="user_sync_data"))
    assert "half_done_column" not in columns
    assert test_queries.advisory_locks_held(conn) == 0


def test_a_fixed_failing_migration_is_applied_on_the_next_run(empty_url, conn, migrations_copy):
    broken = migrations_copy / "900_broken.sql"
    broken.write_text(BROKEN_MIGRATION, encoding="utf-8")
    with pytest.raises(MigrationError):
        apply(empty_url, migrations_copy)

    broken.write_text("CREATE TABLE half_done (id INTEGER);\n", encoding="utf-8")

    assert apply(empty_url, migrations_copy) == ["900_broken"]
    assert test_queries.table_exists(conn, name="half_done")


def test_a_migration_failing_part_way_through_the_cli_rolls_back_and_reports_it(empty_url, conn):
    """001_init creates its table, then its index collides: neither may remain."""
    test_queries.occupy_the_index_name(conn)

    result = run_cli(empty_url)

    assert result.returncode == 1, result
    assert "migrate failed" in result.stderr
    assert "idx_last_accessed" in result.stderr
    assert not test_queries.table_exists(conn, name="user_sync_data")
    assert recorded(conn) == {}


# --- migrate --status ------------------------------------------------------------------


def test_status_of_a_fresh_database_is_all_pending_and_creates_nothing(empty_url, conn):
    assert migration_status(empty_url) == dict.fromkeys(EXPECTED_VERSIONS, "pending")
    assert not test_queries.table_exists(conn, name="schema_migrations")


def test_status_shows_applied_pending_changed_and_missing_files(empty_url, migrations_copy):
    apply(empty_url, migrations_copy)
    first, *_, last = EXPECTED_VERSIONS
    edited = migrations_copy / f"{first}.sql"
    edited.write_text(edited.read_text(encoding="utf-8") + "\n-- edited\n", encoding="utf-8")
    (migrations_copy / f"{last}.sql").unlink()
    (migrations_copy / "900_not_yet.sql").write_text("SELECT 1;\n")

    states = migration_status(empty_url, migrations_copy)

    assert states[first] == "changed"
    assert states[last] == "missing-file"
    assert states["900_not_yet"] == "pending"
    assert set(states.values()) <= {"applied", "changed", "missing-file", "pending"}


def test_cli_status_on_a_fresh_database_lists_every_migration_as_pending(empty_url, conn):
    result = run_cli(empty_url, "--status")

    assert result.returncode == 0, result
    assert cli_states(result.stdout) == dict.fromkeys(EXPECTED_VERSIONS, "pending")
    assert not test_queries.table_exists(conn, name="schema_migrations")


def test_cli_status_after_migrating_lists_every_migration_as_applied(empty_url):
    assert run_cli(empty_url).returncode == 0

    result = run_cli(empty_url, "--status")

    assert result.returncode == 0, result
    assert cli_states(result.stdout) == dict.fromkeys(EXPECTED_VERSIONS, "applied")


def test_cli_status_reports_an_edited_migration_and_exits_non_zero(empty_url, conn):
    assert run_cli(empty_url).returncode == 0
    test_queries.pretend_migration_was_edited(conn, version="001_init")

    result = run_cli(empty_url, "--status")

    assert result.returncode != 0, result
    assert cli_states(result.stdout)["001_init"] == "changed"


def test_cli_migrate_refuses_an_edited_migration_naming_the_file(empty_url, conn):
    assert run_cli(empty_url).returncode == 0
    test_queries.pretend_migration_was_edited(conn, version="001_init")

    result = run_cli(empty_url)

    assert result.returncode != 0, result
    assert "001_init.sql" in result.stderr
    assert "edited" in result.stderr


def test_cli_migrate_reports_what_it_applied_then_that_it_is_up_to_date(empty_url):
    first = run_cli(empty_url)
    second = run_cli(empty_url)

    assert first.returncode == 0, first
    assert all(version in first.stdout for version in EXPECTED_VERSIONS)
    assert second.returncode == 0, second
    assert "up to date" in second.stdout.lower()


# --- concurrent runners ------------------------------------------------------------------


def applied_by_cli_outputs(outputs: list[str]) -> list[str]:
    """Every version any runner says it applied, with repeats (`Applied: a, b`)."""
    versions: list[str] = []
    for output in outputs:
        for line in output.splitlines():
            if line.startswith("Applied: "):
                versions += [v.strip() for v in line.removeprefix("Applied: ").split(",")]
    return versions


@pytest.mark.parametrize("runners", [2, 4])
def test_concurrent_runners_on_their_own_connections_apply_every_migration_once(
    empty_url, conn, runners
):
    async def race() -> list[list[str]]:
        connections = [
            await psycopg.AsyncConnection.connect(empty_url, autocommit=True)
            for _ in range(runners)
        ]
        try:
            return await asyncio.gather(*(migrations.migrate(c) for c in connections))
        finally:
            for connection in connections:
                await connection.close()

    results = asyncio.run(race())

    assert sorted(v for applied in results for v in applied) == EXPECTED_VERSIONS
    assert set(recorded(conn)) == set(EXPECTED_VERSIONS)
    assert test_queries.advisory_locks_held(conn) == 0


@pytest.mark.slow
@pytest.mark.parametrize("runners", [2, 4])
def test_concurrent_cli_runners_all_succeed_and_apply_every_migration_once(
    empty_url, conn, runners
):
    """The runners queue on the lock the test holds, then race for it when it is let go."""
    application_name = f"migrate-race-{uuid.uuid4().hex[:12]}"
    env = cli_env(empty_url, DB_APPLICATION_NAME=application_name)
    processes: list[subprocess.Popen[str]] = []
    try:
        test_queries.take_migration_lock(conn, lock_key=LOCK_KEY)
        for _ in range(runners):
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "service", "migrate"],
                    env=env,
                    cwd=PROJECT_ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        deadline = time.monotonic() + CLI_TIMEOUT
        while test_queries.sessions_waiting_for_a_lock(conn, application_name=application_name) < (
            runners
        ):
            exited = [p for p in processes if p.poll() is not None]
            assert not exited, "a runner exited while the lock was held: " + "".join(
                p.communicate()[1] for p in exited
            )
            assert time.monotonic() < deadline, "the runners never queued on the lock"
            time.sleep(0.1)
        test_queries.release_migration_lock(conn, lock_key=LOCK_KEY)

        results = [p.communicate(timeout=CLI_TIMEOUT) for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()

    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr
    assert sorted(applied_by_cli_outputs([stdout for stdout, _ in results])) == EXPECTED_VERSIONS
    assert set(recorded(conn)) == set(EXPECTED_VERSIONS)
    assert test_queries.advisory_locks_held(conn) == 0


@pytest.mark.slow
def test_cli_runners_started_at_the_same_moment_all_succeed(empty_url, conn):
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "service", "migrate"],
            env=cli_env(empty_url),
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        results = [p.communicate(timeout=CLI_TIMEOUT) for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()

    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr
    assert sorted(applied_by_cli_outputs([stdout for stdout, _ in results])) == EXPECTED_VERSIONS
    assert set(recorded(conn)) == set(EXPECTED_VERSIONS)


def test_a_database_built_by_the_seeds_initdb_script_is_adopted_and_upgraded(empty_url, conn):
    """The TypeScript deployment ran 001_init.sql through docker-entrypoint-initdb.d: the
    table exists, schema_migrations does not. Upgrading must keep its rows, not fail."""
    conn.execute((MIGRATIONS_DIR / "001_init.sql").read_bytes())
    test_queries.insert_seed_row(conn, user_id="550e8400-e29b-41d4-a716-446655440000")

    assert apply(empty_url) == EXPECTED_VERSIONS[1:]
    assert recorded(conn)["001_init"] == sha256_of(MIGRATIONS_DIR / "001_init.sql")
    assert test_queries.count_records(conn) == 1
    assert apply(empty_url) == []


def test_a_runner_gives_up_with_a_clear_error_when_the_lock_stays_taken(empty_url, conn):
    """A replica stuck while holding the lock must not hang every other start-up."""
    test_queries.take_migration_lock(conn, lock_key=migrations.LOCK_KEY)
    try:

        async def run() -> list[str]:
            async with await psycopg.AsyncConnection.connect(empty_url, autocommit=True) as c:
                return await migrations.migrate(c, lock_timeout=0.5)

        with pytest.raises(MigrationError, match="migration lock"):
            asyncio.run(run())
    finally:
        test_queries.release_migration_lock(conn, lock_key=migrations.LOCK_KEY)
    assert apply(empty_url) == EXPECTED_VERSIONS
