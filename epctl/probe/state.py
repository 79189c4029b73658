"""The per-check threshold state machine (kubelet readiness hysteresis). Pure.

Results are counted as consecutive outcomes across periods: ``failureThreshold`` failures in a
row make a healthy check unhealthy, ``successThreshold`` successes in a row make an unhealthy one
healthy. A check starts *unknown* (``healthy is None``) unless given an initial state (adopted
from existing EndpointSlice conditions after a restart). From unknown, like the kubelet's
readiness (which starts at "not ready"), ``successThreshold`` successes decide healthy and a
single failure decides unhealthy: traffic never goes to a host that has not passed a probe.

A *veto* (a primary that another host outranks, roles.arbitrate) overrides the thresholds at once:
``healthy`` is what is published, ``passing`` what the results alone say.
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
    passing: bool | None = None  # the thresholds' verdict (set from ``healthy`` at construction)
    vetoed: str = ""  # why a passing check is published as not ready anyway ("" = it is not)

    def __post_init__(self) -> None:
        self.passing = self.healthy

    def record(self, ok: bool, reason: str = "") -> bool:
        """Account one result; return True when ``healthy`` changed."""
        self.runs += 1
        self.reason = reason
        if ok:
            self.successes += 1
            self.failures = 0
            if self.passing is not True and self.successes >= self.success_threshold:
                self.passing = True
        else:
            self.failures += 1
            self.successes = 0
            if self.passing is None or (self.passing and self.failures >= self.failure_threshold):
                self.passing = False
        return self._settle()

    def veto(self, reason: str) -> bool:
        """Set (or with "" lift) a veto; return True when ``healthy`` changed."""
        self.vetoed = reason
        return self._settle()

    def _settle(self) -> bool:
        effective = False if self.vetoed and self.passing else self.passing
        if self.vetoed and self.passing:
            self.reason = self.vetoed
        changed = effective != self.healthy
        self.healthy = effective
        return changed

    @property
    def pending(self) -> bool:
        """A streak against the verdict is under way and has not reached its threshold yet: the next
        results may change what is published (the scheduler confirms these at the spec's period even
        while it stretches every other check's)."""
        if self.passing is True:
            return self.failures > 0
        return self.successes > 0

    @property
    def decided(self) -> bool:
        """The current streak has reached the threshold for the current state (``epctl check --once``)."""
        if self.vetoed and self.passing:
            return True
        if self.passing is True:
            return self.successes >= self.success_threshold
        if self.passing is False:
            return self.failures >= self.failure_threshold
        return False
