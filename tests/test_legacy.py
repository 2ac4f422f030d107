"""`import-legacy`: the TypeScript service's data/sync/<userId>.json files into PostgreSQL.

Real files in tmp_path, a real database, the command called as the CLI calls it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service import legacy, legacy_files
from service.config import Settings
from tests.conftest import test_queries

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CREATED = "2024-01-15T10:30:00.000Z"
ACCESSED = "2024-06-01T08:00:00.123Z"


def legacy_record(
    user_id: str | None = None, *, timestamp: int = 1_700_000_000_000, size: int = 64, **fields: Any
) -> dict[str, Any]:
    """A file's content as the TypeScript service wrote it (fresh random blob and IV)."""
    iv, ciphertext = os.urandom(12), os.urandom(size)
    record = {
        "userId": user_id or str(uuid.uuid4()),
        "encryptedBlob": base64.b64encode(ciphertext).decode(),
        "iv": base64.b64encode(iv).decode(),
        "timestamp": timestamp,
        "checksum": hashlib.sha256(iv + ciphertext).hexdigest(),
        "createdAt": CREATED,
        "lastAccessed": ACCESSED,
        "blobSize": size,
    }
    record.update(fields)
    return record


def write(directory: Path, record: dict[str, Any], name: str | None = None) -> Path:
    path = directory / (name or f"{record['userId']}.json")
    path.write_text(json.dumps(record, indent=2))
    return path


def run(settings: Settings, directory: Path, *, dry_run: bool = False, **kwargs: Any) -> int:
    return asyncio.run(
        legacy.run_import_command(settings, directory=str(directory), dry_run=dry_run, **kwargs)
    )


def summary(stdout: str) -> dict[str, int]:
    """The summary's counts by label, e.g. {"imported (new)": 3, ...}."""
    counts = {}
    for line in stdout.splitlines():
        label, sep, number = line.strip().rpartition(":")
        if sep and number.strip().isdigit():
            counts[label] = int(number)
    return counts


def expected(**counts: int) -> dict[str, int]:
    outcomes = {"imported": 0, "updated": 0, "older": 0, "present": 0, "rejected": 0, **counts}
    return {legacy.OUTCOMES[outcome]: n for outcome, n in outcomes.items()}


def stored(db: Any, record: dict[str, Any], **changes: Any) -> None:
    """Put a record in the database directly, as a client would have left it."""
    values = {
        "user_id": record["userId"],
        "encrypted_blob": record["encryptedBlob"],
        "iv": record["iv"],
        "timestamp": record["timestamp"],
        "checksum": record["checksum"],
        "blob_size": len(base64.b64decode(record["encryptedBlob"])),
        "created_at": datetime.fromisoformat(record["createdAt"]),
        "last_accessed": datetime.fromisoformat(record["lastAccessed"]),
    }
    values.update(changes)
    test_queries.legacy_store_record(db, **values)


def state(db: Any, user_id: str) -> Any:
    return test_queries.legacy_record_state(db, user_id=user_id)


def all_records(db: Any) -> list[Any]:
    return list(test_queries.legacy_all_records(db))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_import_keeps_every_field_byte_identical_and_the_files_dates(
    settings, db, tmp_path, capsys
):
    records = [legacy_record(size=n) for n in (1, 700, 4096)]
    records[1]["createdAt"] = "2023-03-05T06:07:08.009+02:00"
    for record in records:
        write(tmp_path, record)

    assert run(settings, tmp_path) == 0

    out = capsys.readouterr().out
    assert summary(out) == expected(imported=3)
    for record in records:
        row = test_queries.raw_record(db, user_id=record["userId"])
        assert row == (
            uuid.UUID(record["userId"]),
            record["encryptedBlob"],
            record["iv"],
            record["timestamp"],
            record["checksum"],
            at(record["createdAt"]),
            at(record["lastAccessed"]),
            record["blobSize"],
        )


def test_a_newer_record_in_the_database_is_never_overwritten(settings, db, tmp_path, capsys):
    user_id = str(uuid.uuid4())
    newer = legacy_record(user_id, timestamp=2_000, lastAccessed="2025-01-01T00:00:00Z")
    stored(db, newer)
    before = state(db, user_id)
    write(tmp_path, legacy_record(user_id, timestamp=1_000, createdAt="2020-01-01T00:00:00Z"))

    assert run(settings, tmp_path) == 0

    assert summary(capsys.readouterr().out) == expected(older=1)
    assert state(db, user_id) == before


