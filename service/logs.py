"""Logging set-up: one line per event, as text or as one JSON object per line.

User ids are secrets here (anyone holding one can read and erase that record), so logs
carry `user_hash(...)`, a short one-way digest that still tells requests of one user apart.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from datetime import UTC, datetime

import orjson

# uvicorn adds `color_message` (its message with ANSI colours) to its records: not data.
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


def user_hash(user_id: object) -> str:
    """A short, stable digest of a user id for logs; never log the id itself."""
    return hashlib.sha256(str(user_id).lower().encode()).hexdigest()[:12]


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any `extra=` fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(*, log_format: str, log_level: str) -> None:
    """Route every logger (ours and uvicorn's) through one stderr handler."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(log_level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # uvicorn's access log prints the raw path, which holds the user id: ours replaces it.
    logging.getLogger("uvicorn.access").disabled = True
