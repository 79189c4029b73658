"""The writer's ranked write slots (epctl.kube.priority.Slots): a free slot goes to the lowest rank
waiting, first come first served within a rank, and a cancelled waiter never keeps or loses one."""

from __future__ import annotations

import asyncio

import pytest

from epctl.kube.priority import Slots


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)  # let every runnable task take its next step (no time passes)


async def test_a_free_slot_goes_to_the_lowest_rank_waiting_then_in_arrival_order() -> None:
    slots = Slots(1)
    order: list[str] = []
    release = asyncio.Event()

    async def write(name: str, rank: int) -> None:
        async with slots.hold(rank):
            order.append(name)
            if name == "first":
                await release.wait()

    first = asyncio.create_task(write("first", 0))
    await _settle()
    # an Endpoints write arrives before two slice writes: both slices go before it
    tasks = [asyncio.create_task(write(name, rank)) for name, rank in
             (("endpoints a", 1), ("slices b", 0), ("endpoints c", 1), ("slices d", 0))]
    await _settle()
    assert order == ["first"]
    release.set()
    await asyncio.gather(first, *tasks)
    assert order == ["first", "slices b", "slices d", "endpoints a", "endpoints c"]


async def test_a_cancelled_waiter_neither_keeps_nor_loses_a_slot() -> None:
    slots = Slots(1)
    entered: list[str] = []

    async def write(name: str) -> None:
        async with slots.hold(0):
            entered.append(name)

    mine = slots.hold(0)
    await mine.__aenter__()  # this test holds the only slot
    waiting = asyncio.create_task(write("waiting"))
    await _settle()
    waiting.cancel()  # cancelled while queued: its place goes
    await asyncio.gather(waiting, return_exceptions=True)
    granted = asyncio.create_task(write("granted"))
    await _settle()
    await mine.__aexit__(None, None, None)  # the slot is handed to ``granted`` ...
    granted.cancel()  # ... which is cancelled before it ran: it must hand the slot on
    await asyncio.gather(granted, return_exceptions=True)
    assert entered == [] and slots._free == 1 and not any(slots._waiting)
    await asyncio.wait_for(write("after"), timeout=5)
    assert entered == ["after"] and slots._free == 1


@pytest.mark.parametrize(("waited", "expected"), [(1.0, ["slices 1", "slices 2", "endpoints"]),
                                                 (2.0, ["endpoints", "slices 1", "slices 2"])])
async def test_a_lower_rank_that_waited_out_the_bound_goes_first(waited: float, expected: list[str]) -> None:
    """Endless slice work (targets retrying slow failures) must not starve an Endpoints write: once it
    has waited ``bound`` seconds it takes the next free slot, ahead of every slice write waiting."""
    now = [0.0]
    slots = Slots(1, bound=2.0, clock=lambda: now[0])
    order: list[str] = []

    async def write(name: str, rank: int) -> None:
        async with slots.hold(rank):
            order.append(name)

    mine = slots.hold(0)
    await mine.__aenter__()
    tasks = [asyncio.create_task(write("endpoints", 1))]
    await _settle()
    tasks += [asyncio.create_task(write(f"slices {i}", 0)) for i in (1, 2)]
    await _settle()
    now[0] = waited
    await mine.__aexit__(None, None, None)
    await asyncio.gather(*tasks)
    assert order == expected