def test_an_older_record_is_replaced_keeping_the_earlier_creation_and_later_access(
    settings, db, tmp_path, capsys
):
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    # The database saw `first` earlier and `second` later than the file says.
    stored(db, legacy_record(first, timestamp=1_000), created_at=at("2020-01-01T00:00:00Z"))
    stored(db, legacy_record(second, timestamp=1_000), last_accessed=at("2026-01-01T00:00:00Z"))
    old_versions = {u: state(db, u)[8] for u in (first, second)}
    files = {u: legacy_record(u, timestamp=5_000) for u in (first, second)}
    for record in files.values():
        write(tmp_path, record)

    assert run(settings, tmp_path) == 0

    assert summary(capsys.readouterr().out) == expected(updated=2)
    for user_id, record in files.items():
        row = state(db, user_id)
        content = (record["encryptedBlob"], record["iv"], record["timestamp"], record["checksum"])
        assert row[1:5] == content
        assert row[8] != old_versions[user_id]
    assert state(db, first)[5:7] == (at("2020-01-01T00:00:00Z"), at(ACCESSED))
    assert state(db, second)[5:7] == (at(CREATED), at("2026-01-01T00:00:00Z"))


def test_same_timestamp_with_other_content_keeps_the_database_copy_and_lists_the_file(
    settings, db, tmp_path, capsys
):
    user_id = str(uuid.uuid4())
    stored(db, legacy_record(user_id, timestamp=7))
    before = state(db, user_id)
    path = write(tmp_path, legacy_record(user_id, timestamp=7))

    assert run(settings, tmp_path) == 0

    out, err = capsys.readouterr()
    assert summary(out) == {**expected(), legacy.OUTCOMES["conflict"]: 1}
    assert f"skipped: {path.name}: the database holds other content" in err
    assert state(db, user_id) == before


BAD_FILES: dict[str, tuple[Any, str]] = {
    "bad JSON": ('{"userId": "x",', "not valid JSON"),
    "a JSON array": ("[1, 2, 3]", "not a JSON object"),
    "a string timestamp": ({"timestamp": "1700000000000"}, "timestamp: must be an integer"),
    "a float timestamp": ({"timestamp": 1.5}, "timestamp: must be an integer"),
    "a numeric iv": ({"iv": 1234}, "iv: must be 16 base64 characters"),
    "an uppercase checksum": ({"checksum": "AB" * 32}, "checksum: must be 64 lowercase hex"),
    "an empty blob": ({"encryptedBlob": ""}, "encryptedBlob: must not be empty"),
    "a blob with a line break": ({"encryptedBlob": "AAAA\nAAAA"}, "canonical standard base64"),
    "an oversize blob": (
        {"encryptedBlob": base64.b64encode(bytes(1_000_001)).decode()},
        "encryptedBlob: decodes to more than 1000000 bytes (payload too large)",
    ),
    "another user's id": ({"userId": str(uuid.uuid4())}, "userId: differs from the file name"),
    "no userId": ({"userId": None}, "userId: missing or not a string"),
    "a bad date": ({"createdAt": "15/01/2024"}, "createdAt: not an ISO-8601 date-time"),
    "a date without zone": ({"lastAccessed": "2024-01-15T10:30:00"}, "lastAccessed: has no time"),
    "a numeric date": ({"createdAt": 1705314600000}, "createdAt: must be an ISO-8601 date-time"),
    "no createdAt": ({"createdAt": None}, "createdAt: missing"),
}


