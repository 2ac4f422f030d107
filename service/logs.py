"""Logging set-up: one line per event, as text or as one JSON object per line.

User ids are secrets here (anyone holding one can read and erase that record), so logs
carry `user_hash(...)`, a short one-way digest that still tells requests of one user apart.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import select
import sys
import time
from datetime import UTC, datetime
from typing import TextIO

import orjson

ACCESS_LOGGER = "service.access"
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# uvicorn adds `color_message` (its message with ANSI colours) to its records: not data.
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


@functools.lru_cache(maxsize=16384)
def user_hash(user_id: object) -> str:
    """A short, stable digest of a user id for logs; never log the id itself.

    Cached: a client syncs with one id many times, and a SHA-256 per access line was
    1.4% of a GET's CPU. The cache is bounded, so ids made up to fill it cost nothing."""
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
    about 8% of a request's CPU (docs/benchmarks.md). Its lines are held at most `max_delay`
    seconds, `max_lines` lines or `max_bytes` characters. Any other line (start-up,
    errors, cleanup) writes at once, after the held ones, in order; so does a line logged
    outside an event loop, and logging's shutdown flush writes whatever is held.

    All workers share one stderr. A write of at most PIPE_BUF (4096) bytes to a pipe is
    never interleaved with another process's, so a batch stays below that and the lines
    of two workers cannot be spliced mid-line (docker logs, journald).
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        batched: str = ACCESS_LOGGER,
        max_lines: int = 64,
        max_bytes: int = select.PIPE_BUF,
        max_delay: float = 0.2,
    ) -> None:
        super().__init__(stream)
        self.batched = batched
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.max_delay = max_delay
        self._lines: list[str] = []
        self._held = 0  # characters held; access lines are ASCII, so bytes too

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
            if self._lines and self._held + len(line) > self.max_bytes:
                self.flush()  # what is held goes out in one write below PIPE_BUF
            self._lines.append(line)
            self._held += len(line)
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
                lines, self._lines, self._held = "".join(self._lines), [], 0
                try:
                    self.stream.write(lines)
                except Exception:
                    self.handleError(logging.makeLogRecord({"msg": "lost log lines"}))
            super().flush()


class AccessLine:
    """Writes one access line per request straight into the batching handler, shaped
    as configure_logging's formatter for `log_format` (text or JSON) shapes an INFO
    record of `service.access`.

    Why not `logger.info(...)`: building, filtering and formatting a LogRecord cost
    more than a third of a request's time outside the database (docs/benchmarks.md), and
    the access line is the one line every request writes: under load it measured a
    tenth of verify's throughput. The time stamp is built inline, not by a helper.
    It is used only while that handler is logging's sole route for the line
    (`log_access`); tests/test_logs.py checks that both ways write the same line."""

    def __init__(self, handler: BatchingStreamHandler, *, log_format: str) -> None:
        self.handler = handler
        self.json = log_format == "json"
        self._second: tuple[int, str] = (-1, "")  # one tuple: read and replaced at once
        self._msec_format = logging.Formatter.default_msec_format
        self._prefix = f" INFO    {ACCESS_LOGGER}: "

    def is_sole_route(self) -> bool:
        """Would logging hand an access record to this handler, and to it alone,
        unfiltered? (Not when a test or an embedding app added handlers or filters.)"""
        handlers = logging.root.handlers
        return (
            len(handlers) == 1
            and handlers[0] is self.handler
            and not self.handler.filters
            and not _access_logger.handlers
            and not _access_logger.filters
            and _access_logger.propagate
        )

    def write(
        self,
        method: str,
        route: str,
        status: int,
        duration_ms: float,
        user: str | None,
        auth: str | None,
    ) -> None:
        """Write the access line of one request (log_access's arguments)."""
        now = time.time()
        if self.json:
            entry = {
                "time": _iso_time(now),
                "level": "INFO",
                "logger": ACCESS_LOGGER,
                "message": _access_message(method, route, status, duration_ms, user, auth),
                **_access_fields(method, route, status, duration_ms, user, auth),
            }
            line = orjson.dumps(entry).decode()
        else:  # logging.Formatter's default asctime; its date part changes once a second
            second = int(now)
            cached_second, date = self._second
            if second != cached_second:
                formatter = logging.Formatter
                date = time.strftime(formatter.default_time_format, formatter.converter(second))
                self._second = (second, date)
            asctime = self._msec_format % (date, int((now - second) * 1000))
            message = _access_message(method, route, status, duration_ms, user, auth)
            line = f"{asctime}{self._prefix}{message}"
        self.handler.write_line(line + self.handler.terminator, batched=True)


def log_access(
    method: str,
    route: str,
    status: int,
    duration_ms: float,
    user: str | None,
    *,
    auth: str | None = None,
) -> None:
    """The access line for one request: what an INFO record of the `service.access`
    logger would write, written faster when configure_logging's handler is its only
    route (AccessLine). `auth` is the bearer-token outcome (ok, missing, invalid,
    expired, forbidden); None (tokens off, or not checked) leaves it out of the line."""
    if not _access_logger.isEnabledFor(logging.INFO):
        return
    line = _access_line
    if line is not None and line.is_sole_route():
        line.write(method, route, status, duration_ms, user, auth)
    else:  # logging arranged otherwise (tests, an embedding app): the standard way
        message = _access_message(method, route, status, duration_ms, user, auth)
        fields = _access_fields(method, route, status, duration_ms, user, auth)
        _access_logger.info("%s", message, extra=fields)


def _access_message(
    method: str, route: str, status: int, duration_ms: float, user: str | None, auth: str | None
) -> str:
    """The access line's message: a text line's whole text after its prefix."""
    message = f"{method} {route} {status} {duration_ms:.1f}ms"
    if user:
        message += f" user={user}"
    if auth is not None:
        message += f" auth={auth}"
    return message


def _access_fields(
    method: str, route: str, status: int, duration_ms: float, user: str | None, auth: str | None
) -> dict[str, object]:
    """The access line's `extra=` fields (the keys of a JSON line)."""
    fields: dict[str, object] = {
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": round(duration_ms, 2),
        "user": user,
    }
    if auth is not None:
        fields["auth"] = auth
    return fields


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
    logging.logAsyncioTasks = False  # Python 3.12+: a current_task() per record
    handler = BatchingStreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for previous in root.handlers:  # set up again (a single-worker server): drop cleanly
        previous.flush()
    root.handlers[:] = [handler]
    root.setLevel(log_level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # uvicorn's access log prints the raw path, which holds the user id: ours replaces it.
    logging.getLogger("uvicorn.access").disabled = True
    _access_line = AccessLine(handler, log_format=log_format)
