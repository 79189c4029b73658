"""Routing first: the order in which epctl's writers share the API server when much changes at once.

When many targets change together (a host shared by 1,000 ClusterEndpoints fails), three writers
have work: the slice/Endpoints writer (what kube-proxy routes by), the status writer and the Event
recorder. Each has its own queue, so without an order they interleave and the last Service learns
of the failure only after hundreds of status patches and Events went first. A :class:`Turn` makes a
lower writer wait, before each write, while a writer ahead of it has work due or in flight.

The wait is bounded so nothing starves under endless churn: after waiting ``bound`` seconds a lower
writer sends ``burst`` writes without asking again, then yields anew. The order is therefore
"routing first" for any burst the writer clears within ``bound``, and fair shares beyond it.

Within the routing writer the same order holds one level down (:class:`Slots`): a target's
EndpointSlices (what kube-proxy routes by) take a write slot before any target's v1 Endpoints (the
legacy copy, for older consumers), so in a burst every Service's slices go out first.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

from epctl.tasks import within

DEFAULT_BOUND = 2.0  # seconds a status patch or Event waits for the writers ahead at most ...
DEFAULT_BURST = 50  # ... then this many go without waiting


class Ahead(Protocol):
    """A writer that goes first: is it busy, and wait until it is not."""

    def busy(self) -> bool: ...
    async def quiet(self) -> None: ...


class Turn:
    def __init__(self, ahead: Sequence[Ahead], bound: float = DEFAULT_BOUND, burst: int = DEFAULT_BURST) -> None:
        self.ahead = list(ahead)
        self.bound, self.burst = bound, burst
        self.expired = 0  # how often the bound ran out (the writers ahead were busy for all of it)
        self._credit = 0

    async def wait(self) -> None:
        """Return when this writer may send its next write."""
        if self._credit > 0:
            self._credit -= 1
            return
        deadline = time.monotonic() + self.bound
        while (busy := next((writer for writer in self.ahead if writer.busy()), None)) is not None:
            # all of them quiet at once: waiting for the status writer may give the writer new work
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await within(remaining, busy.quiet())
            except TimeoutError:
                self.expired += 1
                self._credit = self.burst - 1
                return


class Slots:
    """``size`` write slots shared by ranks of work: a free slot goes to the lowest rank waiting (rank
    0 first), first come first served within a rank; a waiter of a higher rank that has waited
    ``bound`` seconds goes before them all, so endless rank-0 work (targets retrying slow failures)
    never starves it. A semaphore with an order.

    Why: the writer used to write a target's slices and its Endpoints side by side under one slot, so
    when 1,000 targets changed at once the last Service's slices went out after ~2,000 requests;
    with the Endpoints a rank below, after ~1,000."""

    def __init__(self, size: int, ranks: int = 2, bound: float = DEFAULT_BOUND,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._free = size
        self.bound, self._clock = bound, clock
        # per rank: (granted when set, monotonic time it began waiting)
        self._waiting: list[deque[tuple[asyncio.Future[None], float]]] = [deque() for _ in range(ranks)]

    def contended(self, rank: int = 0) -> bool:
        """Does work of ``rank`` wait for a slot now?"""
        return any(not granted.done() for granted, _ in self._waiting[rank])

    @asynccontextmanager
    async def hold(self, rank: int) -> AsyncIterator[None]:
        await self._acquire(rank)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, rank: int) -> None:
        if self._free > 0 and not any(self._waiting[:rank + 1]):
            self._free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (granted, self._clock())
        self._waiting[rank].append(entry)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release()  # handed a slot as we were cancelled: hand it on
            else:
                try:
                    self._waiting[rank].remove(entry)
                except ValueError:
                    pass
            raise

    def _release(self) -> None:
        now = self._clock()
        for waiting in self._waiting[1:]:  # a lower rank that waited out the bound goes first
            while waiting and waiting[0][0].done():
                waiting.popleft()
            if waiting and now - waiting[0][1] >= self.bound:
                waiting.popleft()[0].set_result(None)
                return
        for waiting in self._waiting:
            while waiting:
                granted, _ = waiting.popleft()
                if not granted.done():
                    granted.set_result(None)
                    return
        self._free += 1
