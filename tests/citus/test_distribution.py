"""user_sync_data on Citus: distributed by user_id by `migrate` itself, spread over the
workers, and every sync statement routed to the one shard of its user."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from service import MIGRATIONS_DIR, QUERIES_DIR, migrations
from service.db import queries
from tests.citus.conftest import migrate
from tests.conftest import new_user_id, test_queries
from tests.paths import REPO_ROOT
from tests.test_smoke import PAYLOAD

SYNC_STATEMENTS = re.findall(
    r"^--\s*name:\s*(\w+)", (QUERIES_DIR / "sync.sql").read_text(), flags=re.MULTILINE
)
"""Every named query of queries/sync.sql: the statements requests run."""


def table_info(url: str, table: str) -> tuple | None:
    with psycopg.connect(url, autocommit=True) as conn:
        return test_queries.citus_table_info(conn, table_name=table)


def run_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "DATABASE_URL": url, "STARTUP_TIMEOUT": "10"},
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- the session's database ------------------------------------------------------------------


def insert_small_record(conn: psycopg.Connection, user_id: str) -> None:
    """A valid 4-byte record for `user_id`, stored directly (not through the API)."""
    test_queries.insert_raw_record(
        conn, user_id=user_id, encrypted_blob="dGVzdA==", iv="MTIzNDU2Nzg5MGFi",
        timestamp=1, checksum="a" * 64, blob_size=4,
    )  # fmt: skip


def test_user_sync_data_is_distributed_by_user_id(database_url):
    assert table_info(database_url, "user_sync_data")[:2] == ("distributed", "user_id")
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert test_queries.citus_partition_column(conn, table_name="user_sync_data") == "user_id"


def test_the_counters_and_the_migration_log_stay_local_tables(database_url):
    for table in ("rate_limit_hits", "schema_migrations"):
        assert table_info(database_url, table) is None, table


def test_the_cluster_has_two_workers(citus, database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        workers = list(test_queries.citus_workers(conn))
    assert [port for _, port in workers] == sorted(w.port for w in citus.workers)


def test_records_stored_through_the_api_spread_over_both_workers(citus, client, database_url):
    for _ in range(100):
        assert client.put(f"/api/sync/{new_user_id()}", json=PAYLOAD).status_code == 200
    with psycopg.connect(database_url, autocommit=True) as conn:
        per_node = {port: rows for _, port, rows, _ in test_queries.citus_rows_per_node(
            conn, table_name="user_sync_data"
        )}  # fmt: skip
    assert set(per_node) == {w.port for w in citus.workers}
    assert sum(per_node.values()) == 100
    # 100 random ids over 32 shards, 16 a worker: either worker holding under 20 is
    # about as likely as 100 coin flips giving under 20 heads (never, in practice).
    assert all(rows >= 20 for rows in per_node.values()), per_node


def sample_bindings() -> dict[str, object]:
    """A value for every parameter a sync statement may take, of the type the service binds
    (service/sync.py: the payload's fields, versions as lists of UUIDs, the rate limiter's
    scalars with the limits off)."""
    return {
        "user_id": uuid.UUID(new_user_id()),
        "encrypted_blob": PAYLOAD["encryptedBlob"],
        "iv": PAYLOAD["iv"],
        "timestamp": PAYLOAD["timestamp"],
        "checksum": PAYLOAD["checksum"],
        "blob_size": 14,
        "version": uuid.uuid4(),
        "versions": [uuid.uuid4()],
        "excluded_versions": [uuid.uuid4()],
        "known_versions": [uuid.uuid4()],
        "any_version": False,
        "user_limit": None,
        "client_ip": "192.0.2.1",
        "ip_limit": None,
        "window_seconds": 3600,
    }


def test_every_sync_statement_is_listed():
    assert {"store_record", "fetch_record", "erase_record", "record_version"} <= set(
        SYNC_STATEMENTS
    )


@pytest.mark.parametrize("name", SYNC_STATEMENTS)
def test_each_sync_statement_is_routed_to_one_shard_on_one_worker(citus, database_url, name):
    """Citus's EXPLAIN of a router query: one task, on the worker holding the user's shard,
    and no subplan (a statement Citus splits runs as several steps, or is refused)."""
    query = getattr(queries, name)
    bindings = sample_bindings()
    unknown = set(query.parameters) - set(bindings)
    assert not unknown, f"{name}: no sample value for {unknown}; add one to sample_bindings"
    params = {key: bindings[key] for key in query.parameters}
    with psycopg.connect(database_url, autocommit=True) as conn:
        plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN {query.sql}", params))
    assert "Task Count: 1\n" in plan + "\n", plan
    assert "Distributed Subplan" not in plan, plan
    nodes = {int(port) for port in re.findall(r"Node: host=\S+ port=(\d+)", plan)}
    assert nodes and nodes <= {w.port for w in citus.workers}, plan


# --- migrate on databases of their own -------------------------------------------------------


def test_migrate_distributes_then_a_second_run_is_a_no_op(citus_database_factory, caplog):
    url = citus_database_factory()
    first = run_cli(url, "migrate")
    assert first.returncode == 0, first.stderr
    assert "Distributed user_sync_data by user_id over 2 Citus workers" in first.stderr
    assert table_info(url, "user_sync_data")[:2] == ("distributed", "user_id")
    with caplog.at_level(logging.INFO, logger="service.migrations"):
        assert migrate(url) == []
    assert not [r for r in caplog.records if "Citus" in r.getMessage()]
    again = run_cli(url, "migrate")
    assert again.returncode == 0, again.stderr
    assert "Nothing to apply" in again.stdout
    assert "Distributed" not in again.stderr


def test_without_workers_the_table_stays_local_until_workers_are_added(
    citus, citus_database_factory, caplog
):
    url = citus_database_factory(workers=False)
    with caplog.at_level(logging.INFO, logger="service.migrations"):
        migrate(url)
    assert any("stays a local table" in r.getMessage() for r in caplog.records)
    assert table_info(url, "user_sync_data") is None
    ids = [new_user_id() for _ in range(20)]
    with psycopg.connect(url, autocommit=True) as conn:
        for user_id in ids:
            insert_small_record(conn, user_id)
        citus.add_workers(conn)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="service.migrations"):
        assert migrate(url) == []
    assert any("Distributed user_sync_data" in r.getMessage() for r in caplog.records)
    assert table_info(url, "user_sync_data")[:2] == ("distributed", "user_id")
    with psycopg.connect(url, autocommit=True) as conn:
        # The rows moved into the shards, and the coordinator's own copy is gone.
        assert test_queries.count_records(conn) == 20
        assert all(test_queries.raw_record(conn, user_id=u) is not None for u in ids)
        assert test_queries.citus_shell_table_bytes(conn) == 0


def test_migrate_on_plain_postgresql_does_not_distribute(citus_database_factory, caplog):
    url = citus_database_factory(citus_extension=False)
    with caplog.at_level(logging.INFO, logger="service.migrations"):
        assert migrate(url) == [p.stem for p in sorted(MIGRATIONS_DIR.glob("*.sql"))]
    assert not [r for r in caplog.records if "Citus" in r.getMessage()]
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute(queries.citus_installed.sql).fetchone() == (False,)
        assert test_queries.table_exists(conn, name="user_sync_data")


def test_later_migrations_alter_the_distributed_table_on_every_shard(
    citus_database_factory, tmp_path
):
    url = citus_database_factory()
    migrate(url)
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    # One file per statement Citus forwards as text (see the migrations docstring).
    probes = {
        "900_citus_probe": "ALTER TABLE user_sync_data ADD COLUMN probe TEXT NOT NULL DEFAULT"
        " 'x', ADD COLUMN probe_id UUID NOT NULL DEFAULT gen_random_uuid();\n",
        "901_citus_probe_check": "ALTER TABLE user_sync_data"
        " ADD CONSTRAINT probe_short CHECK (length(probe) < 10);\n",
        "902_citus_probe_type": "ALTER TABLE user_sync_data ALTER COLUMN probe TYPE VARCHAR(20);\n",
        "903_citus_probe_index": "CREATE INDEX idx_probe ON user_sync_data (probe);\n",
    }
    for version, sql in probes.items():
        (directory / f"{version}.sql").write_text(sql)
    assert migrate(url, directory) == list(probes)
    with psycopg.connect(url, autocommit=True) as conn:
        for column in ("probe", "probe_id"):
            assert test_queries.citus_column_on_every_shard(
                conn, table_name="user_sync_data", column_name=column
            ), column


DISTRIBUTED_SINCE = "005_exact_iv_checksum"
"""The last migration of the time before Citus: a fresh database applies the files up to
here before migrate distributes the table, and so does any database that moved to Citus."""


def test_every_migration_after_the_citus_step_applies_to_the_distributed_table(
    citus_database_factory, tmp_path
):
    """A guard for migrations to come: the repository's files after DISTRIBUTED_SINCE,
    applied on a database whose table is already distributed (as on a Citus deployment
    that upgrades), must pass Citus's rules (service/migrations.py distribute_on_citus)."""
    url = citus_database_factory()
    directory = tmp_path / "migrations"
    directory.mkdir()
    files = sorted(MIGRATIONS_DIR.glob("*.sql"))
    for path in files:
        if path.stem <= DISTRIBUTED_SINCE:
            shutil.copy(path, directory)
    assert migrate(url, directory)[-1] == DISTRIBUTED_SINCE
    assert table_info(url, "user_sync_data")[0] == "distributed"
    later = [p for p in files if p.stem > DISTRIBUTED_SINCE]
    for path in later:
        shutil.copy(path, directory)
    assert migrate(url, directory) == [p.stem for p in later]


