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
- :class:`Stretch` degrades freshness instead of truth. When the due checks ask for more probes
  per second than the admitted rate delivers, every check's effective period is multiplied by the
  same factor (demand / achieved rate), so all checks keep running in schedule order, none
  starves, and lateness stays bounded: 10,000 checks at 1 s on a core that runs 6,000 probes/s
  become 10,000 checks at ~1.7 s.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Admission:
    """Probes admitted per second, steered by measured loop lag."""

    rate: float = 1000.0
    min_rate: float = 20.0
    max_rate: float = 1_000_000.0
    lag_high: float = 0.050  # seconds: API responses would wait this long behind probes
    lag_low: float = 0.015
    decrease: float = 0.7
    increase: float = 1.08

    def update(self, lag: float, saturated: bool) -> float:
        """One adjustment per measuring window: ``lag`` is the worst loop lag seen in it, ``saturated``
        whether due checks waited for admission during it. Returns the new rate."""
        if lag > self.lag_high:
            self.rate = max(self.min_rate, self.rate * self.decrease)
        elif lag < self.lag_low and saturated:
            self.rate = min(self.max_rate, self.rate * self.increase + 10.0)
        return self.rate


@dataclass
class Stretch:
    """The factor every check's period is multiplied by (1.0: no stretch)."""

    factor: float = 1.0
    headroom: float = 1.05  # aim slightly above demand/capacity, so the backlog drains
    relax: float = 0.85  # per window without backlog, move back towards 1

    def update(self, demand: float, achieved: float, saturated: bool) -> float:
        """``demand``: probes per second the checks ask for at their spec periods; ``achieved``: probes
        started per second in the last window; ``saturated``: checks waited for admission in it."""
        if saturated and achieved > 0:
            target = max(1.0, demand / achieved * self.headroom)
            self.factor = max(1.0, (self.factor + target) / 2)
        else:
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
