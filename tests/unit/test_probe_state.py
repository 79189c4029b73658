from __future__ import annotations

from epctl.probe.scheduler import CheckKey, next_slot, phase_fraction
from epctl.probe.state import CheckState


def run(state: CheckState, outcomes: str) -> list[bool | None]:
    """Feed 'y'/'n' outcomes; return the health after each."""
    seen = []
    for outcome in outcomes:
        state.record(outcome == "y")
        seen.append(state.healthy)
    return seen


def test_thresholds_count_consecutive_results_across_periods() -> None:
    state = CheckState(success_threshold=2, failure_threshold=3, healthy=True)
    assert run(state, "nnynnn") == [True, True, True, True, True, False]  # a success resets the failure streak
    assert run(state, "ynyy") == [False, False, False, True]


def test_unknown_start_needs_success_threshold_and_fails_on_first_failure() -> None:
    assert run(CheckState(2, 3), "yy") == [None, True]
    assert run(CheckState(1, 3), "n") == [False]


def test_transitions_reported_once_and_decided() -> None:
    state = CheckState(1, 2, healthy=True)
    assert [state.record(ok) for ok in (False, False, False, True, True)] == [False, True, False, True, False]
    assert state.decided
    fresh = CheckState(1, 3)
    fresh.record(False)
    assert fresh.healthy is False and not fresh.decided  # one failure: not ready, not yet a threshold decision
    fresh.record(False)
    fresh.record(False)
    assert fresh.decided


def test_phase_is_deterministic_and_spreads_evenly() -> None:
    keys = [CheckKey("ns/svc", "p", f"10.0.{i // 250}.{i % 250}") for i in range(10_000)]
    phases = [phase_fraction(k) for k in keys]
    assert phases == [phase_fraction(k) for k in keys]
    buckets = [0] * 10
    for p in phases:
        buckets[int(p * 10)] += 1
    assert all(900 < b < 1100 for b in buckets)  # roughly uniform over the period


def test_next_slot_is_on_the_grid_and_never_before_after() -> None:
    assert next_slot(after=12.0, phase=3.0, period=10.0) == 13.0
    assert next_slot(after=13.0, phase=3.0, period=10.0) == 13.0
    assert next_slot(after=13.5, phase=3.0, period=10.0) == 23.0


def test_pending_while_a_streak_against_the_verdict_is_under_way() -> None:
    """What the scheduler confirms at the spec's period whatever the stretch (docs/design.md section 6)."""
    healthy = CheckState(1, 3, healthy=True)
    assert not healthy.pending
    healthy.record(False)
    assert healthy.pending and healthy.healthy  # one failure of three: the next runs decide
    healthy.record(True)
    assert not healthy.pending  # the streak broke
    for _ in range(3):
        healthy.record(False)
    assert healthy.healthy is False and not healthy.pending  # decided: nothing left to confirm
    recovering = CheckState(2, 1, healthy=False)
    recovering.record(True)
    assert recovering.pending and recovering.healthy is False
    recovering.record(True)
    assert recovering.healthy and not recovering.pending
    unknown = CheckState(2, 3)
    unknown.record(True)
    assert unknown.pending and unknown.healthy is None  # a first decision under way
    assert not CheckState(1, 1, healthy=True).pending
