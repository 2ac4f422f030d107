"""Background jobs that run while the service runs (purging counters, later cleanup)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

logger = logging.getLogger(__name__)


@asynccontextmanager
async def running_every(
    interval: float,
    job: Callable[[], Awaitable[object]],
    *,
    name: str,
    first_after: float | None = None,
) -> AsyncIterator[None]:
    """Run `job` every `interval` seconds (with jitter, so replicas spread out) until exit.

    The first run comes after `first_after` seconds when given: a daily job must not wait
    a whole day after every restart, or frequent deploys would keep it from ever running.

    A failing run is logged and retried at the next interval: a database that is down
    for a while must not kill the loop. Exiting cancels a run in progress.
    """

    async def loop() -> None:
        delay = interval if first_after is None else first_after
        while True:
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = interval
            try:
                await job()
            except Exception as exc:
                logger.warning("Background job %s failed: %s", name, type(exc).__name__)

    task = asyncio.create_task(loop(), name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
