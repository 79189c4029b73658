"""Background-task plumbing shared by every long-running component (informers, writers, prober)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


async def within(timeout: float | None, awaitable: Awaitable[T]) -> T:
    """``awaitable``'s result, or TimeoutError once ``timeout`` seconds pass (None: no limit).

    epctl uses this, never ``asyncio.wait_for`` (ruff bans it): on Python 3.11 wait_for returns the
    awaited result, and drops the cancellation, when the awaited thing finishes in the same loop
    iteration as its caller is cancelled (CPython gh-86296, fixed in 3.12 by rebuilding wait_for on
    ``asyncio.timeout``, as this is). A SIGTERM that landed as a probe answered was lost that way:
    ``epctl check`` probed on to its decision and exited 1 instead of 143, and a loop around such a
    wait (a shard member's, a poller's) would run on after it was told to stop."""
    async with asyncio.timeout(timeout):
        return await awaitable


class EarliestDeadline:
    """One loop timer for the earliest of many deadlines (monotonic times): ``at(when)`` arms it unless
    an earlier call is already due; when it fires, ``callback`` runs and returns the next deadline
    (None: none left), which re-arms it.

    Why: a removed host's grace ends at its own deadline (``DesiredState.expire``). The timer used to
    be armed only for the earliest deadline whenever leaving endpoints changed, and ``expire``'s
    answer (the next deadline) was dropped: a second host leaving within the first one's grace stayed
    terminating until something else changed its target, in a quiet system forever (found by the
    stateful fuzzer's grace walks, seed 101)."""

    def __init__(self, callback: Callable[[], float | None], clock: Callable[[], float] = time.monotonic) -> None:
        self._callback, self._clock = callback, clock
        self._handle: asyncio.TimerHandle | None = None
        self._when = 0.0
        self._closed = False

    def at(self, when: float) -> None:
        if self._closed or (self._handle is not None and self._when <= when):
            return  # stopped, or an earlier (or the same) call is due: it re-arms for the rest
        loop = asyncio.get_running_loop()
        if self._handle is not None:
            self._handle.cancel()
        self._when = when
        self._handle = loop.call_later(max(0.0, when - self._clock()), self._fire)

    def _fire(self) -> None:
        self._handle = None
        following = self._callback()
        if following is not None:
            self.at(following)

    def cancel(self) -> None:
        """For good: a shutdown still applies late events to the desired state, which ask again."""
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def ensure_running(task: asyncio.Task[None] | None, factory: Callable[[], Coroutine[Any, Any, None]],
                   name: str) -> asyncio.Task[None]:
    """``task`` if it is still running, else a fresh one from ``factory`` (so start() is idempotent)."""
    if task is None or task.done():
        task = asyncio.create_task(factory(), name=name)
    return task


async def cancel_and_wait(task: asyncio.Task[Any] | None, resend: float = 0.5) -> None:
    """Cancel ``task`` and wait until it has really finished (its cleanup ran).

    The cancellation is sent again every ``resend`` seconds while the task runs: a task that swallows
    one (as ``asyncio.wait_for`` does on Python 3.11, see :func:`within`; a library may too) would
    otherwise run on forever while we wait for it."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=resend)
    if not task.cancelled():
        task.result()  # an error the task ended with is still raised, as awaiting it would


def core_health(tasks: list[asyncio.Task[None]]) -> tuple[bool, str]:
    """``/healthz``: unhealthy once a task that should run forever has ended."""
    dead = [t.get_name() for t in tasks if t.done()]
    return (not dead, f"core tasks stopped: {', '.join(dead)}" if dead else "ok")


async def wait_or_cancel(task: asyncio.Task[Any] | None, timeout: float) -> None:
    """Wait for ``task`` at most ``timeout`` seconds, then cancel it and wait until it has stopped.
    Whatever it ended with is its owner's business (this never raises it): a handover only needs to
    know the write is no longer running."""
    if task is None or task.done():
        return
    await asyncio.wait({task}, timeout=max(timeout, 0.0))
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)


async def run_child_task(task: asyncio.Task[None]) -> tuple[asyncio.Task[None], BaseException | None]:
    """Wait for ``task``, a child the caller created so a handover can wait for it or cancel it alone.
    Returns it and what it raised (its own cancellation included), never raising that; a
    cancellation of the caller still propagates, after cancelling the child."""
    try:
        await asyncio.wait({task})
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task.cancelled():
        return task, asyncio.CancelledError()
    return task, task.exception()


class KeyedTasks:
    """Child tasks in flight, at most ``limit`` at once and at most one per key: the status writer's
    patches and the Event recorder's writes. One at a time made a first install of 3,000 failing
    ClusterEndpoints wait over a minute for its status patches and another for its Events, each a
    round trip; one per key keeps a key's writes in order (and a correlation's create before its
    count bump). A handover waits for, or cancels, exactly the writes of the keys it let go."""

    def __init__(self, limit: int, name: str,
                 on_error: Callable[[Hashable, BaseException], None] | None = None,
                 on_done: Callable[[], None] | None = None) -> None:
        self.limit = max(1, limit)
        self.name = name
        self.on_error, self.on_done = on_error, on_done
        self.running: dict[Hashable, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self.running)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.running

    async def free(self, key: Hashable | None = None) -> None:
        """Return when a slot is free (and, given ``key``, no task of ``key`` runs)."""
        while len(self.running) >= self.limit or (key is not None and key in self.running):
            self._changed.clear()
            await self._changed.wait()

    def start(self, key: Hashable, coro: Coroutine[Any, Any, None]) -> None:
        """Start ``coro`` for ``key`` now (the caller waited for :meth:`free`)."""
        assert key not in self.running, f"{self.name}: {key} already in flight"
        task = asyncio.create_task(coro, name=self.name)
        self.running[key] = task
        task.add_done_callback(lambda done: self._done(key, done))

    def _done(self, key: Hashable, task: asyncio.Task[None]) -> None:
        if self.running.get(key) is task:
            del self.running[key]
        self._changed.set()
        if not task.cancelled() and task.exception() is not None and self.on_error is not None:
            self.on_error(key, task.exception())  # type: ignore[arg-type]
        if self.on_done is not None:
            self.on_done()

    async def release(self, let_go: Callable[[Any], bool], timeout: float) -> None:
        """Wait at most ``timeout`` for the tasks of keys ``let_go`` picks, then cancel what still runs."""
        tasks = [task for key, task in list(self.running.items()) if let_go(key)]
        await asyncio.gather(*(wait_or_cancel(task, timeout) for task in tasks))

    async def cancel_all(self) -> None:
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
