"""Admission and stretch: the pure feedback loops behind the scheduler's pacing."""

from __future__ import annotations

from epctl.probe.pacing import Admission, Stretch, timeout_was_seen_late


def test_admission_follows_demand_until_the_loop_lags() -> None:
    admission = Admission()
    assert admission.update(lag=0.001, demand=1000) == 2000  # nothing held back while the loop keeps up
    assert admission.update(lag=0.001, demand=5000) == 10000  # more checks: the rate follows at once
    assert admission.update(lag=0.2, demand=5000) == 10000 * 0.7  # the loop is late: fewer new probes
    assert admission.throttled
    assert admission.update(lag=0.2, demand=5000) == 10000 * 0.7 * 0.7
    held = admission.update(lag=0.03, demand=5000)  # between the marks: hold
    assert held == 10000 * 0.7 * 0.7
    grown = admission.update(lag=0.005, demand=5000)  # gently back up
    assert held < grown < held * 1.1
    for _ in range(50):
        admission.update(lag=0.005, demand=5000)
    assert not admission.throttled and admission.rate == 10000  # caught up: follows the demand again
    for _ in range(100):
        admission.update(lag=1.0, demand=5000)
    assert admission.rate == admission.min_rate  # never zero: probing never stops entirely


def test_queued_api_writes_take_most_of_the_probes_time() -> None:
    admission = Admission()
    admission.update(lag=0.001, demand=4000)
    assert admission.update(lag=0.001, demand=4000, api_backlog=True) == 1000  # acting beats probing
    assert admission.update(lag=0.001, demand=4000, api_backlog=True) == 1000  # held, not compounded
    assert admission.update(lag=0.001, demand=4000) > 1000  # the writes are out: back up


def test_a_saturated_engine_yields_a_share_of_what_it_runs_not_of_the_demand() -> None:
    """10,000 checks at 1 s on an engine that runs 3,000 probes/s (stretch 3.33): a quarter of the demand
    (2,500/s) would leave the writes almost nothing; a quarter of what it runs gives them three quarters."""
    admission = Admission()
    admission.update(lag=0.001, demand=10_000, stretch=10 / 3)
    assert abs(admission.update(lag=0.001, demand=10_000, api_backlog=True, stretch=10 / 3) - 750) < 1e-6


def test_a_backlog_that_comes_and_goes_does_not_ratchet_the_yield_down() -> None:
    """Found in review: with the cap taken from the probes started in windows without a backlog, each
    window between two backlog windows (still at the cut rate) was measured as free capacity, and a
    backlog flapping every 100 ms took the cap from 1,000/s to the 20/s floor within a second. The cap
    is a share of demand / stretch, and the stretch holds through a yield."""
    admission = Admission()
    demand = 4000.0
    caps = []
    for i in range(60):
        rate = admission.update(lag=0.001, demand=demand, api_backlog=i % 2 == 0, stretch=1.0)
        if i % 2 == 0:
            caps.append(rate)
    assert min(caps) == max(caps) == 1000, caps


def test_a_throttled_rate_grows_back_while_writes_queue_and_the_loop_is_idle() -> None:
    """Found by the shard benchmark: cut to a few hundred probes/s by a lag spike during a cold start,
    the rate stayed there for minutes (30,000 checks at 1 s stretched 400x) because API writes kept
    queueing behind a slow API server, though the loop was idle."""
    admission = Admission()
    admission.update(lag=0.001, demand=30_000)
    for _ in range(12):
        admission.update(lag=0.3, demand=30_000, api_backlog=True)
    assert admission.rate < 1000
    for _ in range(100):  # 10 s of an idle loop with writes still queued
        admission.update(lag=0.001, demand=30_000, api_backlog=True)
    assert admission.rate == 7_500  # back at the cap: a quarter of the demand


def test_max_probe_rate_caps_admission() -> None:
    capped = Admission(max_rate=60.0, rate=60.0)
    for _ in range(10):
        capped.update(lag=0.0, demand=120)
    assert capped.rate == 60.0


def test_stretch_converges_to_demand_over_capacity_and_relaxes() -> None:
    stretch = Stretch()
    for _ in range(12):  # 10,000 checks at 1 s; the engine starts 6,000 probes/s
        stretch.update(demand=10_000, capacity=6_000, waited=True)
    assert abs(stretch.factor - 10_000 / 6_000 * stretch.headroom) < 0.01
    held = stretch.factor
    assert stretch.update(demand=10_000, capacity=None, waited=True) == held  # a partial backlog: hold
    for _ in range(60):
        stretch.update(demand=10_000, capacity=None, waited=False)
    assert stretch.factor == 1.0  # back on schedule once nothing waits
    assert Stretch().update(demand=100, capacity=200, waited=True) == 1.0  # never below 1


def test_a_timeout_seen_late_is_inconclusive() -> None:
    assert not timeout_was_seen_late(duration=1.004, timeout=1.0)  # a timer noticed in time
    assert not timeout_was_seen_late(duration=1.09, timeout=1.0)
    assert timeout_was_seen_late(duration=1.2, timeout=1.0)  # 200 ms late: an answer may be unread
    assert timeout_was_seen_late(duration=3.6, timeout=1.0)
    assert not timeout_was_seen_late(duration=10.4, timeout=10.0)  # 4 % of a long timeout
