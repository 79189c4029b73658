"""Wait on a condition with a deadline: the only synchronisation tests and demos use.

Sleeping a fixed time and hoping is flaky on a loaded 2-core machine and slow everywhere else;
polling a condition is neither.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

T = TypeVar("T")


async def eventually(condition: Callable[[], T | Awaitable[T]], timeout: float = 10.0, interval: float = 0.02,
                     message: str = "") -> T:
    """Poll ``condition`` until it returns a truthy value (returned) or raise after ``timeout``.

    Exceptions raised by the condition count as "not yet" until the deadline, then are re-raised,
    so the failure message shows the last real reason.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return cast(T, value)
            last_error = None
        except AssertionError as err:
            last_error = err
        except Exception as err:  # the condition may probe a server that is not up yet
            last_error = err
        if time.monotonic() >= deadline:
            if last_error is not None:
                raise AssertionError(f"condition not met within {timeout}s: {message}") from last_error
            raise AssertionError(f"condition not met within {timeout}s: {message}")
        await asyncio.sleep(interval)
