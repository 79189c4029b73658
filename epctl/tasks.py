"""Background-task plumbing shared by every long-running component (informers, writers, prober)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


def ensure_running(task: asyncio.Task[None] | None, factory: Callable[[], Coroutine[Any, Any, None]],
                   name: str) -> asyncio.Task[None]:
    """``task`` if it is still running, else a fresh one from ``factory`` (so start() is idempotent)."""
    if task is None or task.done():
        task = asyncio.create_task(factory(), name=name)
    return task


async def cancel_and_wait(task: asyncio.Task[Any] | None, resend: float = 0.5) -> None:
    """Cancel ``task`` and wait until it has really finished (its cleanup ran).

    The cancellation is sent again every ``resend`` seconds while the task runs: on Python 3.11
    ``asyncio.wait_for`` swallows a cancellation that arrives as its timeout fires, and a loop around
    it (the leader elector's) would then run on forever while we wait for it."""
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
