"""Routing first: the order in which epctl's writers share the API server when much changes at once.

When many targets change together (a host shared by 1,000 ClusterEndpoints fails), three writers
have work: the slice/Endpoints writer (what kube-proxy routes by), the status writer and the Event
recorder. Each has its own queue, so without an order they interleave and the last Service learns
of the failure only after hundreds of status patches and Events went first. A :class:`Turn` makes a
lower writer wait, before each write, while a writer ahead of it has work due or in flight.

The wait is bounded so nothing starves under endless churn: after waiting ``bound`` seconds a lower
writer sends ``burst`` writes without asking again, then yields anew. The order is therefore
"routing first" for any burst the writer clears within ``bound``, and fair shares beyond it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
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
