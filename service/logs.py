"""Logging set-up: one line per event, as text or as one JSON object per line.

User ids are secrets here (anyone holding one can read and erase that record), so logs
carry `user_hash(...)`, a short one-way digest that still tells requests of one user apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
import time
from datetime import UTC, datetime
from typing import TextIO

import orjson

ACCESS_LOGGER = "service.access"
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
TEXT_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"  # logging.Formatter's default, before ",msecs"

# uvicorn adds `color_message` (its message with ANSI colours) to its records: not data.
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


def user_hash(user_id: object) -> str:
    """A short, stable digest of a user id for logs; never log the id itself."""
    return hashlib.sha256(str(user_id).lower().encode()).hexdigest()[:12]


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any `extra=` fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _iso_time(record.created),
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
        batched: str = ACCESS_LOGGER,
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
        self.write_line(line, batched=record.name == self.batched)

    def write_line(self, line: str, *, batched: bool) -> None:
        """Hold a formatted line (terminator included) if `batched`, else write it now
        after the held ones; AccessLine writes through here without a LogRecord."""
        with self.lock:
            self._lines.append(line)
            if not batched or len(self._lines) >= self.max_lines:
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


class AccessLine:
    """Writes one access line per request straight into the batching handler, in the
    same text or JSON shape the handler's formatter gives every other line.

    Why not `logger.info(...)`: building, filtering and formatting a LogRecord cost
    more than a third of a request's time outside the database (BENCHMARKS.md), and
    the access line is the one line every request writes. tests/test_logs.py checks
    that both ways give the same line."""

    def __init__(self, handler: BatchingStreamHandler, *, log_format: str) -> None:
        self.handler = handler
        self.json = log_format == "json"
        self._second = -1
        self._second_text = ""

    def __call__(
        self, method: str, route: str, status: int, duration_ms: float, user: str | None
    ) -> None:
        now = time.time()
        message = f"{method} {route} {status} {duration_ms:.1f}ms" + (
            f" user={user}" if user else ""
        )
        if self.json:
            line = orjson.dumps(
                {
                    "time": _iso_time(now),
                    "level": "INFO",
                    "logger": ACCESS_LOGGER,
                    "message": message,
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(duration_ms, 2),
                    "user": user,
                }
            ).decode()
        else:
            line = f"{self._asctime(now)} INFO    {ACCESS_LOGGER}: {message}"
        self.handler.write_line(line + self.handler.terminator, batched=True)

    def _asctime(self, now: float) -> str:
        """logging.Formatter's default asctime; the date part changes once a second."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime(TEXT_DATE_FORMAT, time.localtime(second))
        return f"{self._second_text},{int((now - second) * 1000):03d}"


def log_access(method: str, route: str, status: int, duration_ms: float, user: str | None) -> None:
    """The access line for one request, at INFO on the `service.access` logger."""
    if not _access_logger.isEnabledFor(logging.INFO):
        return
    if _access_line is not None:
        _access_line(method, route, status, duration_ms, user)
        return
    # Logging set up by someone else (tests, an embedding app): the standard way.
    _access_logger.info(
        "%s %s %d %.1fms%s",
        method,
        route,
        status,
        duration_ms,
        f" user={user}" if user else "",
        extra={
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(duration_ms, 2),
            "user": user,
        },
    )


def _iso_time(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


_access_logger = logging.getLogger(ACCESS_LOGGER)
_access_line: AccessLine | None = None


def configure_logging(*, log_format: str, log_level: str) -> None:
    """Route every logger (ours and uvicorn's) through one stderr handler."""
    global _access_line
    # No format here names the process or thread: skip collecting them for every record,
    # as the logging docs' "Optimization" section suggests (a getpid() system call and
    # two lookups per access line).
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    handler = BatchingStreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(log_level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # uvicorn's access log prints the raw path, which holds the user id: ours replaces it.
    logging.getLogger("uvicorn.access").disabled = True
    _access_line = AccessLine(handler, log_format=log_format)
