"""KeyedTasks: the bound on writes in flight, one per key, and a handover's release of the keys it let go."""

from __future__ import annotations

import asyncio

from epctl.tasks import KeyedTasks
from epctl.testing.waiting import eventually


async def test_at_most_limit_at_once_and_one_per_key_in_order() -> None:
    gates = {n: asyncio.Event() for n in range(4)}
    order: list[tuple[str, int]] = []
    tasks = KeyedTasks(2, "t")

    async def write(key: str, n: int) -> None:
        order.append((key, n))
        await gates[n].wait()

    await tasks.free("a")
    tasks.start("a", write("a", 0))
    await tasks.free("b")
    tasks.start("b", write("b", 1))
    blocked = asyncio.create_task(tasks.free("c"))
    await asyncio.sleep(0)
    assert not blocked.done() and len(tasks) == 2  # the limit holds the third
    gates[1].set()
    await eventually(lambda: blocked.done(), timeout=2, message="a slot freed")
    tasks.start("c", write("c", 2))
    same = asyncio.create_task(tasks.free("a"))  # a's first write is still in flight
    await asyncio.sleep(0)
    assert not same.done()
    gates[0].set()
    await eventually(lambda: same.done(), timeout=2, message="a's first write answered")
    tasks.start("a", write("a", 3))
    gates[2].set()
    gates[3].set()
    await eventually(lambda: len(tasks) == 0, timeout=2)
    assert [n for key, n in order if key == "a"] == [0, 3]


async def test_release_waits_for_the_let_go_keys_then_cancels_them_and_leaves_the_others() -> None:
    errors: list[tuple[object, BaseException]] = []
    done: list[int] = []
    tasks = KeyedTasks(8, "t", on_error=lambda key, err: errors.append((key, err)), on_done=lambda: done.append(1))
    hang, quick = asyncio.Event(), asyncio.Event()

    async def hanging() -> None:
        await hang.wait()

    async def answered_soon() -> None:
        await quick.wait()

    async def failing() -> None:
        raise RuntimeError("boom")

    tasks.start("mine", hanging())
    tasks.start("theirs-slow", hanging())
    tasks.start("theirs-quick", answered_soon())
    tasks.start("broken", failing())
    asyncio.get_running_loop().call_later(0.05, quick.set)
    await tasks.release(lambda key: str(key).startswith("theirs"), timeout=0.3)
    assert set(tasks.running) == {"mine"}  # the slow one let go was cancelled, ours runs on
    assert [str(e) for _k, e in errors] == ["boom"] and len(done) == 3
    await tasks.cancel_all()
    assert len(tasks) == 0
