"""`logikids-sync sql NAME param=value`: the service's own statements, run through psql."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from aiosql.utils import VAR_REF

from service import QUERIES_DIR
from service.config import Settings
from service.db import connection_kwargs, queries
from service.sqlcmd import find_psql, load_queries, run_sql_command
from tests.conftest import new_user_id, test_queries
from tests.paths import REPO_ROOT as PROJECT_ROOT

TEST_SQL = Path(__file__).parent / "sql"
BLOB = "dGVzdCBibG9iIGRhdGE="
INJECTION = "x'; DROP TABLE user_sync_data; --"


def store(settings: Settings) -> tuple[str, str]:
    """A record stored through the service's own upsert; returns (user id, version)."""
    user_id = new_user_id()
    version = uuid.uuid4()  # drawn by the caller, as service/sync.py does

    async def run() -> str:
        conn = await psycopg.AsyncConnection.connect(
            settings.database_url, **connection_kwargs(settings)
        )
        async with conn:
            row = await queries.store_record(
                conn,
                user_id=user_id,
                encrypted_blob=BLOB,
                iv="MTIzNDU2Nzg5MGFi",
                timestamp=1698765432000,
                checksum="a" * 64,
                blob_size=14,
                version=version,
            )
        assert row == (version,)  # RETURNING version: the one it was given
        return str(row[0])

    return user_id, asyncio.run(run())


