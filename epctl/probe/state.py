"""The per-check threshold state machine (kubelet readiness hysteresis). Pure.

Results are counted as consecutive outcomes across periods: ``failureThreshold`` failures in a
row make a healthy check unhealthy, ``successThreshold`` successes in a row make an unhealthy one
healthy. A check starts *unknown* (``healthy is None``) unless given an initial state (adopted
from existing EndpointSlice conditions after a restart). From unknown, like the kubelet's
readiness (which starts at "not ready"), ``successThreshold`` successes decide healthy and a
single failure decides unhealthy: traffic never goes to a host that has not passed a probe.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class CheckState:
    success_threshold: int
    failure_threshold: int
    healthy: bool | None = None
    successes: int = 0
    failures: int = 0
    reason: str = ""
    runs: int = 0

    def record(self, ok: bool, reason: str = "") -> bool:
        """Account one result; return True when ``healthy`` changed."""
        self.runs += 1
        self.reason = reason
        if ok:
            self.successes += 1
            self.failures = 0
            if self.healthy is not True and self.successes >= self.success_threshold:
                self.healthy = True
                return True
        else:
            self.failures += 1
            self.successes = 0
            if self.healthy is None or (self.healthy and self.failures >= self.failure_threshold):
                self.healthy = False
                return True
        return False

    @property
    def decided(self) -> bool:
        """The current streak has reached the threshold for the current state (``epctl check --once``)."""
        if self.healthy is True:
            return self.successes >= self.success_threshold
        if self.healthy is False:
            return self.failures >= self.failure_threshold
        return False
