"""Per-user (and optionally per-IP) request limits, counted in PostgreSQL.

Fixed windows (clock hours by default) rather than rolling ones: a fixed window is one
atomic upsert per request with an exact count and an exact reset time to tell clients,
where a rolling window needs a log of timestamps or an approximation. The price is that
a client can spend two windows' worth around a boundary, which is fine for a limit that
exists to stop abuse, not to meter normal use.
"""

from __future__ import annotations

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

    def count(self, *, client_ip: str | None) -> Count:
        """What this request is counted against; the sync statement counts it, in the
        same statement as the request's own work (queries/ratelimit.sql)."""
        return Count(
            user_limit=self.per_user or None,
            client_ip=client_ip if self.per_ip > 0 and client_ip else None,
            ip_limit=self.per_ip if self.per_ip > 0 and client_ip else None,
            window_seconds=self.window_seconds,
        )


@dataclass(frozen=True, slots=True)
class Count:
    """One request's limits: the statement's bindings, then the verdict on its answer.
    A limit of None is a bucket not counted."""

    user_limit: int | None
    client_ip: str | None
    ip_limit: int | None
    window_seconds: int

    def bindings(self) -> dict[str, object]:
        """`user_limit`, `client_ip`, `ip_limit` and `window_seconds`, as every sync
        statement takes them (scalars: binding arrays cost psycopg more)."""
        return {
            "user_limit": self.user_limit,
            "client_ip": self.client_ip,
            "ip_limit": self.ip_limit,
            "window_seconds": self.window_seconds,
        }

    def verdict(
        self,
        admitted: bool,
        user_hits: int | None,
        ip_hits: int | None,
        reset_seconds: int | None,
    ) -> Quota | None:
        """What the statement's count means: raise TooManyRequests when over a limit,
        else the tightest quota to advertise (None when limiting is off)."""
        if reset_seconds is None:
            return None
        counted = [
            (bucket, limit, hits)
            for bucket, limit, hits in (
                ("user", self.user_limit, user_hits),
                ("ip", self.ip_limit, ip_hits),
            )
            if limit is not None and hits is not None
        ]
        quotas = [
            Quota(limit=limit, remaining=max(0, limit - hits), reset_seconds=reset_seconds)
            for _, limit, hits in counted
        ]
        if not admitted:
            for bucket, limit, hits in counted:
                if hits > limit:
                    metrics.RATE_LIMITED.labels(bucket).inc()
            raise TooManyRequests(min(quotas, key=lambda q: q.remaining))
        return min(quotas, key=lambda q: (q.remaining, -q.reset_seconds))
