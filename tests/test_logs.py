"""The batching log handler: access lines are written in batches, everything else at
once, and nothing is lost or reordered."""

from __future__ import annotations

import asyncio
import io
import logging
import time

import pytest

from service.logs import (
    ACCESS_LOGGER,
    TEXT_FORMAT,
    AccessLine,
    BatchingStreamHandler,
    JsonFormatter,
)


def record(name: str, message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.makeLogRecord({"name": name, "msg": message, "levelno": level})


def handler(stream: io.StringIO, **kwargs) -> BatchingStreamHandler:
    h = BatchingStreamHandler(stream, **kwargs)
    h.setFormatter(logging.Formatter("%(name)s %(message)s"))
    return h


def test_outside_an_event_loop_every_line_is_written_at_once():
    stream = io.StringIO()
    h = handler(stream)
    h.handle(record("service.access", "GET 1"))
    assert stream.getvalue() == "service.access GET 1\n"


def test_access_lines_wait_for_the_delay_then_come_out_in_order():
    stream = io.StringIO()
    h = handler(stream, max_delay=0.05)

    async def scenario() -> tuple[str, str]:
        h.handle(record("service.access", "GET 1"))
        h.handle(record("service.access", "GET 2"))
        held = stream.getvalue()
        await asyncio.sleep(0.2)
        return held, stream.getvalue()

    held, later = asyncio.run(scenario())
    assert held == ""
    assert later == "service.access GET 1\nservice.access GET 2\n"


def test_another_logger_s_line_writes_the_held_lines_first():
    stream = io.StringIO()
    h = handler(stream, max_delay=60)

    async def scenario() -> str:
        h.handle(record("service.access", "GET 1"))
        h.handle(record("service.db", "pool closed", logging.WARNING))
        return stream.getvalue()

    assert asyncio.run(scenario()) == "service.access GET 1\nservice.db pool closed\n"


def test_a_full_batch_is_written_without_waiting():
    stream = io.StringIO()
    h = handler(stream, max_lines=3, max_delay=60)

    async def scenario() -> str:
        for i in range(4):
            h.handle(record("service.access", f"GET {i}"))
        return stream.getvalue()

    assert asyncio.run(scenario()).splitlines() == [f"service.access GET {i}" for i in range(3)]
    h.flush()  # what logging.shutdown() does when the process ends
    assert stream.getvalue().splitlines()[-1] == "service.access GET 3"


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize("user", ["abcdef123456", None])
def test_an_access_line_is_the_line_logging_would_have_written(monkeypatch, log_format, user):
    """AccessLine skips the LogRecord for speed; what it writes must not change."""
    fixed = 1_764_400_000.0423
    lines = []
    for fast in (True, False):
        stream = io.StringIO()
        h = BatchingStreamHandler(stream)
        h.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
        if fast:
            monkeypatch.setattr(time, "time", lambda: fixed)
            AccessLine(h, log_format=log_format)("PUT", "/api/sync/{user_id}", 200, 1.234, user)
            monkeypatch.undo()
        else:
            message = "PUT /api/sync/{user_id} 200 1.2ms" + (f" user={user}" if user else "")
            extra = {
                "method": "PUT",
                "route": "/api/sync/{user_id}",
                "status": 200,
                "duration_ms": 1.23,
                "user": user,
            }
            entry = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 1, message, (), None)
            entry.__dict__.update(extra, created=fixed, msecs=int((fixed % 1) * 1000) + 0.0)
            h.handle(entry)
        lines.append(stream.getvalue())
    assert lines[0] == lines[1]
    assert lines[0].endswith("\n") and lines[0].count("\n") == 1
