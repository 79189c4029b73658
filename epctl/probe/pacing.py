"""How fast the scheduler may start probes, and how far it stretches periods when it cannot keep up.
Pure: no I/O, no clock of its own (callers pass the times), tested directly.

Two feedback loops, both measured rather than guessed (docs/design.md section 6, "truth first"):

- :class:`Admission` keeps the event loop responsive. Every probe costs loop time (a connect, a
  wake-up, a task), and so does every API response the writer, the status writer, the informers
  and the Lease renewals wait for. The scheduler measures **loop lag** (how late its own tick runs
  against the time it asked for) and admits new probes at a rate that keeps that lag low:
  multiplicative decrease when the lag is high, gentle increase while work is waiting and the lag
  is low (AIMD, as TCP congestion control). API work therefore never queues behind a burst of
  probes, and a probe timeout is seen when it happens, not seconds later.
- :class:`Stretch` degrades freshness instead of truth. When the engine cannot start the due
  checks on time (whatever the limit: admission, the in-flight bound, CPU), every check's
  effective period is multiplied by the same factor, demand / measured capacity, so all checks
  keep running in schedule order, none starves, and lateness stays bounded: 10,000 checks at 1 s
  on a core that runs 6,000 probes/s become 10,000 checks at ~1.7 s.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Admission:
    """Probes admitted per second, steered by measured loop lag.

    While the loop keeps up, the rate simply follows the demand (twice it, since checks' slots are
    hash-random and bunch up): nothing is held back.
    When the lag goes above ``lag_high`` the rate drops multiplicatively and the admission is
    *throttled*; from then on it grows back gently, only while the lag is below ``lag_low``, until it
    reaches the demand again (AIMD, as TCP congestion control does with a congestion window)."""

    rate: float = 1_000_000.0
    min_rate: float = 20.0
    max_rate: float = 1_000_000.0
    lag_high: float = 0.050  # seconds: API responses would wait this long behind probes
    lag_low: float = 0.025
    decrease: float = 0.7
    increase: float = 1.08
    throttled: bool = False
    yield_share: float = 0.25  # of the engine's capacity, what probing keeps while API writes queue

    def update(self, lag: float, demand: float, api_backlog: bool = False, stretch: float = 1.0) -> float:
        """One adjustment per measuring window: ``lag`` is the worst loop lag seen in it, ``demand`` the
        probes per second the checks ask for, ``api_backlog`` whether API writes are queueing, ``stretch``
        the period stretch (demand / the engine's measured capacity; 1 when it keeps up). Acting beats
        probing: while writes queue, probes get a quarter of what the engine runs, demand / stretch, so
        an engine that was already saturated gives the writes three quarters of its probing time, not
        a quarter of a demand it never met. The stretch holds while probing yields (the scheduler does
        not measure a yield as capacity), so a backlog that comes and goes cannot ratchet the cap down.
        Returns the new rate."""
        ceiling = min(self.max_rate, max(self.min_rate, demand * 2))  # slots are random: room for bursts
        if api_backlog:  # capped at a share, and still steered by the lag below that cap
            cap = max(self.min_rate, demand / max(1.0, stretch) * self.yield_share)
            if lag > self.lag_high:
                self.rate = max(self.min_rate, min(self.rate, cap) * self.decrease)
            elif lag < self.lag_low:
                self.rate = min(cap, self.rate * self.increase + 10.0)
            else:
                self.rate = min(self.rate, cap)
            self.throttled = True
            return self.rate
        if lag > self.lag_high:
            self.rate = max(self.min_rate, min(self.rate, ceiling) * self.decrease)
            self.throttled = True
        elif not self.throttled:
            self.rate = ceiling
        elif lag < self.lag_low:
            self.rate = min(ceiling, self.rate * self.increase + 10.0)
            if self.rate >= demand:
                self.throttled = False  # caught up with the demand: follow it again
        else:
            self.rate = min(self.rate, ceiling)
        return self.rate


@dataclass
class Stretch:
    """The factor every check's period is multiplied by (1.0: no stretch), from measured capacity.

    Whatever limits the engine (admission, the in-flight bound, plain CPU), a window in which due
    checks waited at every tick measured its capacity: the probes it started. The factor is then
    demand / capacity (plus a little headroom so the backlog drains); a window in which nothing
    waited relaxes it towards 1; a window in between holds it. Estimating the factor from the
    capacity directly, rather than integrating lateness, cannot overshoot while an old backlog
    drains."""

    factor: float = 1.0
    headroom: float = 1.05
    relax: float = 0.9

    def update(self, demand: float, capacity: float | None, waited: bool) -> float:
        """``demand``: probes per second the checks ask for at their spec periods; ``capacity``: probes
        per second started in a window where checks waited all along (None otherwise); ``waited``: checks
        waited at some point in the window."""
        if capacity:
            target = max(1.0, demand / capacity * self.headroom)
            self.factor = max(1.0, min(self.factor * 2, (self.factor + target) / 2))  # at most doubling
        elif not waited:
            self.factor = max(1.0, 1.0 + (self.factor - 1.0) * self.relax)
            if self.factor < 1.01:
                self.factor = 1.0
        return self.factor


def timeout_was_seen_late(duration: float, timeout: float) -> bool:
    """A timed-out probe whose timeout the loop noticed much later than it fired: an answer that came
    in the last part of the window may be waiting unread behind the timer, so the probe says nothing
    about the host. Measured per probe as the lateness of its own deadline; tolerance is 10 % of the
    timeout, at least 50 ms (a healthy loop notices a timer within a few ms)."""
    return duration - timeout > max(0.05, 0.1 * timeout)
