"""Per-user (and optionally per-IP) request limits, counted in each process and shared
through PostgreSQL off the request's path.

Fixed windows (clock hours by default) rather than rolling ones: a count per bucket and
window, with an exact reset time to tell clients. A client can spend two windows' worth
around a boundary, which is fine for a limit that exists to stop abuse, not to meter.

Each process decides on its own, at once, from what it knows: the total the other
processes had reported at its last exchange plus what it has admitted since. Every
`exchange_interval` seconds it sends what it admitted to PostgreSQL in one batched
statement (queries/ratelimit.sql `exchange_counts`) and learns the totals back: those
of what it sent and those of every bucket another process changed since shortly before
its previous exchange, so a count reaches every other process within about two
intervals, also for users those processes have not served yet. No request waits on that
statement, so reads stay reads (no write per GET or verify) and each sync statement
touches only its own record: a single-shard statement on Citus.

The price is an approximate limit across processes: in the worst case each process
admits up to the limit before it hears of the others' requests, so N processes admit at
most N times the limit within one interval's blind spot (two processes: twice the limit,
the slack a fixed window already has at its boundary). Requests that arrive a second
apart see every earlier request, whichever process serves them (a bucket quiet for a
minute is forgotten, and its next request decided from zero), and one process alone is
exact. When PostgreSQL is
unreachable the processes keep counting locally and send the counts once it answers; an
exchange cut off after PostgreSQL committed it (a shutdown mid-exchange) is sent again,
counting those requests twice, which errs on the side of refusing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from service import metrics
from service.errors import ServiceError

if TYPE_CHECKING:
    from service.config import Settings

logger = logging.getLogger(__name__)

WATCH_SECONDS = 60.0
"""A process keeps a bucket for this long after it was last used here or counted by
another process, and learns at its first exchange what was counted this long before it
started."""

LEARN_MARGIN = 2.0
"""Each exchange learns the buckets changed since this many seconds before the previous
one: room for commits that land late and for clocks that differ a little."""

LEARN_LIMIT = 10_000
"""At most this many learned buckets per exchange (the latest changes first), so a very
busy cluster keeps its exchanges bounded; past them only the per-process bound holds."""


@dataclass(frozen=True, slots=True)
class Quota:
    """Where a client stands in its current window, as sent in the RateLimit headers."""

    limit: int
    remaining: int
    reset_seconds: int

    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        """The RateLimit headers as an ASGI message carries them (responses.JSONAnswer)."""
        return [
            (b"ratelimit-limit", b"%d" % self.limit),
            (b"ratelimit-remaining", b"%d" % self.remaining),
            (b"ratelimit-reset", b"%d" % self.reset_seconds),
        ]

    def headers(self) -> dict[str, str]:
        """The same headers as text, for Starlette's responses (errors, 304)."""
        return {name.decode(): value.decode() for name, value in self.header_pairs()}


class RateLimitExceeded(ServiceError):
    """The client spent its requests for this window (a 429)."""

    status = 429
    message = "Too many sync requests. Please try again later."

    def __init__(self, quota: Quota) -> None:
        super().__init__(self.message)
        self.quota = quota

    def headers(self) -> Mapping[str, str]:
        return {**self.quota.headers(), "Retry-After": str(max(1, self.quota.reset_seconds))}


class _Bucket:
    """One bucket's count in the current window, as this process knows it."""

    __slots__ = ("known", "last_used", "pending", "sending")

    def __init__(self) -> None:
        self.known = 0  # every process's total at the last exchange (ours included)
        self.sending = 0  # admitted here and on its way in the exchange now running
        self.pending = 0  # admitted here since, to be sent at the next exchange
        self.last_used = 0.0

    @property
    def total(self) -> int:
        return self.known + self.sending + self.pending


