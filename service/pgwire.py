"""One batch of statements over one connection, through psycopg's documented libpq
wrapper (`AsyncConnection.pgconn`, psycopg.pq): each statement prepared once per
connection, sent with a Sync of its own (its own transaction), the whole batch written
before any result is read, and the event loop watching the socket.

Why not psycopg's cursors: a cursor's `execute` in pipeline mode polls, flushes and
reads after every statement, psycopg has no public call that queues a Sync without
waiting for the results, and its pipeline raises only the first error of a batch. The
libpq calls do exactly what a batch needs and nothing more, and psycopg documents
`pgconn` for such low-level use. psycopg still owns the connection: connecting,
configuration, cancellation, the pool; after a batch the connection is idle and out of
pipeline mode, as psycopg left it.

The statements are the service's own (queries/*.sql, through aiosql's psycopg
placeholders), so the parameters and columns come from a small known set of types,
encoded and decoded here as PostgreSQL's text format: str, int, float, bool, None,
UUID, datetime, and lists of those as arrays; columns of type bool, int2/4/8, float4/8, text,
varchar, uuid, timestamptz and void. Anything else fails its own statement with a ProgrammingError
before anything is sent.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import re
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors, pq

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")

TUPLES_OK = pq.ExecStatus.TUPLES_OK
COMMAND_OK = pq.ExecStatus.COMMAND_OK
PIPELINE_SYNC = pq.ExecStatus.PIPELINE_SYNC
PIPELINE_ABORTED = pq.ExecStatus.PIPELINE_ABORTED
FATAL_ERROR = pq.ExecStatus.FATAL_ERROR


@dataclass(frozen=True, slots=True)
class Statement:
    """A named query's text in libpq's form: `$n` placeholders, the names they bind in
    order, and the name it is prepared under (from its text, so every process and
    connection agrees)."""

    sql: bytes
    names: tuple[str, ...]
    prepared_name: bytes

    def encode(self, params: Mapping[str, Any]) -> list[bytes | None]:
        """The parameters in text format; ProgrammingError for one it cannot send."""
        try:
            return [_encode(params[name]) for name in self.names]
        except KeyError as exc:
            raise psycopg.ProgrammingError(f"query parameter missing: {exc}") from None


_statements: dict[str, Statement] = {}


def statement(sql: str) -> Statement:
    """The Statement for a named query's text, built once per process."""
    found = _statements.get(sql)
    if found is None:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match[0] == "%%":
                return "%"
            if match[1] not in names:
                names.append(match[1])
            return f"${names.index(match[1]) + 1}"

        text = _PLACEHOLDER.sub(number, sql)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        found = Statement(text.encode(), tuple(names), f"lks_{digest}".encode())
        _statements[sql] = found
    return found


_prepared: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], set[bytes]] = (
    weakref.WeakKeyDictionary()
)
"""The statements prepared on each pooled connection (gone with the connection)."""


async def run_batch(
    conn: psycopg.AsyncConnection[Any],
    batch: Sequence[tuple[Statement, list[bytes | None]]],
    *,
    prepare: bool,
    pipelined: bool,
) -> list[tuple[Any, ...] | Exception | None]:
    """Run each statement of `batch` as its own transaction on `conn`; for each, its
    first row (None without rows) or its own error. `prepare=False` sends each
    statement with its text (PgBouncer in transaction mode). Raises only when the
    connection fails; the caller then closes it, since its state is unknown."""
    pgconn = conn.pgconn
    prepared = _prepared.setdefault(conn, set()) if prepare else None
    exchange = _Exchange(pgconn)
    answers: list[tuple[Any, ...] | Exception | None] = []
    if not pipelined:
        for stmt, values in batch:  # a batch of one: no pipeline, a round trip each
            answers.append(await _one_by_one(exchange, stmt, values, prepared))
        await _close_if_lost(conn, answers)
        return answers
    pgconn.enter_pipeline_mode()
    try:
        parses = [_send(pgconn, stmt, values, prepared) for stmt, values in batch]
        await exchange.flush()
        failed_parses: dict[bytes, Exception] = {}
        for (stmt, _), parse in zip(batch, parses, strict=True):
            parse_error = None
            if parse:  # the Parse's own result first; if it failed, that is the error
                outcome = await exchange.results()
                if isinstance(outcome, Exception) and not _already_prepared(outcome):
                    parse_error = failed_parses[stmt.prepared_name] = outcome
            answer = await exchange.results()
            await exchange.sync()
            if isinstance(answer, errors.InvalidSqlStatementName):
                # This batch's Parse of it failed (its error is this one's too: a cancel
                # is a 503), or someone ran DEALLOCATE or DISCARD behind our back.
                parse_error = failed_parses.get(stmt.prepared_name) or _lost(answer)
            answers.append(parse_error or answer)
            if prepared is not None and parse_error is not None:
                prepared.discard(stmt.prepared_name)
        pgconn.exit_pipeline_mode()
        await _close_if_lost(conn, answers)
    except BaseException:
        _prepared.pop(conn, None)  # what this connection holds is unknown: it gets closed
        raise
    return answers


