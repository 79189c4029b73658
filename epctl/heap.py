"""Keep the cyclic garbage collector's full collections off the event loop.

A controller holds hundreds of thousands of long-lived objects: cached API objects, checks, desired
state. Every *full* collection walks all of them, and at 1,000 ClusterEndpoints x 10 hosts it took
110-150 ms, every 1-2 s while probing 3,000/s (measured with gc.callbacks, benchmarks/shards.py):
during each pause no probe answer, API response or Lease renewal is read, the measured loop lag
crosses the admission threshold, and the probe rate halves although the core is a third idle.
Those collections found nothing: the long-lived objects are not garbage.

``gc.freeze()`` moves every live object out of the collector's reach. :func:`settle_heap` does it
once the caches are in at start-up; :class:`HeapKeeper` does it again whenever full collections keep
pausing the loop for nothing (a cold start's decisions, a handover, growth): once they have cost twice
what the last settle cost, and not more often than ``interval``. A fixed 30 s wait meant the desired
state built during a cold start (an Endpoint and a health record per host, lists and dicts: 90,000
objects at 1,000 x 10) stayed in the collector's reach for half a minute, a 100-180 ms full
collection about every second, each throttling the probe admission.
A settle first *unfreezes* and collects everything, so a cycle that died while frozen is reclaimed
at the next settle rather than leaked.

The young generation is made larger (:data:`THRESHOLDS`: a collection every 50,000 net allocations
instead of 700). At thousands of probes a second, whatever a probe holds while in flight (its
socket, timer, callbacks) was alive at most young collections, so it was promoted, died in the old
generation and was only found by full collections: 100-180 ms pauses every few seconds with the
heap frozen. With a larger young generation most of it dies young; a young collection of 50,000
objects takes a few milliseconds. Full collections stay as Python schedules them (every 20 x 10
young ones at most, and only when the old generation grew by a quarter).

The decision is pure (:class:`FullCollections`); the gc hook and the task are below it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from epctl.tasks import cancel_and_wait

log = logging.getLogger(__name__)


def settle_heap() -> float:
    """Unfreeze, collect everything once, freeze what survived; returns the pause in seconds."""
    start = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - start


@dataclass
class FullCollections:
    """When is another settle worth its one pause? When fruitless full collections (they took at
    least ``min_pause`` and found fewer than ``max_found`` objects) have cost at least ``budget``
    seconds of loop time since the last settle, and at least ``worth`` times that settle's own pause
    (so settling never costs more than half the pauses it ends), and ``interval`` has passed since it."""

    min_pause: float = 0.02
    max_found: int = 1000
    budget: float = 0.5
    worth: float = 2.0
    interval: float = 5.0
    wasted: float = 0.0
    settled_at: float = float("-inf")
    settle_pause: float = 0.0  # what the last settle cost

    def observe(self, pause: float, found: int) -> None:
        if pause >= self.min_pause and found < self.max_found:
            self.wasted += pause

    def due(self, now: float) -> bool:
        return (self.wasted >= max(self.budget, self.worth * self.settle_pause)
                and now - self.settled_at >= self.interval)

    def settled(self, now: float, pause: float = 0.0) -> None:
        self.wasted, self.settled_at, self.settle_pause = 0.0, now, pause


THRESHOLDS = (50_000, 20, 10)  # gc.set_threshold while the keeper runs (CPython's default: 700, 10, 10)


class HeapKeeper:
    """Watches full collections (``gc.callbacks``) and settles the heap on the loop when due."""

    def __init__(self, policy: FullCollections | None = None,
                 on_full_collection: Callable[[float], None] | None = None, check_every: float = 1.0) -> None:
        self.policy = policy or FullCollections()
        self.on_full_collection = on_full_collection
        self.check_every = check_every
        self.settles = 0
        self._started_at = 0.0
        self._pauses: list[float] = []  # reported from the loop: no metric lock inside the collector
        self._task: asyncio.Task[None] | None = None
        self._thresholds: tuple[int, int, int] | None = None  # what start() replaced

    def _hook(self, phase: str, info: dict[str, Any]) -> None:
        # runs inside the collector, on whichever thread allocated: only arithmetic here
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started_at = time.perf_counter()
            return
        pause = time.perf_counter() - self._started_at
        self.policy.observe(pause, int(info.get("collected", 0)))
        self._pauses.append(pause)

    def settle(self) -> None:
        pause = settle_heap()
        self.policy.settled(time.monotonic(), pause)
        self.settles += 1
        log.debug("heap settled", extra={"pause_ms": round(pause * 1000, 1), "frozen": gc.get_freeze_count()})

    def start(self) -> None:
        """Settle now (the caches are in) and keep watching."""
        self.settle()
        self._thresholds = gc.get_threshold()
        gc.set_threshold(*THRESHOLDS)
        gc.callbacks.append(self._hook)
        self._task = asyncio.create_task(self._run(), name="heap-keeper")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_every)
            pauses, self._pauses = self._pauses, []
            if self.on_full_collection is not None:
                for pause in pauses:
                    self.on_full_collection(pause)
            if self.policy.due(time.monotonic()):
                self.settle()

    async def stop(self) -> None:
        if self._hook in gc.callbacks:
            gc.callbacks.remove(self._hook)
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
