"""Per-user (and optionally per-IP) request limits, counted in PostgreSQL.

Fixed windows (clock hours by default) rather than rolling ones: a fixed window is one
atomic upsert per request with an exact count and an exact reset time to tell clients,
where a rolling window needs a log of timestamps or an approximation. The price is that
a client can spend two windows' worth around a boundary, which is fine for a limit that
exists to stop abuse, not to meter normal use.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg

from service import metrics
from service.db import queries
from service.errors import ServiceError


@dataclass(frozen=True, slots=True)
class Quota:
    """Where a client stands in its current window, as sent in the RateLimit headers."""

    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }


class TooManyRequests(ServiceError):
    """The client spent its requests for this window."""

    status = 429
    message = "Too many sync requests. Please try again later."

    def __init__(self, quota: Quota) -> None:
        super().__init__(self.message)
        self.quota = quota

    def headers(self) -> Mapping[str, str]:
        return {**self.quota.headers(), "Retry-After": str(max(1, self.quota.reset_seconds))}


@dataclass(frozen=True)
class RateLimiter:
    """Counts each request against the user's limit and, when set, the client IP's."""

    per_user: int
    per_ip: int
    window_seconds: int

    @property
    def enabled(self) -> bool:
        return self.per_user > 0 or self.per_ip > 0

    async def admit(
        self, conn: psycopg.AsyncConnection, *, user_id: uuid.UUID, client_ip: str | None
    ) -> Quota | None:
        """Count this request (one statement); raise TooManyRequests when over a limit.

        Returns the tightest quota to advertise, or None when limiting is off.
        """
        limits: dict[str, int] = {}
        if self.per_user > 0:
            limits[f"user:{user_id}"] = self.per_user
        if self.per_ip > 0 and client_ip:
            limits[f"ip:{client_ip}"] = self.per_ip
        if not limits:
            return None
        rows = [
            row
            async for row in queries.count_request(
                conn, buckets=list(limits), window_seconds=self.window_seconds
            )
        ]
        quotas = [
            Quota(
                limit=limits[bucket], remaining=max(0, limits[bucket] - hits), reset_seconds=reset
            )
            for bucket, hits, reset in rows
        ]
        over = [
            q for (bucket, hits, _), q in zip(rows, quotas, strict=True) if hits > limits[bucket]
        ]
        if over:
            for bucket, hits, _ in rows:
                if hits > limits[bucket]:
                    metrics.RATE_LIMITED.labels(bucket.split(":", 1)[0]).inc()
            raise TooManyRequests(max(over, key=lambda q: q.reset_seconds))
        return min(quotas, key=lambda q: (q.remaining, -q.reset_seconds))
