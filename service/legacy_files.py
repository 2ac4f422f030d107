"""What a legacy file must hold: the TypeScript service's data/sync/<userId>.json, read and checked.

The API's own rules (service/payload) decide the four payload fields; the file adds its
user id (equal to the file name, in either case) and its dates. Decisions:
- createdAt and lastAccessed are required ISO-8601 date-times with a time zone, as
  JavaScript's toISOString wrote them. They cannot be recomputed, so a file without
  them is rejected (the operator fixes it and re-runs) rather than given invented dates.
- blobSize can be recomputed exactly: the stored size is always the blob's decoded
  size, and a blobSize that disagrees becomes a note, not a rejection.

Files are opened read-only and never written, renamed or deleted.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson

from service.errors import PayloadTooLarge, ValidationFailed
from service.payload import MAX_BLOB_BYTES, MAX_BODY_BYTES, parse_user_id, validate_payload

MAX_FILE_BYTES = 2 * MAX_BODY_BYTES
"""A larger file cannot hold a valid record, even pretty-printed; it is not parsed."""


class Rejected(Exception):
    """A file that cannot be imported; the message is the reason shown to the operator."""


@dataclass(frozen=True, slots=True)
class LegacyRecord:
    """One valid file, ready for import_records."""

    name: str
    user_id: uuid.UUID
    encrypted_blob: str
    iv: str
    timestamp: int
    checksum: str
    blob_size: int
    created_at: datetime
    last_accessed: datetime
    note: str | None = None


def list_legacy_files(directory: str) -> tuple[str, list[str], int]:
    """(directory read, its *.json names in import order, how many other entries).

    Given the parent `data/` with no JSON files of its own, reads its `sync/`. Names are
    sorted case-insensitively, so the files of one user id (names differing only in
    case) are neighbours and never land in different batches.
    """
    names, ignored = _scan(directory)
    nested = os.path.join(directory, "sync")
    if not names and os.path.isdir(nested):
        directory = nested
        names, ignored = _scan(directory)
    names.sort(key=lambda name: (name.lower(), name))
    return directory, names, ignored


def _scan(directory: str) -> tuple[list[str], int]:
    names: list[str] = []
    ignored = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(".json"):
                names.append(entry.name)
            else:
                ignored += 1
    return names, ignored


def read_batch(
    directory: str, names: Sequence[str]
) -> tuple[list[LegacyRecord], list[tuple[str, str]]]:
    """The valid records of these files, and (name, reason) for each rejected one."""
    records: list[LegacyRecord] = []
    rejected: list[tuple[str, str]] = []
    for name in names:
        try:
            records.append(read_record(os.path.join(directory, name), name))
        except Rejected as exc:
            rejected.append((name, str(exc)))
    return records, rejected


def read_record(path: str, name: str) -> LegacyRecord:
    """One file as a record, or Rejected listing every rule it breaks."""
    stem = name.removesuffix(".json")
    try:
        user_id = parse_user_id(stem)
    except ValidationFailed:
        raise Rejected("file name is not <userId>.json with a UUID userId") from None
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise Rejected("not a regular file")  # a FIFO would block open() forever
        # Unbuffered: one read of the file's size, not a copy through a buffer.
        with open(path, "rb", buffering=0) as file:
            if os.fstat(file.fileno()).st_size > MAX_FILE_BYTES:
                raise Rejected(f"file larger than {MAX_FILE_BYTES} bytes (payload too large)")
            raw = file.readall()
    except IsADirectoryError:
        raise Rejected("not a regular file") from None
    except OSError as exc:
        raise Rejected(f"cannot read: {exc.strerror or exc}") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Rejected(f"not valid JSON ({exc})") from None
    return parse_record(data, name, user_id=user_id)


def parse_record(data: object, name: str, *, user_id: uuid.UUID | None = None) -> LegacyRecord:
    """A parsed file as a record, or Rejected listing every rule it breaks."""
    stem = name.removesuffix(".json")
    if user_id is None:
        try:
            user_id = parse_user_id(stem)
        except ValidationFailed:
            raise Rejected("file name is not <userId>.json with a UUID userId") from None
    if not isinstance(data, dict):
        raise Rejected("not a JSON object")

    problems: list[str] = []
    claimed = data.get("userId")
    if not isinstance(claimed, str):
        problems.append("userId: missing or not a string")
    elif claimed.lower() != stem.lower():
        problems.append("userId: differs from the file name")
    payload = None
    try:
        payload = validate_payload(data)
    except ValidationFailed as exc:
        problems.extend(f"{d.field}: {d.message}" for d in exc.details)
    except PayloadTooLarge:
        problems.append(
            f"encryptedBlob: decodes to more than {MAX_BLOB_BYTES} bytes (payload too large)"
        )
    created_at = _parse_date(data, "createdAt", problems)
    last_accessed = _parse_date(data, "lastAccessed", problems)
    if problems or payload is None or created_at is None or last_accessed is None:
        raise Rejected("; ".join(problems))

    note = None
    claimed_size = data.get("blobSize")
    if claimed_size is not None and claimed_size != payload.blob_size:
        note = (
            f"blobSize {_short(claimed_size)} differs from the blob's decoded size "
            f"{payload.blob_size}; stored {payload.blob_size}"
        )
    return LegacyRecord(
        name=name,
        user_id=user_id,
        encrypted_blob=payload.encrypted_blob,
        iv=payload.iv,
        timestamp=payload.timestamp,
        checksum=payload.checksum,
        blob_size=payload.blob_size,
        created_at=created_at,
        last_accessed=last_accessed,
        note=note,
    )


def _parse_date(data: dict[str, object], key: str, problems: list[str]) -> datetime | None:
    value = data.get(key)
    if value is None:
        problems.append(f"{key}: missing")
        return None
    if not isinstance(value, str):
        problems.append(f"{key}: must be an ISO-8601 date-time string")
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        problems.append(f"{key}: not an ISO-8601 date-time")
        return None
    if parsed.tzinfo is None:
        problems.append(f"{key}: has no time zone (like the Z of 2024-01-15T10:30:00.000Z)")
        return None
    return parsed


def _short(value: object) -> str:
    text = orjson.dumps(value).decode() if not isinstance(value, str) else repr(value)
    return text if len(text) <= 24 else text[:21] + "..."
