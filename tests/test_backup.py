"""`make backup` / `make restore`: a round trip keeps every record byte-identical."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.conftest import new_user_id, test_queries
from tests.paths import REPO_ROOT as PROJECT_ROOT

pytestmark = pytest.mark.slow


def make(target: str, database_url: str, **variables: str) -> subprocess.CompletedProcess:
    """Run a Makefile target the way a person would, without re-installing the venv."""
    args = ["make", "--no-print-directory", "-o", ".venv/.installed", target]
    args += [f"{key}={value}" for key, value in variables.items()]
    return subprocess.run(
        args,
        cwd=PROJECT_ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )


def every_record(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return sorted(test_queries.all_records(conn))


def test_backup_then_restore_into_an_empty_database_keeps_every_record(
    client, database_url, new_database, tmp_path: Path
):
    for size in (1, 1000, 250_000):
        blob = os.urandom(size)
        payload = {
            "encryptedBlob": base64.b64encode(blob).decode(),
            "iv": base64.b64encode(os.urandom(12)).decode(),
            "timestamp": 1_700_000_000_000 + size,
            "checksum": hashlib.sha256(blob).hexdigest(),
        }
        assert client.put(f"/api/sync/{new_user_id()}", json=payload).status_code == 200
    before = every_record(database_url)
    assert len(before) == 3

    backup = make("backup", database_url, BACKUP_DIR=str(tmp_path))
    assert backup.returncode == 0, backup.stderr
    dumps = list(tmp_path.glob("logikids-*.dump"))
    assert len(dumps) == 1, backup.stdout
    assert str(dumps[0]) in backup.stdout

    target = new_database(migrated=False)
    restore = make("restore", target, FILE=str(dumps[0]))
    assert restore.returncode == 0, restore.stderr
    assert every_record(target) == before


def test_restore_without_a_file_explains_itself(database_url):
    result = make("restore", database_url)
    assert result.returncode != 0
    assert "make restore FILE=" in result.stderr
