"""Load from a real HTTP client, and the ledger that says what the client was promised.

Every PUT stores a record under a user id of its own, so each acknowledged write stays
checkable at the end: the database must hold it byte for byte. GETs re-read records that
were acknowledged earlier, so a write that vanished mid-run shows up as a 404 or as other
content, not only at the end.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import httpx2

REQUEST_TIMEOUT = 15.0
"""The client's patience for one request. Every scenario bounds the service's answers far
below this; a request that reaches it counts as a hang."""


def new_payload(*, blob_bytes: int | None = None) -> dict[str, object]:
    """A valid, distinct PUT body: random ciphertext, its IV and the client's checksum."""
    size = blob_bytes if blob_bytes is not None else random.randint(16, 2048)
    blob = os.urandom(size)
    iv = os.urandom(12)
    return {
        "encryptedBlob": base64.b64encode(blob).decode(),
        "iv": base64.b64encode(iv).decode(),
        "timestamp": time.time_ns() // 1_000_000,
        "checksum": hashlib.sha256(iv + blob).hexdigest(),
    }


@dataclass(frozen=True)
class Outcome:
    """What the client saw for one request."""

    op: str
    started: float
    ended: float
    status: int | None = None
    retry_after: str | None = None
    error: str | None = None
    """The transport failure's class name (ConnectError, ReadError, ReadTimeout, ...)."""

    @property
    def latency(self) -> float:
        return self.ended - self.started


@dataclass
class Ledger:
    """Every PUT sent, and those the service acknowledged with 200."""

    sent: dict[str, dict[str, object]] = field(default_factory=dict)
    acked: dict[str, dict[str, object]] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    stale_reads: int = 0
    """GETs of an acknowledged record that answered 404 or other content."""

    def check(self, rows: Iterable[tuple]) -> dict[str, int]:
        """Compare the database (faults_stored_payloads rows) with the ledger.

        `lost` counts acknowledged PUTs missing or different in the database: must be 0.
        `stored_unacknowledged` counts PUTs the client never heard a 200 for that are
        stored anyway, which is allowed after a 503 or a dropped connection (the commit
        may have happened just before the failure) and is reported, not asserted.
        """
        stored = {
            user_id: {"encryptedBlob": blob, "iv": iv, "timestamp": ts, "checksum": checksum}
            for user_id, blob, iv, ts, checksum in rows
        }
        lost = sum(1 for user_id, payload in self.acked.items() if stored.get(user_id) != payload)
        unacked = set(self.sent) - set(self.acked)
        return {
            "puts_sent": len(self.sent),
            "puts_acknowledged": len(self.acked),
            "lost": lost,
            "stored_unacknowledged": sum(1 for u in unacked if u in stored),
            "stale_reads": self.stale_reads,
        }


async def put_record(client: httpx2.AsyncClient, ledger: Ledger) -> Outcome:
    """PUT a new record; a 200 enters it into the ledger's acknowledged writes."""
    user_id = str(uuid.uuid4())
    payload = new_payload()
    ledger.sent[user_id] = payload
    outcome = await timed(client, "PUT", f"/api/sync/{user_id}", json=payload)
    if outcome.status == 200:
        ledger.acked[user_id] = payload
    ledger.outcomes.append(outcome)
    return outcome


async def get_record(client: httpx2.AsyncClient, ledger: Ledger, user_id: str) -> Outcome:
    """GET an acknowledged record: a 200 must carry exactly what was stored."""
    expected = ledger.acked[user_id]
    response: list[httpx2.Response] = []
    outcome = await timed(client, "GET", f"/api/sync/{user_id}", keep=response)
    if outcome.status == 404 or (outcome.status == 200 and response[0].json() != expected):
        ledger.stale_reads += 1
    ledger.outcomes.append(outcome)
    return outcome


async def timed(
    client: httpx2.AsyncClient,
    method: str,
    url: str,
    *,
    keep: list[httpx2.Response] | None = None,
    **kwargs: object,
) -> Outcome:
    """One request, with what came back and how long it took; never raises."""
    started = time.monotonic()
    try:
        response = await client.request(method, url, **kwargs)  # type: ignore[arg-type]
    except httpx2.TransportError as exc:
        return Outcome(method, started, time.monotonic(), error=type(exc).__name__)
    if keep is not None:
        keep.append(response)
    return Outcome(
        method,
        started,
        time.monotonic(),
        status=response.status_code,
        retry_after=response.headers.get("retry-after"),
    )


async def run_load(
    client: httpx2.AsyncClient,
    ledger: Ledger,
    *,
    stop: Callable[[], bool],
    workers: int,
    max_requests: int,
    get_share: float = 0.4,
    pause: float = 0.0,
) -> None:
    """`workers` clients issuing PUTs of new records and GETs of acknowledged ones until
    `stop()` or `max_requests` in all; bounded in count as well as by the caller's clock."""
    budget = iter(range(max_requests))

    async def worker() -> None:
        while not stop() and next(budget, None) is not None:
            if ledger.acked and random.random() < get_share:
                outcome = await get_record(client, ledger, random.choice(list(ledger.acked)))
            else:
                outcome = await put_record(client, ledger)
            if pause or outcome.error:
                # A refused connection fails in microseconds: don't spin on it.
                await asyncio.sleep(pause or 0.02)

    await asyncio.gather(*(worker() for _ in range(workers)))


def http_client(base_url: str, *, connections: int = 32) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        base_url=base_url,
        timeout=REQUEST_TIMEOUT,
        limits=httpx2.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


def summarize(outcomes: Iterable[Outcome]) -> dict[str, object]:
    """Counts by status (or transport error) and latency bounds, for the report."""
    outcomes = list(outcomes)
    statuses = Counter(str(o.status) if o.status is not None else o.error for o in outcomes)
    latencies = sorted(o.latency for o in outcomes)
    unavailable = sorted(o.latency for o in outcomes if o.status == 503)
    return {
        "requests": len(outcomes),
        "by_status": dict(sorted(statuses.items(), key=lambda kv: str(kv[0]))),
        "latency_max_s": round(latencies[-1], 3) if latencies else None,
        "latency_p50_s": round(latencies[len(latencies) // 2], 3) if latencies else None,
        "latency_503_max_s": round(unavailable[-1], 3) if unavailable else None,
        "latency_503_min_s": round(unavailable[0], 3) if unavailable else None,
    }


def contract_violations(outcomes: Iterable[Outcome]) -> list[Outcome]:
    """Answers the contract forbids under faults: a 500 (or any status but 200/503), a 503
    without Retry-After, or a transport error (reset, disconnect, timeout) from the
    service. The caller decides which windows this applies to."""
    return [
        o for o in outcomes if o.status not in (200, 503) or (o.status == 503 and not o.retry_after)
    ]
