"""Admission and stretch: the pure feedback loops behind the scheduler's pacing."""

from __future__ import annotations

from epctl.probe.pacing import Admission, Stretch, timeout_was_seen_late


def test_admission_backs_off_on_lag_and_grows_only_while_work_waits() -> None:
    admission = Admission(rate=1000.0)
    assert admission.update(lag=0.2, saturated=True) == 700.0  # the loop is late: fewer new probes
    assert admission.update(lag=0.005, saturated=False) == 700.0  # nothing waits: no reason to grow
    grown = admission.update(lag=0.005, saturated=True)
    assert 700.0 < grown < 800.0
    assert admission.update(lag=0.03, saturated=True) == grown  # between the marks: hold
    for _ in range(100):
        admission.update(lag=1.0, saturated=True)
    assert admission.rate == admission.min_rate  # never zero: probing never stops entirely
    capped = Admission(rate=50.0, max_rate=60.0)
    for _ in range(10):
        capped.update(lag=0.0, saturated=True)
    assert capped.rate == 60.0  # --max-probe-rate holds


def test_stretch_converges_to_demand_over_capacity_and_relaxes() -> None:
    stretch = Stretch()
    for _ in range(12):  # 10,000 checks at 1 s; the engine starts 6,000 probes/s
        stretch.update(demand=10_000, achieved=6_000, saturated=True)
    assert abs(stretch.factor - 10_000 / 6_000 * stretch.headroom) < 0.01
    for _ in range(40):
        stretch.update(demand=10_000, achieved=9_000, saturated=False)
    assert stretch.factor == 1.0  # back on schedule once nothing waits
    assert Stretch().update(demand=100, achieved=200, saturated=True) == 1.0  # never below 1


def test_a_timeout_seen_late_is_inconclusive() -> None:
    assert not timeout_was_seen_late(duration=1.004, timeout=1.0)  # a timer noticed in time
    assert not timeout_was_seen_late(duration=1.09, timeout=1.0)
    assert timeout_was_seen_late(duration=1.2, timeout=1.0)  # 200 ms late: an answer may be unread
    assert timeout_was_seen_late(duration=3.6, timeout=1.0)
    assert not timeout_was_seen_late(duration=10.4, timeout=10.0)  # 4 % of a long timeout
