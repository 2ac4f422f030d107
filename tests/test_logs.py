"""The batching log handler: access lines are written in batches, everything else at
once, and nothing is lost or reordered."""

from __future__ import annotations

import asyncio
import io
import logging
import time

import pytest

import service.logs
from service.logs import (
    TEXT_FORMAT,
    AccessLine,
    BatchingStreamHandler,
    JsonFormatter,
    log_access,
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


@pytest.fixture
def routed(monkeypatch):
    """Install `h` as logging's only route, the way configure_logging does, at `level`;
    `fast` chooses AccessLine or the standard LogRecord path. Restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def install(h: BatchingStreamHandler, log_format: str, *, fast: bool, level=logging.INFO):
        root.handlers[:] = [h]
        root.setLevel(level)
        line = AccessLine(h, log_format=log_format) if fast else None
        monkeypatch.setattr(service.logs, "_access_line", line)

    yield install
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def formatter_for(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize("user", ["abcdef123456", None])
@pytest.mark.parametrize("auth", [None, "ok", "invalid"])
@pytest.mark.parametrize("fixed", [1_764_400_000.0423, 1_764_400_059.9996, 1_764_400_001.0])
def test_an_access_line_is_the_line_logging_would_have_written(
    monkeypatch, routed, log_format, user, auth, fixed
):
    """AccessLine skips the LogRecord for speed; what it writes must not change (its
    time stamp too, at the edges of a second)."""
    monkeypatch.setattr(time, "time", lambda: fixed)
    monkeypatch.setattr(time, "time_ns", lambda: int(fixed * 1e9))
    lines = []
    for fast in (True, False):
        stream = io.StringIO()
        h = BatchingStreamHandler(stream)
        h.setFormatter(formatter_for(log_format))
        routed(h, log_format, fast=fast)
        log_access("PUT", "/api/sync/{user_id}", 200, 1.234, user, auth=auth)
        lines.append(stream.getvalue())
    assert lines[0] == lines[1]
    assert (f"auth={auth}" in lines[0]) == (auth is not None)  # absent while tokens are off
    assert lines[0].endswith("\n") and lines[0].count("\n") == 1


@pytest.mark.parametrize("fast", [True, False])
def test_no_access_line_below_the_configured_level(routed, fast):
    stream = io.StringIO()
    h = handler(stream)
    routed(h, "text", fast=fast, level=logging.WARNING)
    log_access("GET", "/api/sync/{user_id}", 200, 1.0, None)
    h.flush()
    assert stream.getvalue() == ""


def test_another_handler_gets_the_access_line_too(routed):
    """With a second handler (pytest's caplog, an error tracker) the fast path would
    bypass it: the standard path is taken instead."""
    ours, theirs = io.StringIO(), io.StringIO()
    h = handler(ours)
    routed(h, "text", fast=True)
    extra = logging.StreamHandler(theirs)
    extra.setFormatter(logging.Formatter("%(name)s %(message)s"))
    logging.getLogger().addHandler(extra)
    log_access("GET", "/api/sync/{user_id}", 200, 1.0, None)
    assert (
        ours.getvalue() == theirs.getvalue() == "service.access GET /api/sync/{user_id} 200 1.0ms\n"
    )


def test_a_batch_stays_below_pipe_buf_so_workers_never_splice_lines():
    stream = io.StringIO()
    h = handler(stream, max_bytes=100, max_delay=60)
    writes = []
    stream.write = lambda text: writes.append(text) or len(text)  # type: ignore[method-assign]

    async def scenario() -> None:
        for i in range(10):
            h.handle(record("service.access", f"GET {i} " + "x" * 20))

    asyncio.run(scenario())
    h.flush()
    assert all(len(w) <= 100 for w in writes) and len(writes) > 1
    assert "".join(writes).splitlines() == [
        f"service.access GET {i} " + "x" * 20 for i in range(10)
    ]