def test_invalid_files_are_rejected_by_name_and_reason_and_the_rest_imported(
    settings, db, tmp_path, capsys
):
    reasons = {}
    for case, (content, reason) in BAD_FILES.items():
        user_id = str(uuid.uuid4())
        if isinstance(content, str):
            (tmp_path / f"{user_id}.json").write_text(content)
        else:
            record = {**legacy_record(user_id), **content}
            record = {key: value for key, value in record.items() if value is not None}
            (tmp_path / f"{user_id}.json").write_text(json.dumps(record))
        reasons[f"{user_id}.json"] = (case, reason)
    write(tmp_path, legacy_record(), name="not-a-uuid.json")
    reasons["not-a-uuid.json"] = ("a file name", "file name is not <userId>.json")
    (tmp_path / f"{uuid.uuid4()}.json").mkdir()
    good = write(tmp_path, legacy_record())

    assert run(settings, tmp_path) == 1

    out, err = capsys.readouterr()
    assert summary(out) == expected(imported=1, rejected=len(BAD_FILES) + 2)
    rejected = {line.split(": ")[1]: line for line in err.splitlines() if line.startswith("rej")}
    for name, (case, reason) in reasons.items():
        assert reason in rejected[name], case
    assert good.name not in err
    assert any("not a regular file" in line for line in rejected.values())
    assert test_queries.count_records(db) == 1


def test_every_reason_of_one_file_is_listed(settings, db, tmp_path, capsys):
    user_id = str(uuid.uuid4())
    write(tmp_path, legacy_record(user_id, iv="short", checksum="x", createdAt="soon"))

    assert run(settings, tmp_path) == 1

    err = capsys.readouterr().err
    assert f"rejected: {user_id}.json: iv: " in err
    assert "; checksum: " in err
    assert "; createdAt: " in err


def test_files_are_never_modified(settings, db, tmp_path, capsys):
    write(tmp_path, legacy_record())
    write(tmp_path, legacy_record(), name="not-a-uuid.json")
    (tmp_path / f"{uuid.uuid4()}.json").write_text("{")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}

    run(settings, tmp_path)
    run(settings, tmp_path, dry_run=True)

    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    assert after == before


def test_a_second_run_imports_nothing_and_says_so(settings, db, tmp_path, capsys):
    for _ in range(5):
        write(tmp_path, legacy_record())
    assert run(settings, tmp_path) == 0
    first = all_records(db)
    capsys.readouterr()

    assert run(settings, tmp_path) == 0

    out = capsys.readouterr().out
    assert summary(out) == expected(present=5)
    assert "Nothing to import: all 5 files already present." in out
    assert all_records(db) == first


def test_a_dry_run_writes_nothing_and_reports_what_the_import_then_does(
    settings, db, tmp_path, capsys
):
    older, newer, same, conflict = (str(uuid.uuid4()) for _ in range(4))
    stored(db, legacy_record(older, timestamp=1))
    stored(db, legacy_record(newer, timestamp=9))
    identical = legacy_record(same, timestamp=5)
    stored(db, identical)
    stored(db, legacy_record(conflict, timestamp=5))
    for record in (
        legacy_record(older, timestamp=5),
        legacy_record(newer, timestamp=5),
        identical,
        legacy_record(conflict, timestamp=5),
        legacy_record(),
        legacy_record(),
    ):
        write(tmp_path, record)
    write(tmp_path, legacy_record(), name="nope.json")
    before = all_records(db)

    assert run(settings, tmp_path, dry_run=True) == 1

    dry = capsys.readouterr().out
    assert all_records(db) == before
    assert "Would import 3 of 7 files." in dry
    outcomes = {**expected(imported=2, updated=1, older=1, present=1, rejected=1)}
    outcomes[legacy.OUTCOMES["conflict"]] = 1
    assert summary(dry) == outcomes

    assert run(settings, tmp_path) == 1

    assert summary(capsys.readouterr().out) == outcomes
    assert test_queries.count_records(db) == 6


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_files_of_one_user_differing_in_case_import_the_newest(
    settings, db, tmp_path, capsys, batch_size
):
    # Letters in the first group, so that upper-casing it really makes a third file name.
    user_id = "abcdef01" + str(uuid.uuid4())[8:]
    newest = legacy_record(user_id.upper(), timestamp=20)
    write(tmp_path, legacy_record(user_id, timestamp=10), name=f"{user_id}.json")
    write(tmp_path, newest, name=f"{user_id.upper()}.json")
    mixed = f"{user_id[:8].upper()}{user_id[8:]}.json"
    write(tmp_path, legacy_record(user_id, timestamp=15), name=mixed)

    assert run(settings, tmp_path, batch_size=batch_size) == 0

    out, err = capsys.readouterr()
    assert summary(out) == {**expected(imported=1), legacy.OUTCOMES["duplicate"]: 2}
    assert f"skipped (duplicate): {user_id}.json: same user as {user_id.upper()}.json" in err
    assert f"skipped (duplicate): {mixed}: same user as {user_id.upper()}.json (newer)" in err
    assert state(db, user_id)[1:5] == (
        newest["encryptedBlob"],
        newest["iv"],
        20,
        newest["checksum"],
    )