@pytest.mark.parametrize(
    ("statement", "error"),
    [
        ("ALTER TABLE user_sync_data ALTER COLUMN user_id TYPE TEXT", "partition column"),
        (
            "CREATE INDEX idx_refused ON user_sync_data (blob_size)",
            "multiple commands into a prepared statement",
        ),
        (
            "ALTER TABLE user_sync_data ADD CONSTRAINT a CHECK (blob_size > 0),"
            " ADD CONSTRAINT b CHECK (timestamp > 0)",
            "with other subcommands",
        ),
    ],
)
def test_a_migration_citus_refuses_is_rolled_back_and_not_recorded(
    citus_database_factory, tmp_path, statement, error
):
    url = citus_database_factory()
    migrate(url)
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, directory)
    (directory / "901_citus_refused.sql").write_text(
        f"ALTER TABLE user_sync_data ADD COLUMN refused INTEGER;\n{statement};\n"
    )
    with pytest.raises(migrations.MigrationError, match=f"901_citus_refused.sql failed.*{error}"):
        migrate(url, directory)
    with psycopg.connect(url, autocommit=True) as conn:
        versions = [v for v, _ in test_queries.applied_versions(conn)]
        assert versions[-1] == sorted(MIGRATIONS_DIR.glob("*.sql"))[-1].stem  # not 901
        assert not test_queries.citus_column_on_every_shard(
            conn, table_name="user_sync_data", column_name="refused"
        )