class RateLimiter:
    """Counts each request against the user's limit and, when set, the client IP's.

    `per_user` and `per_ip` are requests per window of `window_seconds`; 0 turns a limit
    off. A request refused by authentication is counted against the client's IP only
    (`admit_refusal`), so that knowing a user id is not enough to lock that user out."""

    def __init__(
        self,
        *,
        per_user: int,
        per_ip: int,
        window_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.per_user = per_user
        self.per_ip = per_ip
        self.window_seconds = window_seconds
        self._clock = clock
        self._window = -1
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()  # least recently used first
        self._unsent: set[str] = set()  # buckets with pending counts
        self._exchanged: float | None = None  # when the last exchange began (our clock)

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        """The limiter the service's settings describe (the app and the benchmarks')."""
        return cls(
            per_user=settings.user_limit_per_window,
            per_ip=settings.ip_limit_per_window,
            window_seconds=settings.rate_limit_window,
        )

    @property
    def enabled(self) -> bool:
        return self.per_user > 0 or self.per_ip > 0

    def admit(self, *, user_id: object, client_ip: str | None) -> Quota | None:
        """Count one request for `user_id` from `client_ip`, or raise RateLimitExceeded
        (then nothing is counted). Returns the tightest quota to advertise, or None when
        limiting is off."""
        if self.per_ip <= 0 or not client_ip:  # the default: one bucket, the user's
            if self.per_user <= 0:
                return None
            return self._admit_one("user", f"user:{user_id}", self.per_user)
        checks = [("user", f"user:{user_id}", self.per_user)] if self.per_user > 0 else []
        checks.append(("ip", f"ip:{client_ip}", self.per_ip))
        return self._admit(checks)

    def admit_refusal(self, *, client_ip: str | None) -> Quota | None:
        """Count a request that authentication refused against its client IP, with the
        per-IP limit (or the per-user one when no per-IP limit is set)."""
        limit = self.per_ip or self.per_user
        if limit <= 0 or not client_ip:
            return None
        return self._admit_one("ip", f"ip:{client_ip}", limit)

    def _admit_one(self, label: str, key: str, limit: int) -> Quota:
        """`_admit` for a single bucket, without its lists (every request takes this)."""
        now = self._clock()
        reset_seconds = self._roll(now)
        bucket = self._bucket(key, now)
        total = bucket.total
        if total >= limit:
            metrics.RATE_LIMITED.labels(label).inc()
            raise RateLimitExceeded(Quota(limit=limit, remaining=0, reset_seconds=reset_seconds))
        bucket.pending += 1
        self._unsent.add(key)
        return Quota(limit, max(0, limit - total - 1), reset_seconds)

    def _admit(self, checks: list[tuple[str, str, int]]) -> Quota:
        """Admit a request counted in every bucket of `checks` (user, then IP), or none."""
        now = self._clock()
        reset_seconds = self._roll(now)
        buckets = [(label, self._bucket(key, now), limit) for label, key, limit in checks]
        over = [(label, bucket, limit) for label, bucket, limit in buckets if bucket.total >= limit]
        if over:
            for label, _, _ in over:
                metrics.RATE_LIMITED.labels(label).inc()
            raise RateLimitExceeded(
                Quota(limit=over[0][2], remaining=0, reset_seconds=reset_seconds)
            )
        quotas = []
        for (_, key, _), (_, bucket, limit) in zip(checks, buckets, strict=True):
            bucket.pending += 1
            self._unsent.add(key)
            quotas.append(Quota(limit, max(0, limit - bucket.total), reset_seconds))
        return min(quotas, key=lambda q: q.remaining)

    def _roll(self, now: float) -> int:
        """Start a new window when the clock has moved into one; the seconds left in it."""
        window = math.floor(now / self.window_seconds)
        if window != self._window:
            self._window = window
            self._buckets.clear()  # counts of an ended window (its rows are purged)
            self._unsent.clear()
        return max(1, math.ceil((window + 1) * self.window_seconds - now))

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket()
        else:
            self._buckets.move_to_end(key)
        bucket.last_used = now
        return bucket

    async def exchange(self, run: Callable[..., Any]) -> int:
        """Send what this process admitted since the last exchange and learn the totals
        back, in one statement run by `run(**bindings)` (it returns the rows of
        queries.exchange_counts): those of the buckets sent, and those of every bucket
        another process changed since shortly before the previous exchange, so a
        process knows a user's count before it serves that user. Returns the number of
        buckets it heard of. On failure the counts stay pending and go out with the
        next exchange."""
        now = self._clock()
        self._roll(now)
        window = self._window
        # In one order in every process: the upsert locks its rows in this order, and
        # two exchanges locking shared buckets in opposite orders would deadlock.
        sent = sorted(self._unsent)
        self._unsent.clear()
        deltas = []
        for key in sent:
            bucket = self._buckets[key]
            bucket.sending, bucket.pending = bucket.pending, 0
            deltas.append(bucket.sending)
        self._evict(now)
        since = now - WATCH_SECONDS if self._exchanged is None else self._exchanged - LEARN_MARGIN
        window_start = datetime.fromtimestamp(window * self.window_seconds, UTC)
        try:
            rows = await run(
                buckets=_array_literal(sent),
                deltas=_array_literal(str(delta) for delta in deltas),
                window_start=window_start,
                changed_since=datetime.fromtimestamp(since, UTC),
                learn_limit=LEARN_LIMIT,
            )
        except BaseException:
            if self._window == window:
                for key in sent:
                    bucket = self._buckets[key]
                    bucket.pending += bucket.sending
                    bucket.sending = 0
                    self._unsent.add(key)
            raise
        if self._window != window:
            return len(rows)  # the window ended meanwhile: old news
        self._exchanged = now
        for key, hits in rows:
            bucket = self._buckets.get(key)
            if bucket is None:  # counted elsewhere: known here from now on
                bucket = self._buckets[key] = _Bucket()
            else:
                self._buckets.move_to_end(key)
            bucket.known = hits
            bucket.sending = 0
            bucket.last_used = now
        return len(rows)

    def _evict(self, now: float) -> None:
        """Forget buckets neither used here nor counted elsewhere for WATCH_SECONDS, with
        nothing left to send, so memory follows the last minute's users rather than the
        whole window's. A user back after a quiet minute starts from zero here: one
        request decided without the earlier counts, within the per-process bound."""
        buckets = self._buckets
        while buckets:
            key = next(iter(buckets))  # least recently used
            bucket = buckets[key]
            if now - bucket.last_used <= WATCH_SECONDS or bucket.pending or bucket.sending:
                return
            del buckets[key]

    @asynccontextmanager
    async def exchanging(self, run: Callable[..., Any], *, interval: float) -> AsyncIterator[None]:
        """Exchange counts every `interval` seconds while the block runs, and once more
        at its end so a graceful shutdown hands its counts on."""
        from service.periodic import running_every

        if not self.enabled:
            yield
            return

        async def job() -> None:
            await self.exchange(run)

        try:
            async with running_every(interval, job, name="rate-limit-exchange"):
                yield
        finally:
            with contextlib.suppress(Exception):
                await self.exchange(run)


def _array_literal(values: Iterable[str]) -> str:
    """PostgreSQL's text form of an array of `values`, for the exchange's text[] and
    integer[] parameters (the statement casts them). A process sends up to thousands
    of buckets five times a second, and psycopg's list dumper took 3.4 ms for 1,000 of
    them where this takes 0.1; quoting every element keeps any client address intact."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(quoted) + "}"