def test_batches_split_the_files_without_losing_any(settings, db, tmp_path, capsys):
    records = [legacy_record(timestamp=n + 1) for n in range(7)]
    for record in records:
        write(tmp_path, record)
    stored(db, records[3], timestamp=100)

    assert run(settings, tmp_path, batch_size=3) == 0

    assert summary(capsys.readouterr().out) == expected(imported=6, older=1)
    assert test_queries.count_records(db) == 7
    for record in records[:3] + records[4:]:
        assert state(db, record["userId"])[3] == record["timestamp"]


def test_a_blob_size_that_disagrees_is_noted_and_the_real_size_stored(
    settings, db, tmp_path, capsys
):
    record = legacy_record(size=10, blobSize=14)
    write(tmp_path, record)

    assert run(settings, tmp_path) == 0

    err = capsys.readouterr().err
    assert f"note: {record['userId']}.json: blobSize 14 differs" in err
    assert state(db, record["userId"])[7] == 10


def test_the_parent_data_directory_is_read_through_its_sync_folder(settings, db, tmp_path, capsys):
    (tmp_path / "sync").mkdir()
    record = legacy_record()
    write(tmp_path / "sync", record)
    (tmp_path / "other.txt").write_text("ignored")

    assert run(settings, tmp_path) == 0

    assert summary(capsys.readouterr().out) == expected(imported=1)
    assert state(db, record["userId"]) is not None


def test_a_directory_that_cannot_be_read_exits_with_2(settings, tmp_path, capsys):
    assert run(settings, tmp_path / "missing") == 2
    assert "cannot read" in capsys.readouterr().err


def test_an_unreachable_database_exits_with_3(tmp_path, capsys):
    write(tmp_path, legacy_record())
    settings = Settings(database_url="postgresql://nobody@127.0.0.1:1/none", startup_timeout=0.5)

    assert run(settings, tmp_path) == 3

    assert "import-legacy failed" in capsys.readouterr().err


def test_three_thousand_files_import_in_one_run(settings, db, tmp_path, capsys):
    for n in range(3000):
        write(tmp_path, legacy_record(timestamp=n + 1, size=1024))

    assert run(settings, tmp_path) == 0

    assert summary(capsys.readouterr().out) == expected(imported=3000)
    assert test_queries.count_records(db) == 3000


def test_the_command_line_reports_and_exits_non_zero_on_a_rejected_file(database_url, tmp_path):
    good = legacy_record()
    write(tmp_path, good)
    write(tmp_path, legacy_record(checksum="A" * 64), name=f"{uuid.uuid4()}.json")
    command = [sys.executable, "-m", "service", "import-legacy", str(tmp_path)]
    env = {**os.environ, "DATABASE_URL": database_url, "STARTUP_TIMEOUT": "10"}

    first = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    second = subprocess.run(
        [*command, "--dry-run"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True
    )

    assert first.returncode == 1, first.stderr
    assert summary(first.stdout) == expected(imported=1, rejected=1)
    assert "checksum: must be 64 lowercase hex digits" in first.stderr
    assert good["encryptedBlob"] not in first.stdout + first.stderr
    assert second.returncode == 1
    assert summary(second.stdout) == expected(present=1, rejected=1)


def test_the_progress_bar_counts_up_to_the_total(capsys):
    progress = legacy.Progress(4)
    progress.advance(3)
    progress.advance(1)
    progress.finish()

    err = capsys.readouterr().err
    assert err.startswith("\r[")
    assert "4/4 files 100%" in err
    assert err.endswith("\n")


def test_dates_keep_their_instant_whatever_the_offset():
    record = legacy_record(createdAt="2024-01-15T12:30:00+02:00")
    parsed = legacy_files.parse_record(record, f"{record['userId']}.json")
    assert parsed.created_at == datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