async def _one_by_one(
    exchange: _Exchange,
    stmt: Statement,
    values: list[bytes | None],
    prepared: set[bytes] | None,
) -> tuple[Any, ...] | Exception | None:
    """One statement outside pipeline mode (PgBouncer before 1.21)."""
    pgconn = exchange.pgconn
    if prepared is None:
        pgconn.send_query_params(stmt.sql, values)
    else:
        if stmt.prepared_name not in prepared:
            pgconn.send_prepare(stmt.prepared_name, stmt.sql)
            await exchange.flush()
            outcome = await exchange.results()
            if isinstance(outcome, Exception) and not _already_prepared(outcome):
                return outcome
            prepared.add(stmt.prepared_name)
        pgconn.send_query_prepared(stmt.prepared_name, values)
    await exchange.flush()
    answer = await exchange.results()
    if isinstance(answer, errors.InvalidSqlStatementName):
        return _lost(answer)  # someone ran DEALLOCATE or DISCARD behind our back
    return answer


def _send(
    pgconn: pq.abc.PGconn,
    stmt: Statement,
    values: list[bytes | None],
    prepared: set[bytes] | None,
) -> bool:
    """Queue one statement and its Sync (its Parse first when this connection has not
    prepared it yet, counted as prepared from now on so the batch parses it once; a
    failed Parse takes it back); whether a Parse was queued."""
    parse = prepared is not None and stmt.prepared_name not in prepared
    if prepared is None:
        pgconn.send_query_params(stmt.sql, values)
    else:
        if parse:
            pgconn.send_prepare(stmt.prepared_name, stmt.sql)
            prepared.add(stmt.prepared_name)
        pgconn.send_query_prepared(stmt.prepared_name, values)
    pgconn.pipeline_sync()
    return parse


class _Exchange:
    """Reads results off one connection, waiting on its socket through the event loop."""

    def __init__(self, pgconn: pq.abc.PGconn) -> None:
        self.pgconn = pgconn
        self.loop = asyncio.get_running_loop()
        self.fd = pgconn.socket

    async def flush(self) -> None:
        """Send everything queued. While libpq cannot send it all, wait for the socket
        to be writable *or* readable, and read what arrived: the server answers the
        first statements while the rest is still on its way, and a server blocked
        writing results we do not read stops reading what we send (libpq's docs on
        pipeline mode: the client must consume input while it waits to write)."""
        while self.pgconn.flush():
            ready = self.loop.create_future()
            self.loop.add_writer(self.fd, _ready, ready, False)
            self.loop.add_reader(self.fd, _ready, ready, True)
            try:
                readable = await ready
            finally:
                self.loop.remove_writer(self.fd)
                self.loop.remove_reader(self.fd)
            if readable:
                self.pgconn.consume_input()  # buffered in libpq, read in order later

    async def results(self) -> tuple[Any, ...] | Exception | None:
        """One query's outcome: its first row (None without rows, or for a command), or
        its error; the results up to libpq's end-of-query marker are consumed."""
        outcome: tuple[Any, ...] | Exception | None = None
        while True:
            result = await self._next()
            if result is None:
                return outcome
            status = result.status
            if status == TUPLES_OK:
                if not isinstance(outcome, Exception):
                    try:  # a row it cannot read is this statement's error, not the batch's
                        outcome = _first_row(result)
                    except psycopg.Error as exc:
                        outcome = exc
                    except ValueError as exc:  # a value the decoders do not expect: a bug
                        outcome = psycopg.ProgrammingError(f"cannot read the row: {exc}")
            elif status == FATAL_ERROR:
                outcome = _error(result)
            elif status == PIPELINE_ABORTED:
                outcome = psycopg.OperationalError("the statement's pipeline was aborted")
            elif status != COMMAND_OK:
                outcome = psycopg.OperationalError(f"unexpected result {status.name}")

    async def sync(self) -> None:
        """Consume the result that marks a Sync: the end of one statement's transaction."""
        result = await self._next()
        if result is None or result.status != PIPELINE_SYNC:
            raise psycopg.OperationalError("the batch's results lost their order")

    async def _next(self) -> pq.abc.PGresult | None:
        while self.pgconn.is_busy():
            await self._wait(self.loop.add_reader, self.loop.remove_reader)
            self.pgconn.consume_input()  # OperationalError when the connection broke
        return self.pgconn.get_result()

    async def _wait(self, add: Callable[..., None], remove: Callable[[int], object]) -> None:
        ready = self.loop.create_future()
        add(self.fd, _ready, ready, None)
        try:
            await ready
        finally:
            remove(self.fd)