# --- maintenance on the distributed table ----------------------------------------------------


def test_the_sql_command_runs_named_queries_through_psql_on_the_coordinator(database_url, db):
    for days_ago in (800, 900, 1):
        user_id = new_user_id()
        insert_small_record(db, user_id)
        test_queries.age_record(db, user_id=user_id, days=days_ago)
    counted = run_cli(database_url, "sql", "count_inactive_records", "inactive_days=730")
    assert counted.returncode == 0, counted.stderr
    assert re.search(r"^\s*2\s*$", counted.stdout, flags=re.MULTILINE), counted.stdout
    erased = run_cli(
        database_url, "sql", "erase_inactive_records", "inactive_days=730", "batch_size=1000"
    )
    assert erased.returncode == 0, erased.stderr
    assert re.search(r"^\s*2\s*\|\s*2\s*$", erased.stdout, flags=re.MULTILINE), erased.stdout
    assert test_queries.count_records(db) == 1


def test_cleanup_erases_inactive_records_on_every_shard_in_batches(database_url, db):
    ids = []
    for i in range(60):
        user_id = new_user_id()
        insert_small_record(db, user_id)
        test_queries.age_record(db, user_id=user_id, days=800 + i if i < 50 else 1)
        ids.append(user_id)
    result = run_cli(database_url, "cleanup", "--inactive-days", "730")
    assert result.returncode == 0, result.stderr
    assert "Erased 50 records" in result.stdout
    assert test_queries.count_records(db) == 10


def test_a_coordinator_dump_restored_and_migrated_is_distributed_again(
    citus, citus_database_factory, tmp_path
):
    """The backup notes' facts, with `make backup`'s and `make restore`'s flags: a
    coordinator's pg_dump holds every record (its COPY reads the shards) but no Citus
    metadata, so user_sync_data comes back a local table and the workers unregistered
    (the restore re-creates the citus extension); registering them and running migrate
    distributes it again, records included."""
    url = citus_database_factory()
    migrate(url)
    ids = [new_user_id() for _ in range(30)]
    with psycopg.connect(url, autocommit=True) as conn:
        for user_id in ids:
            insert_small_record(conn, user_id)
    dump = tmp_path / "coordinator.dump"
    bindir = Path(citus.bindir)
    subprocess.run(
        [str(bindir / "pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
         f"--file={dump}", url],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    listing = subprocess.run(
        [str(bindir / "pg_restore"), "--list", str(dump)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert "TABLE DATA public user_sync_data" in listing
    assert "pg_dist" not in listing
    subprocess.run(
        [str(bindir / "pg_restore"), "--clean", "--if-exists", "--no-owner", "--no-privileges",
         "--single-transaction", "--exit-on-error", f"--dbname={url}", str(dump)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    with psycopg.connect(url, autocommit=True) as conn:
        assert test_queries.count_records(conn) == 30
        assert test_queries.citus_table_info(conn, table_name="user_sync_data") is None
        assert list(test_queries.citus_workers(conn)) == []
        test_queries.citus_set_coordinator(conn, host="127.0.0.1", port=citus.coordinator.port)
        citus.add_workers(conn)
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        assert test_queries.citus_table_info(conn, table_name="user_sync_data")[0] == (
            "distributed"
        )
        assert all(test_queries.raw_record(conn, user_id=u) is not None for u in ids)
        rows = sum(r for _, _, r, _ in test_queries.citus_rows_per_node(
            conn, table_name="user_sync_data"
        ))  # fmt: skip
        assert rows == 30
