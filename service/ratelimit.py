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

from service import metrics
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

    def count(self, *, user_id: uuid.UUID, client_ip: str | None) -> Count:
        """The buckets this request is counted against, for the sync statement to count
        (`admit_request` in the same statement as the request's own work)."""
        limits: dict[str, int] = {}
        if self.per_user > 0:
            limits[f"user:{user_id}"] = self.per_user
        if self.per_ip > 0 and client_ip:
            limits[f"ip:{client_ip}"] = self.per_ip
        return Count(limits, self.window_seconds)


@dataclass(frozen=True, slots=True)
class Count:
    """One request's buckets and limits: the statement's bindings, then its verdict."""

    limits: dict[str, int]
    window_seconds: int

    def bindings(self) -> dict[str, object]:
        """`buckets`, `limits` and `window_seconds`, as every sync statement takes them."""
        return {
            "buckets": list(self.limits),
            "limits": list(self.limits.values()),
            "window_seconds": self.window_seconds,
        }

    def verdict(
        self, admitted: bool, hits: list[int] | None, reset_seconds: int | None
    ) -> Quota | None:
        """What the statement's count means: raise TooManyRequests when over a limit,
        else the tightest quota to advertise (None when limiting is off)."""
        if not self.limits or hits is None or reset_seconds is None:
            return None
        counted = list(zip(self.limits.items(), hits, strict=True))
        quotas = [
            Quota(limit=limit, remaining=max(0, limit - n), reset_seconds=reset_seconds)
            for (_, limit), n in counted
        ]
        if not admitted:
            for (bucket, limit), n in counted:
                if n > limit:
                    metrics.RATE_LIMITED.labels(bucket.split(":", 1)[0]).inc()
            raise TooManyRequests(min(quotas, key=lambda q: q.remaining))
        return min(quotas, key=lambda q: (q.remaining, -q.reset_seconds))
