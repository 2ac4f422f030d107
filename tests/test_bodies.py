"""Body deadlines (service/bodies.py): one timer for every read in a process must still
time out each read at its own deadline, and only that read, and must leave any other
cancellation a cancellation. (The 408 over HTTP: tests/test_robustness.py.)"""

from __future__ import annotations

import asyncio

import pytest

from service.bodies import BodyDeadlines, UploadBudget


async def _read(deadlines: BodyDeadlines, takes: float) -> str:
    """A read that takes `takes` seconds: "read", or "timed out" past its deadline."""
    try:
        with deadlines.start():
            await asyncio.sleep(takes)
    except TimeoutError:
        return "timed out"
    return "read"


def test_each_read_times_out_at_its_own_deadline_and_only_that_one():
    async def scenario() -> list[tuple[str, float]]:
        deadlines = BodyDeadlines(0.2)
        loop = asyncio.get_running_loop()

        async def timed(takes: float, after: float) -> tuple[str, float]:
            await asyncio.sleep(after)
            started = loop.time()
            return await _read(deadlines, takes), loop.time() - started

        # The later slow read is only due after the timer fired for the first one.
        return await asyncio.gather(timed(2.0, 0.0), timed(0.05, 0.0), timed(2.0, 0.1))

    (slow, slow_took), (fast, fast_took), (later, later_took) = asyncio.run(scenario())
    assert (slow, fast, later) == ("timed out", "read", "timed out")
    assert 0.2 <= slow_took < 1.5 and 0.2 <= later_took < 1.5  # its deadline, not its sleep
    assert fast_took < 0.2


def test_a_read_done_in_time_is_untouched_after_its_deadline():
    async def scenario() -> tuple[list[str], int]:
        deadlines = BodyDeadlines(0.1)
        outcomes = [await _read(deadlines, 0.01) for _ in range(3)]
        await asyncio.sleep(0.15)  # past the deadline of all three: nothing to cancel
        task = asyncio.current_task()
        assert task is not None
        return [*outcomes, "still running"], task.cancelling()

    outcomes, cancelling = asyncio.run(scenario())
    assert outcomes == ["read", "read", "read", "still running"]
    assert cancelling == 0


def test_a_cancellation_from_elsewhere_stays_a_cancellation():
    async def scenario() -> bool:
        deadlines = BodyDeadlines(10)
        reading = asyncio.create_task(_read(deadlines, 5))
        await asyncio.sleep(0.01)
        reading.cancel()  # a shutdown, not the deadline
        with pytest.raises(asyncio.CancelledError):
            await reading
        return reading.cancelled()

    assert asyncio.run(scenario()) is True


def test_a_cancellation_at_the_deadline_stays_a_cancellation():
    """Cancelled by someone else in the same moment its deadline cancels it: the read
    is cancelled, not answered with a 408 (asyncio.timeout's rule)."""

    async def scenario() -> bool:
        deadlines = BodyDeadlines(0.05)
        loop = asyncio.get_running_loop()

        async def read() -> None:
            with deadlines.start() as deadline:
                loop.call_at(deadline.when, asyncio.current_task().cancel)  # type: ignore[union-attr]
                await asyncio.sleep(5)

        reading = asyncio.create_task(read())
        with pytest.raises(asyncio.CancelledError):
            await reading
        return reading.cancelled()

    assert asyncio.run(scenario()) is True


def test_a_reservation_gives_back_what_it_took_when_its_block_ends():
    budget = UploadBudget(100)
    with budget.reservation() as reservation:
        reservation.take(20)
        reservation.take(10)
        assert budget.in_use == 60
    assert budget.in_use == 0
    with pytest.raises(RuntimeError), budget.reservation() as reservation:
        reservation.take(5)
        raise RuntimeError("the request failed")
    assert budget.in_use == 0