def _ready(future: asyncio.Future[Any], value: object) -> None:
    if not future.done():
        future.set_result(value)


class PreparedStatementLost(psycopg.OperationalError):
    """The server no longer has a statement this connection prepared (DEALLOCATE or
    DISCARD behind the batcher's back): the connection's state is unknown, which is a
    503 for the request, and the connection is closed rather than reused."""


def _lost(error: Exception) -> PreparedStatementLost:
    return PreparedStatementLost(f"prepared statement lost on this connection: {error}")


def _already_prepared(error: Exception) -> bool:
    """A Parse refused because the name exists: the server has the statement, so it is
    prepared after all (a record of ours lost while the server kept it)."""
    return isinstance(error, errors.DuplicatePreparedStatement)


async def _close_if_lost(
    conn: psycopg.AsyncConnection[Any], answers: list[tuple[Any, ...] | Exception | None]
) -> None:
    """Close a connection whose prepared statements went missing: which others did too
    is unknown. Closed inside the pool's block, it is discarded and replaced."""
    if any(isinstance(answer, PreparedStatementLost) for answer in answers):
        _prepared.pop(conn, None)
        await conn.close()


def _error(result: pq.abc.PGresult) -> psycopg.Error:
    """The psycopg exception class for the result's SQLSTATE, with the server's message
    (psycopg.errors.lookup is psycopg's documented map)."""
    sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE)
    message = result.error_message.decode(errors="replace").strip()
    try:
        cls = errors.lookup(sqlstate.decode()) if sqlstate else psycopg.DatabaseError
    except KeyError:
        cls = psycopg.DatabaseError
    return cls(message)


def _first_row(result: pq.abc.PGresult) -> tuple[Any, ...] | None:
    if result.ntuples == 0:
        return None
    return tuple(
        _decode(result.ftype(column), result.get_value(0, column))
        for column in range(result.nfields)
    )


def _decode(oid: int, value: bytes | None) -> Any:
    if value is None:
        return None
    decode = _DECODERS.get(oid)
    if decode is None:
        raise psycopg.ProgrammingError(f"no decoder for column type oid {oid}")
    return decode(value)


def _timestamptz(value: bytes) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.decode())


_DECODERS: dict[int, Callable[[bytes], Any]] = {
    16: lambda v: v == b"t",  # bool
    20: int,  # int8
    21: int,  # int2
    23: int,  # int4
    700: float,  # float4
    701: float,  # float8
    25: bytes.decode,  # text
    1043: bytes.decode,  # varchar
    2950: lambda v: uuid.UUID(v.decode()),  # uuid
    1184: _timestamptz,  # timestamptz (with DateStyle ISO, psycopg's default)
    2278: lambda v: None,  # void (a function that returns nothing)
}


def _encode(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        if "\x00" in value:
            raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        return value.encode()
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, int | uuid.UUID):
        return str(value).encode()
    if isinstance(value, float):
        return _FLOATS.get(repr(value), repr(value)).encode()
    if isinstance(value, datetime.datetime):
        return value.isoformat().encode()
    if isinstance(value, list | tuple):
        return ("{" + ",".join(_array_element(v) for v in value) + "}").encode()
    raise psycopg.ProgrammingError(f"cannot send a parameter of type {type(value).__name__}")


_FLOATS = {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}


def _array_element(value: Any) -> str:
    encoded = _encode(value)
    if encoded is None:
        return "NULL"
    text = encoded.decode()
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
