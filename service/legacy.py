"""`logikids-sync import-legacy DIR`: the TypeScript service's files into PostgreSQL.

See docs/operations.md.

service/legacy_files reads and checks each `<userId>.json`; this module writes them in
batches through queries/legacy.sql, which decides each file's outcome (imported,
updated, older, present, conflict) in the statement that writes it, and reports. Every
batch is one autocommit statement: an interrupted run keeps what it wrote, and a re-run
finds those records already present.

Decisions the file format leaves open (the file-level ones are in service/legacy_files):
- Several files for one user id (file names differing in case): the one with the highest
  timestamp is imported (then the later lastAccessed, then the file name decides), the
  others are reported as duplicates.
- A record with the same timestamp but different content is a conflict: the database
  keeps its copy, and the file is listed.
- A record newer than the file is left untouched, dates included.

Blob contents never appear in output or logs; file names (user ids the operator already
holds) do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg.types.array import ListBinaryDumper

from service.config import Settings
from service.db import (
    DatabaseUnreachable,
    maintenance_connection,
    queries,
    wait_for_database,
)
from service.legacy_files import LegacyRecord, list_legacy_files, read_batch

BATCH_SIZE = 1000
"""Files per statement: one round trip and about 1.4 MB of arrays for 1 KB blobs."""

EXIT_OK, EXIT_REJECTED, EXIT_BAD_DIRECTORY, EXIT_DATABASE = 0, 1, 2, 3

OUTCOMES = {
    "imported": "imported (new)",
    "updated": "updated (replaced an older record)",
    "older": "skipped as older (database newer)",
    "present": "already present (identical)",
    "conflict": "skipped, same timestamp but different content (database kept)",
    "duplicate": "skipped, duplicate of a newer file for the same user",
    "rejected": "rejected",
}
"""Each outcome and its line in the summary, in the summary's order."""

LISTED = {"rejected": "rejected", "duplicate": "skipped (duplicate)", "conflict": "skipped"}
"""How the outcomes listed file by file (on stderr) begin their line."""


@dataclass
class ImportReport:
    """What happened to each file; `listed` holds (outcome, file name, reason) to show."""

    files: int = 0
    ignored: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    listed: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)

    def add(self, outcome: str, name: str, reason: str | None = None) -> None:
        self.counts[outcome] += 1
        if reason is not None:
            self.listed.append((outcome, name, reason))


async def run_import_command(
    settings: Settings, *, directory: str, dry_run: bool, batch_size: int = BATCH_SIZE
) -> int:
    """Import (or with `dry_run` only classify) DIR's files; print the summary; exit status.

    0: no file rejected; 1: some file rejected (all valid ones are imported all the same);
    2: DIR is not a readable directory; 3: the database failed (batches written so far
    stay, a re-run completes the import).
    """
    try:
        source, names, ignored = list_legacy_files(directory)
    except OSError as exc:
        print(f"logikids-sync: import-legacy: cannot read {directory}: {exc}", file=sys.stderr)
        return EXIT_BAD_DIRECTORY
    if source != directory:
        print(f"Reading {source}", file=sys.stderr)
    report = ImportReport(files=len(names), ignored=ignored)
    progress = Progress(len(names)) if sys.stderr.isatty() else None
    try:
        await wait_for_database(settings)
        async with await maintenance_connection(settings) as conn:
            send_arrays_in_binary(conn)
            await import_files(
                conn,
                source,
                names,
                report,
                dry_run=dry_run,
                batch_size=batch_size,
                progress=progress,
            )
    except (DatabaseUnreachable, psycopg.Error) as exc:
        if progress:
            progress.finish()
        print(f"logikids-sync: import-legacy failed: {exc}", file=sys.stderr)
        _print_summary(report, source, dry_run=dry_run, interrupted=True)
        return EXIT_DATABASE
    if progress:
        progress.finish()
    _print_summary(report, source, dry_run=dry_run)
    return EXIT_REJECTED if report.counts["rejected"] else EXIT_OK


def send_arrays_in_binary(conn: psycopg.AsyncConnection) -> None:
    """Send list parameters as binary arrays on this connection (psycopg's default is text).

    A text array literal is quoted element by element through a regex: about 150 ms per
    batch of 1,000 1 KB blobs, more than everything else the batch costs. The binary
    array is a plain copy of the bytes.
    """
    conn.adapters.register_dumper(list, ListBinaryDumper)


async def import_files(
    conn: psycopg.AsyncConnection,
    directory: str,
    names: Sequence[str],
    report: ImportReport,
    *,
    dry_run: bool,
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
) -> None:
    """Read, check and write the files batch by batch, adding every outcome to `report`.

    Reading and checking a batch (Python, the slow part) happens in a thread while the
    previous batch is in PostgreSQL, so the two overlap.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    batches = iter(_batches(directory, names, batch_size))
    first = next(batches, None)
    reading = asyncio.create_task(asyncio.to_thread(read_batch, directory, first or []))
    while True:
        records, rejected = await reading
        read = len(records) + len(rejected)
        following = next(batches, None)
        if following is not None:
            reading = asyncio.create_task(asyncio.to_thread(read_batch, directory, following))
        for name, reason in rejected:
            report.add("rejected", name, reason)
        records = _newest_per_user(records, report)
        report.notes.extend((r.name, r.note) for r in records if r.note)
        if records:
            await _write_batch(conn, records, report, dry_run=dry_run)
        if progress:
            progress.advance(read)
        if following is None:
            return


BATCH_BYTES = 64 * 1024 * 1024
"""Cut a batch at this many bytes of files too: 1,000 files of near-1 MB blobs would make
one statement over PostgreSQL's 1 GB message limit (and hold gigabytes in memory)."""


