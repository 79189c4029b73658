"""The heap keeper: full collections that find nothing trigger one settle (unfreeze, collect, freeze),
when they cost more than a settle, at most once per interval; a dead frozen cycle is reclaimed by the next settle."""

from __future__ import annotations

import gc
import weakref

from epctl.heap import THRESHOLDS, FullCollections, HeapKeeper
from epctl.testing.waiting import eventually


def test_only_fruitless_pauses_count_and_a_settle_waits_for_its_interval_and_its_worth() -> None:
    policy = FullCollections(min_pause=0.02, max_found=1000, budget=0.5, worth=2.0, interval=5.0)
    policy.settled(100.0, pause=0.1)
    for _ in range(10):
        policy.observe(0.1, found=5000)  # found garbage: worth it
        policy.observe(0.01, found=0)  # short: harmless
    assert not policy.due(200.0)
    for _ in range(5):
        policy.observe(0.1, found=0)
    assert policy.wasted >= 0.5
    assert not policy.due(104.0)  # budget spent, interval not yet over
    assert policy.due(105.0)
    policy.settled(105.0, pause=0.4)  # an expensive settle: worth another only after 0.8 s wasted
    for _ in range(7):
        policy.observe(0.1, found=0)
    assert not policy.due(1000.0)
    policy.observe(0.15, found=0)
    assert policy.due(1000.0)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


async def test_fruitless_full_collections_settle_the_heap_and_frozen_cycles_are_reclaimed() -> None:
    keeper = HeapKeeper(FullCollections(min_pause=0.0, budget=0.0, worth=0.0, interval=0.0), check_every=0.01)
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a cycle, alive and frozen by the first settle
    dead = weakref.ref(a)
    long_lived = [[i] for i in range(50_000)]  # lists: always tracked by the collector
    before = gc.get_threshold()
    keeper.start()
    try:
        assert keeper.settles == 1 and gc.get_freeze_count() >= len(long_lived)
        assert gc.get_threshold() == THRESHOLDS  # a large young generation while it runs
        del a, b  # the cycle dies while frozen: no collection can see it now
        gc.collect()
        assert dead() is not None
        more = [[j] for j in range(50_000)]  # long-lived, not frozen: full collections walk them
        gc.collect()  # fruitless: the keeper settles again
        await eventually(lambda: keeper.settles >= 2, timeout=5, message="settled again")
        assert dead() is None  # the settle unfroze and collected it
        assert gc.get_freeze_count() >= len(long_lived) + len(more)
    finally:
        await keeper.stop()
        gc.unfreeze()
    assert gc.get_threshold() == before  # and the process's own thresholds back after
