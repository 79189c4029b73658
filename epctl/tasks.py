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


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has really finished (its cleanup ran)."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def core_health(tasks: list[asyncio.Task[None]]) -> tuple[bool, str]:
    """``/healthz``: unhealthy once a task that should run forever has ended."""
    dead = [t.get_name() for t in tasks if t.done()]
    return (not dead, f"core tasks stopped: {', '.join(dead)}" if dead else "ok")