def sql_cli(database_url: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if database_url:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "service", "sql", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def psql_file(database_url: str, script: str) -> subprocess.CompletedProcess[str]:
    """Plain psql, as a person would run a pasted script."""
    psql = find_psql()
    assert psql is not None
    return subprocess.run(
        [psql, "-X", "-v", "ON_ERROR_STOP=1", "-d", database_url, "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
    )


def service_query_names() -> set[str]:
    """What aiosql loaded for the service (less the `_cursor` twins it adds)."""
    return {name for name in queries.available_queries if not name.endswith("_cursor")}


def without_comment_lines(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))


# --- the text is the service's text ---------------------------------------------------------


def test_every_query_is_read_as_the_same_text_aiosql_gives_the_service():
    def pyformat(match: re.Match[str]) -> str:
        if match["dquote"] is not None or match["squote"] is not None:
            return match.group(0)
        return f"{match['lead']}%({match['var_name']})s"

    parsed = load_queries()
    assert set(parsed) == service_query_names()
    for name, query in parsed.items():
        assert VAR_REF.sub(pyformat, query.sql) == getattr(queries, name).sql, name


def test_print_shows_the_file_s_statement_with_psql_placeholders(capsys):
    user_id = new_user_id()
    status = run_sql_command(
        None, name="erase_record", params=[f"user_id={user_id}"], print_only=True
    )
    assert status == 0
    out = capsys.readouterr().out
    assert f"\\set user_id '{user_id}'\n" in out
    assert out.endswith(
        "\nDELETE FROM user_sync_data WHERE user_id = :'user_id' RETURNING version;\n"
    )
    assert out.startswith("-- erase_record(user_id)  [sync.sql]\n-- Erase the record")


def test_print_converts_every_placeholder_and_leaves_casts_alone(capsys):
    status = run_sql_command(None, name="exchange_counts", params=[], print_only=True)
    assert status == 0
    statement = without_comment_lines(capsys.readouterr().out)
    source = (QUERIES_DIR / "ratelimit.sql").read_text()
    header = "-- name: exchange_counts(buckets, deltas, window_start, changed_since, learn_limit)\n"
    block = source.split(header)[1]
    block = without_comment_lines(block.split("-- name:")[0]).strip()
    expected = block
    for name in ("buckets", "deltas", "window_start", "changed_since", "learn_limit"):
        assert f":{name}" in expected, name
        expected = expected.replace(f":{name}", f":'{name}'")
    assert statement.strip() == expected
    assert "unnest(CAST(:'buckets' AS text[]), CAST(:'deltas' AS integer[]))" in statement
    assert "WHERE window_start = CAST(:'window_start' AS timestamptz)" in statement
    # `::` casts, as in the metrics statement, are not placeholders.
    assert run_sql_command(None, name="estimate_records", params=[], print_only=True) == 0
    statement = without_comment_lines(capsys.readouterr().out)
    assert "THEN reltuples::bigint" in statement
    assert "WHERE oid = 'user_sync_data'::regclass;" in statement
    assert ":'" not in statement


def test_print_without_values_names_the_parameters_still_to_set(capsys):
    assert run_sql_command(None, name="record_version", params=[], print_only=True) == 0
    assert "-- \\set user_id '...'  (not given)" in capsys.readouterr().out


def test_listing_shows_every_query_with_its_parameters(capsys):
    assert run_sql_command(None, name=None, params=[], print_only=False) == 0
    out = capsys.readouterr().out
    for name in service_query_names():
        assert re.search(rf"^  {name}\(", out, re.MULTILINE), name
    assert "  fetch_record(user_id, known_versions, any_version)\n" in out
    assert "  exchange_counts(buckets, deltas, window_start, changed_since, learn_limit)\n" in out
    assert "      The record for one user, marking it accessed in the same statement.\n" in out
    assert "queries/cleanup.sql\n" in out


# --- usage errors never reach psql -----------------------------------------------------------


def test_a_missing_parameter_is_refused_with_exit_2_naming_it(database_url):
    result = sql_cli(database_url, "fetch_record", f"user_id={new_user_id()}")
    assert result.returncode == 2
    missing = "known_versions, any_version"
    assert f"missing parameter(s) {missing}:" in result.stderr
    assert f"fetch_record(user_id, {missing})" in result.stderr
    assert result.stdout == ""


def test_an_unknown_parameter_is_refused_with_exit_2(database_url):
    result = sql_cli(database_url, "record_version", f"user_id={new_user_id()}", "userid=1")
    assert result.returncode == 2
    assert "unknown parameter(s) userid" in result.stderr


def test_an_unknown_query_is_refused_with_exit_2_and_a_suggestion(database_url):
    result = sql_cli(database_url, "record_versions", "user_id=1")
    assert result.returncode == 2
    assert "no query named 'record_versions'" in result.stderr
    assert "did you mean record_version" in result.stderr


def test_an_argument_without_equals_sign_is_refused_with_exit_2(database_url):
    result = sql_cli(database_url, "record_version", "user_id")
    assert result.returncode == 2
    assert "expected param=value" in result.stderr


# --- running against the database ------------------------------------------------------------


def test_record_version_prints_the_version_the_service_stored(settings, database_url):
    user_id, version = store(settings)
    result = sql_cli(database_url, "record_version", f"user_id={user_id}")
    assert result.returncode == 0, result.stderr
    assert version in result.stdout
    assert "(1 row)" in result.stdout


def test_fetch_record_binds_null_for_the_value_null(settings, database_url):
    user_id, _ = store(settings)
    result = sql_cli(
        database_url, "fetch_record", f"user_id={user_id}", "known_versions=NULL",
        "any_version=NULL",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert BLOB in result.stdout
    assert re.search(r"\| f\s*$", result.stdout, re.MULTILINE)  # unchanged = false


def test_fetch_record_takes_an_array_literal_for_known_versions(settings, database_url):
    user_id, version = store(settings)
    result = sql_cli(
        database_url, "fetch_record", f"user_id={user_id}",
        f"known_versions={{{new_user_id()},{version}}}", "any_version=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert BLOB not in result.stdout  # the client already holds it: no blob
    assert re.search(r"\| t\s*$", result.stdout, re.MULTILINE)


def test_an_empty_value_is_an_empty_string_not_null(settings, database_url):
    user_id, _ = store(settings)
    result = sql_cli(
        database_url, "fetch_record", f"user_id={user_id}", "known_versions=",
        "any_version=false",
    )  # fmt: skip
    assert result.returncode == 3
    assert "malformed array literal" in result.stderr


def test_erase_record_erases(settings, database_url, db):
    user_id, version = store(settings)
    other, other_version = store(settings)
    result = sql_cli(database_url, "erase_record", f"user_id={user_id}")
    assert result.returncode == 0, result.stderr
    assert "(1 row)" in result.stdout  # RETURNING version: the erased record's
    assert version in result.stdout
    assert other_version not in result.stdout
    assert test_queries.raw_record(db, user_id=user_id) is None
    assert test_queries.raw_record(db, user_id=other) is not None


def test_exchange_counts_from_psql_adds_to_the_window_s_buckets(database_url, db):
    user_id = new_user_id()
    user, ip = f"user:{user_id}", "ip:192.0.2.1"
    window = "window_start=2026-12-02 10:00:00+00"
    since = ("changed_since=2000-01-01 00:00:00+00", "learn_limit=100")

    def row(bucket: str, hits: int) -> str:
        return rf"^\s*{re.escape(bucket)}\s*\|\s*{hits}\s*$"

    first = sql_cli(
        database_url, "exchange_counts", f"buckets={{{user},{ip}}}", "deltas={1,2}",
        window, *since,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert re.search(row(user, 1), first.stdout, re.MULTILINE), first.stdout
    assert re.search(row(ip, 2), first.stdout, re.MULTILINE), first.stdout
    assert "(2 rows)" in first.stdout
    # Another process's exchange: it adds to the user's bucket and learns the IP's.
    second = sql_cli(
        database_url, "exchange_counts", f"buckets={{{user}}}", "deltas={4}", window, *since,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert re.search(row(user, 5), second.stdout, re.MULTILINE), second.stdout
    assert re.search(row(ip, 2), second.stdout, re.MULTILINE), second.stdout
    assert "(2 rows)" in second.stdout
    start = datetime(2026, 12, 2, 10, tzinfo=UTC)
    assert [tuple(r) for r in test_queries.rate_limit_rows(db)] == [
        (ip, 2, start),
        (user, 5, start),
    ]


def test_an_injection_attempt_fails_as_a_bad_value_and_changes_nothing(settings, database_url, db):
    store(settings)
    result = sql_cli(database_url, "erase_record", f"user_id={INJECTION}")
    assert result.returncode == 3  # psql: the statement failed, ON_ERROR_STOP
    assert "invalid input syntax for type uuid" in result.stderr
    assert test_queries.table_exists(db, name="user_sync_data")
    assert test_queries.count_records(db) == 1


def test_only_placeholders_are_bound_in_a_statement_full_of_colons(settings, capfd):
    status = run_sql_command(
        settings, name="placeholder_corner_cases", params=["label=it's"], print_only=False,
        directory=TEST_SQL,
    )  # fmt: skip
    out, err = capfd.readouterr()
    assert status == 0, err
    row = [cell.strip() for cell in out.splitlines()[2].split("|")]
    assert row == ["it's", "7", "2 days", "a :label in a string", ":label", "1"]


def test_the_printed_script_run_by_plain_psql_does_what_the_command_does(settings, capfd):
    label = "a 'quoted' \\back\\slash\tand\nnewline: :label"
    args = {"name": "placeholder_corner_cases", "params": [f"label={label}"]}
    run_sql_command(settings, print_only=False, directory=TEST_SQL, **args)
    ran = capfd.readouterr().out
    run_sql_command(settings, print_only=True, directory=TEST_SQL, **args)
    script = capfd.readouterr().out
    by_hand = psql_file(settings.database_url, script)
    assert by_hand.returncode == 0, by_hand.stderr
    assert by_hand.stdout == ran
    assert "a 'quoted' \\back\\slash" in ran


def test_the_printed_script_binds_an_injection_attempt_as_a_value_too(settings, db, capsys):
    store(settings)
    args = {"name": "erase_record", "params": [f"user_id={INJECTION}"]}
    assert run_sql_command(None, print_only=True, **args) == 0
    by_hand = psql_file(settings.database_url, capsys.readouterr().out)
    assert by_hand.returncode == 3
    assert "invalid input syntax for type uuid" in by_hand.stderr
    assert test_queries.count_records(db) == 1


def test_a_database_that_does_not_answer_gives_psql_s_connection_status():
    from service.localpg import free_port

    url = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing?connect_timeout=2"
    result = sql_cli(url, "record_version", f"user_id={new_user_id()}")
    assert result.returncode == 2
    assert "connection to server" in result.stderr


@pytest.mark.skipif(not (PROJECT_ROOT / ".venv" / "bin" / "python").exists(), reason="no .venv")
def test_make_sql_runs_a_named_query(settings, database_url):
    user_id, version = store(settings)
    env = {**os.environ, "DATABASE_URL": database_url}
    env.pop("MAKEFLAGS", None)
    result = subprocess.run(
        # -o: use the venv as it is, even if pyproject.toml is newer than its stamp.
        ["make", "-s", "--no-print-directory", "-o", ".venv/.installed", "sql",
         "Q=record_version", f"ARGS=user_id={user_id}"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert version in result.stdout
