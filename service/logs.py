"""Logging set-up: one line per event, as text or as one JSON object per line.

User ids are secrets here (anyone holding one can read and erase that record), so logs
carry `user_hash(...)`, a short one-way digest that still tells requests of one user apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

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


class BatchingStreamHandler(logging.StreamHandler):
    """A stream handler that writes the access log in batches, not a write per line.

    The access log writes a line per request, and one write system call per line cost
    about 8% of a request's CPU (BENCHMARKS.md). Its lines are held at most `max_delay`
    seconds or `max_lines` lines. Any other line (start-up, errors, cleanup) writes at
    once, after the held ones, in order; so does a line logged outside an event loop,
    and logging's shutdown flush writes whatever is held.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        batched: str = "service.access",
        max_lines: int = 64,
        max_delay: float = 0.2,
    ) -> None:
        super().__init__(stream)
        self.batched = batched
        self.max_lines = max_lines
        self.max_delay = max_delay
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        if record.name != self.batched or len(self._lines) >= self.max_lines:
            self.flush()
        elif len(self._lines) == 1:
            try:
                asyncio.get_running_loop().call_later(self.max_delay, self.flush)
            except RuntimeError:  # no event loop to flush later: write now
                self.flush()

    def flush(self) -> None:
        with self.lock:
            if self._lines:
                lines, self._lines = "".join(self._lines), []
                try:
                    self.stream.write(lines)
                except Exception:
                    self.handleError(logging.makeLogRecord({"msg": "lost log lines"}))
            super().flush()


def configure_logging(*, log_format: str, log_level: str) -> None:
    """Route every logger (ours and uvicorn's) through one stderr handler."""
    # No format here names the process or thread: skip collecting them for every record,
    # as the logging docs' "Optimization" section suggests (a getpid() system call and
    # two lookups per access line).
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    handler = BatchingStreamHandler(sys.stderr)
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
