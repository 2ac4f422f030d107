"""Reading request bodies safely: a size limit, a deadline, and a memory budget.

A body is read whole before any database work (so a slow client never holds a pooled
connection), which means each PUT in progress holds its body in memory: a near-limit one
costs about 2.8 MB with its parsed JSON. The budget bounds what all of them together may
hold in one process, counted in bytes, so clients trickling a few bytes cost almost
nothing while a burst of large uploads gets 503s instead of growing memory without limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

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

    @contextmanager
    def reservation(self) -> Iterator[Reservation]:
        """A reservation that grows as the body arrives and is returned when done."""
        reservation = Reservation(self)
        try:
            yield reservation
        finally:
            self.in_use -= reservation.held


class Reservation:
    """One request's share of the budget."""

    def __init__(self, budget: UploadBudget) -> None:
        self.budget = budget
        self.held = 0

    def take(self, body_bytes: int) -> None:
        wanted = body_bytes * MEMORY_PER_BODY_BYTE
        if self.budget.in_use + wanted > self.budget.limit_bytes:
            raise UploadBudgetExhausted()
        self.budget.in_use += wanted
        self.held += wanted


async def read_body(
    request: Request, limit: int, *, within: float, reservation: Reservation
) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit`, with
    408 when it has not fully arrived within `within` seconds, and with
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
        async with asyncio.timeout(within):
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