def _batches(directory: str, names: Sequence[str], size: int) -> Iterator[list[str]]:
    """Slices of at most about `size` names and BATCH_BYTES of files; a cut never falls
    between names of one user id."""
    batch: list[str] = []
    batch_bytes = 0
    for name in names:
        full = len(batch) >= size or batch_bytes >= BATCH_BYTES
        if full and name.lower() != batch[-1].lower():
            yield batch
            batch, batch_bytes = [], 0
        batch.append(name)
        with contextlib.suppress(OSError):  # read_batch reports an unreadable file
            batch_bytes += os.stat(os.path.join(directory, name)).st_size
    if batch:
        yield batch


def _newest_per_user(records: list[LegacyRecord], report: ImportReport) -> list[LegacyRecord]:
    """One record per user id: two in one statement would make ON CONFLICT fail.

    The highest timestamp wins, then the later lastAccessed, then the file name, so the
    choice does not depend on the order the directory lists files in.
    """
    by_user: dict[uuid.UUID, list[LegacyRecord]] = {}
    for record in records:
        by_user.setdefault(record.user_id, []).append(record)
    kept = []
    for group in by_user.values():
        newest = max(group, key=_recency)
        kept.append(newest)
        for other in group:
            if other is not newest:
                why = "newer" if newest.timestamp > other.timestamp else "same timestamp, chosen"
                report.add("duplicate", other.name, f"same user as {newest.name} ({why})")
    return kept


def _recency(record: LegacyRecord) -> tuple[int, datetime, str]:
    return (record.timestamp, record.last_accessed, record.name)


async def _write_batch(
    conn: psycopg.AsyncConnection,
    records: list[LegacyRecord],
    report: ImportReport,
    *,
    dry_run: bool,
) -> None:
    columns = {
        "user_ids": [r.user_id for r in records],
        "encrypted_blobs": [r.encrypted_blob for r in records],
        "ivs": [r.iv for r in records],
        "timestamps": [r.timestamp for r in records],
        "checksums": [r.checksum for r in records],
    }
    if dry_run:
        rows = queries.classify_records(conn, **columns)
    else:
        rows = queries.import_records(
            conn,
            **columns,
            blob_sizes=[r.blob_size for r in records],
            created_ats=[r.created_at for r in records],
            last_accesseds=[r.last_accessed for r in records],
        )
    names = {r.user_id: r.name for r in records}
    async for user_id, outcome in rows:
        reason = "the database holds other content with the same timestamp"
        report.add(outcome, names[user_id], reason if outcome == "conflict" else None)


class Progress:
    """A one-line progress bar on stderr (a terminal only), redrawn at most 10 times a second."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.drawn = 0.0

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.drawn >= 0.1 or self.done >= self.total:
            self.drawn = now
            share = self.done / self.total if self.total else 1.0
            bar = "#" * int(share * 30)
            rate = self.done / max(now - self.started, 1e-9)
            sys.stderr.write(
                f"\r[{bar:<30}] {self.done}/{self.total} files {share:4.0%}  {rate:,.0f}/s"
            )
            sys.stderr.flush()

    def finish(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _print_summary(
    report: ImportReport, source: str, *, dry_run: bool, interrupted: bool = False
) -> None:
    for outcome, name, reason in report.listed:
        print(f"{LISTED[outcome]}: {name}: {reason}", file=sys.stderr)
    for name, note in report.notes:
        print(f"note: {name}: {note}", file=sys.stderr)
    counts = report.counts
    heading = "Dry run, nothing written" if dry_run else "Import"
    if interrupted:
        heading += ", interrupted"
    print(f"{heading}: {report.files} files in {source}")
    shown = [o for o in OUTCOMES if counts[o] or o not in ("conflict", "duplicate")]
    width = max(len(OUTCOMES[o]) for o in shown) + 1
    for outcome in shown:
        print(f"  {OUTCOMES[outcome] + ':':<{width}} {counts[outcome]:>8}")
    if report.ignored:
        print(f"  (ignored {report.ignored} entries not named *.json)")
    if interrupted:
        return
    written = counts["imported"] + counts["updated"]
    if dry_run:
        print(f"Would import {written} of {report.files} files.")
    elif report.files == 0:
        print("Nothing to import: no *.json files.")
    elif written == 0 and counts["present"] == report.files:
        print(f"Nothing to import: all {report.files} files already present.")
    elif written == 0:
        print("Nothing to import.")
