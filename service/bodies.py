"""Reading request bodies safely: a size limit, a deadline, and a memory budget.

A body is read whole before any database work (so a slow client never holds a pooled
connection), which means each PUT in progress holds its body in memory: a near-limit one
costs about 2.8 MB with its parsed JSON. The budget bounds what all of them together may
hold in one process, counted in bytes, so clients trickling a few bytes cost almost
nothing while a burst of large uploads gets 503s instead of growing memory without limit.
"""

from __future__ import annotations

import asyncio

from starlette.requests import ClientDisconnect, Request

from service.errors import ClientClosedRequest, PayloadTooLarge, RequestTimeout

MEMORY_PER_BODY_BYTE = 2
"""The body's bytes plus the decoded JSON's string that holds the blob again."""


class UploadBudgetExhausted(Exception):
    """Taking more would exceed the process's budget for bodies in progress."""


class UploadBudget:
    """Bytes of memory that bodies in progress may hold in this process (one event loop,
    so plain counting is race-free)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.in_use = 0

    def reservation(self) -> Reservation:
        """A reservation that grows as the body arrives and is returned at the end of
        its `with` block."""
        return Reservation(self)


class Reservation:
    """One request's share of the budget (a class, not a generator: a PUT takes one)."""

    def __init__(self, budget: UploadBudget) -> None:
        self.budget = budget
        self.held = 0

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.budget.in_use -= self.held
        self.held = 0

    def take(self, body_bytes: int) -> None:
        wanted = body_bytes * MEMORY_PER_BODY_BYTE
        if self.budget.in_use + wanted > self.budget.limit_bytes:
            raise UploadBudgetExhausted()
        self.budget.in_use += wanted
        self.held += wanted


class BodyDeadlines:
    """The deadline of every body this process is reading, kept by one timer.

    Why not `asyncio.timeout` per read: on uvloop a timer costs about 5 µs to arm and
    disarm, a tenth of a PUT's time in the app; here a read costs two dict operations,
    and the one timer fires at the earliest deadline, about once per `seconds` under load.
    Every read gets the same `seconds`, so the reads are in order of their deadlines.

    An expired read is cancelled and raises TimeoutError, as `asyncio.timeout` does it:
    with the documented `Task.cancel`, `cancelling` and `uncancel`, so a cancellation
    from anyone else (a shutdown, a disconnect) stays a cancellation."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._reads: dict[Deadline, None] = {}  # oldest first: earliest deadline first
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> Deadline:
        """A deadline `seconds` from now for the current task, to use as `with`."""
        return Deadline(self)

    def watch(self, deadline: Deadline, loop: asyncio.AbstractEventLoop) -> None:
        """Keep `deadline` (Deadline does, on entering its block)."""
        self._reads[deadline] = None
        if self._timer is None:
            self._timer = loop.call_at(deadline.when, self._expire, loop)

    def forget(self, deadline: Deadline) -> None:
        """Stop keeping `deadline` (on leaving its block)."""
        del self._reads[deadline]

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Cancel every read past its deadline; wake again at the next deadline."""
        self._timer = None
        now = loop.time()
        for deadline in self._reads:
            if deadline.when > now:
                self._timer = loop.call_at(deadline.when, self._expire, loop)
                return
            deadline.expire()


class Deadline:
    """One read's deadline (BodyDeadlines.start): TimeoutError out of its `with` block
    when the block is still running at `when`."""

    __slots__ = ("_cancelling", "_deadlines", "_task", "expired", "when")

    def __init__(self, deadlines: BodyDeadlines) -> None:
        self._deadlines = deadlines
        self.expired = False

    def __enter__(self) -> Deadline:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a body deadline needs a task to cancel")
        self._task = task
        self._cancelling = task.cancelling()
        self.when = loop.time() + self._deadlines.seconds
        self._deadlines.watch(self, loop)
        return self

    def expire(self) -> None:
        if not self.expired:
            self.expired = True
            self._task.cancel()

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        self._deadlines.forget(self)
        # As asyncio.timeout's exit: our cancel is taken back, and when no one else
        # asked for one since the block began, the cancellation is the timeout.
        if self.expired:
            ours = self._task.uncancel() <= self._cancelling
            if ours and exc_type is asyncio.CancelledError:
                raise TimeoutError from None


async def read_body(
    request: Request, limit: int, *, deadlines: BodyDeadlines, reservation: Reservation
) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit`, with
    408 when it has not fully arrived by the time `deadlines` give it, and with
    UploadBudgetExhausted when the process holds too many bodies already.

    A declared Content-Length over the limit is refused before reading a byte (and an
    honest one is reserved up front); a body that streams past the limit (chunked, or
    lying about its length) is refused at the chunk that crosses it, so an oversized body
    is never held in memory whole.
    """
    declared_header = request.headers.get("content-length")
    declared = int(declared_header) if declared_header and declared_header.isdigit() else None
    if declared is not None and declared > limit:
        raise PayloadTooLarge()
    if declared:
        reservation.take(declared)
    chunks: list[bytes] = []
    size = 0
    try:
        with deadlines.start():
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge()
                if declared is None or size > declared:
                    reservation.take(len(chunk))
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout() from None
    except ClientDisconnect:
        raise ClientClosedRequest() from None
    return b"".join(chunks)
