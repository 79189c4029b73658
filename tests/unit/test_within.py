"""``epctl.tasks.within``: a deadline that never drops its caller's cancellation.

Python 3.11's ``asyncio.wait_for`` returns the result, and forgets the cancellation, when the awaited
thing finishes in the same loop iteration as the caller is cancelled (CPython gh-86296). These tests
make exactly that interleaving: the event is set and the waiter cancelled in one callback."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from epctl.tasks import within


async def finish_and_cancel_together(wait: Callable[[asyncio.Event], Awaitable[Any]]) -> asyncio.Task[Any]:
    """Start ``wait(event)`` in a task, then set the event and cancel the task in one callback."""
    event = asyncio.Event()
    task = asyncio.create_task(wait(event))
    await asyncio.sleep(0)  # the task is now suspended in its wait
    event.set()
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.done(), "the waiter neither finished nor stopped"
    return task


async def test_a_cancellation_that_lands_as_the_wait_ends_is_kept() -> None:
    task = await finish_and_cancel_together(lambda event: within(10, event.wait()))
    assert task.cancelled()


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="CPython 3.12 rebuilt wait_for on asyncio.timeout")
async def test_the_stdlib_wait_for_drops_it_on_this_python() -> None:
    """The world the test above runs in does contain the failure: wait_for loses this cancellation."""
    task = await finish_and_cancel_together(lambda event: asyncio.wait_for(event.wait(), 10))
    assert not task.cancelled() and task.result() is True


async def test_result_and_timeout_as_wait_for_gives_them() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert await within(1, answer()) == 42
    assert await within(None, answer()) == 42
    with pytest.raises(TimeoutError):
        await within(0.01, asyncio.Event().wait())
    with pytest.raises(TimeoutError):
        await within(0, asyncio.Event().wait())


async def test_epctl_check_stops_when_interrupted_as_a_probe_answers() -> None:
    """The flaky ``epctl check`` SIGTERM test's cause, made deterministic: the interrupt arrives in the
    loop iteration in which a probe's answer wakes the wait for decisions. The check used to probe on
    to its decision (exit 1 after failureThreshold periods) instead of exiting 143."""
    from epctl.check import _until_decided
    from epctl.probe.scheduler import Check, CheckKey, Scheduler

    scheduler = Scheduler(lambda transition: None)
    check: Any = type("Undecided", (), {"key": CheckKey("t", "p", "127.0.0.1")})()
    checks: list[Check] = [check]  # never upserted: stays undecided
    task = asyncio.create_task(_until_decided(scheduler, checks, 30))
    await asyncio.sleep(0)
    scheduler.progress.set()
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled(), "the interrupt was lost: the check would have probed on to its decision"


async def test_the_earliest_deadline_timer_re_arms_for_the_next_deadline() -> None:
    """Two hosts leaving at different times: the timer was armed for the earliest deadline only, and
    the next one (what ``expire`` answers) was dropped, so the second host never left in a quiet
    system. One timer, re-armed by its callback's answer, never more than one pending."""
    from epctl.tasks import EarliestDeadline

    loop = asyncio.get_running_loop()
    start = loop.time()
    deadlines = [start + 0.05, start + 0.15]
    fired: list[float] = []

    served = asyncio.Event()

    def expire() -> float | None:
        now = loop.time()
        fired.append(now)
        while deadlines and deadlines[0] <= now:
            deadlines.pop(0)
        if not deadlines:
            served.set()
        return deadlines[0] if deadlines else None

    timer = EarliestDeadline(expire, clock=loop.time)
    try:
        timer.at(deadlines[1])
        timer.at(deadlines[0])  # earlier: replaces the pending call
        timer.at(deadlines[1])  # later than the pending one: kept for the re-arm
        try:
            await within(2.0, served.wait())
        except TimeoutError:
            raise AssertionError("the second deadline was never served") from None
        # a wake-up a hair early (uvloop rounds timers to milliseconds) re-arms for the remainder
        assert fired[0] >= start + 0.04 and fired[-1] >= start + 0.15 - 0.01
        assert sum(1 for t in fired if t < start + 0.14) <= 2  # not one chain per at(): the first is replaced
    finally:
        timer.cancel()
    timer.at(loop.time())  # after cancel (a shutdown): nothing more is armed
    assert timer._handle is None
