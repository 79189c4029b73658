"""Exponential backoff with jitter, shared by every retry loop that talks to the API server.

Jitter spreads out a fleet of controllers (or many informers in one) that failed at the same
moment, so they do not hammer a recovering API server in lock-step.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays ``initial * factor**n`` capped at ``maximum``, each scaled by a random 50-100 %."""

    def __init__(self, initial: float = 1.0, maximum: float = 60.0, factor: float = 2.0,
                 rng: random.Random | None = None) -> None:
        if initial <= 0 or maximum < initial or factor < 1:
            raise ValueError("need 0 < initial <= maximum and factor >= 1")
        self.initial, self.maximum, self.factor = initial, maximum, factor
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self, at_least: float = 0.0) -> float:
        """The delay before the next attempt; ``at_least`` honours a server's Retry-After."""
        base = min(self.maximum, self.initial * self.factor ** self.attempts)
        self.attempts += 1
        return max(at_least, base * self._rng.uniform(0.5, 1.0))

    def reset(self) -> None:
        self.attempts = 0
