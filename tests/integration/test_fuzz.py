"""The stateful fuzzer in CI: a fixed seed plus a few random ones, each a bounded random walk.

A failure prints the seed and the (shrunk) steps; replay it with
``python -m tests.fuzz.controller_fuzz --first-seed SEED --seeds 1 --steps N``.
Longer soaks: ``python -m tests.fuzz.controller_fuzz --seeds 50 --steps 60`` (README, reliability),
``--shard`` for shard members and ownership's failures, and ``--grace 3`` for hosts that leave with a
grace while owners change.
"""

from __future__ import annotations

import random

import pytest

from tests.fuzz.controller_fuzz import Stats, fuzz, report

FIXED_SEED = 1  # its leader walk finds a removed target's dropped Endpoints delete when reverted (step 25)
SHARD_SEEDS = (1, 2)  # 2: a member killed behind its slices; finds the Endpoints hold that never lifted
RANDOM_SEEDS = 2
GRACE = 3.0  # long enough that the step after a host leaves (a restart, a handover) happens within it


@pytest.mark.timeout(600)
async def test_random_walks_keep_every_invariant() -> None:
    seeds = [FIXED_SEED] + [random.randrange(1 << 30) for _ in range(RANDOM_SEEDS)]
    stats = Stats()
    failure = await fuzz(seeds[:1], 25, shrink_budget=120, stats=stats)
    if failure is None:
        failure = await fuzz(seeds[1:], 12, shrink_budget=120, stats=stats)
    assert failure is None, report(failure)
    assert stats.steps == 25 + 12 * RANDOM_SEEDS and stats.checks >= 2 * stats.steps


@pytest.mark.timeout(600)
async def test_random_walks_of_shard_members_keep_ownership_unshared() -> None:
    """Shard mode: members join, leave, are killed or paused, their Leases deleted or edited, writes
    answered late, watches lagging, edits made while none runs (issue 22)."""
    seeds = [*SHARD_SEEDS, random.randrange(1 << 30)]
    stats = Stats()
    failure = await fuzz(seeds, 15, shrink_budget=120, stats=stats, shard=True)
    assert failure is None, report(failure)
    assert stats.steps == 15 * len(seeds) and stats.checks >= 2 * stats.steps


@pytest.mark.timeout(600)
async def test_random_walks_with_a_grace_never_drop_a_leaving_host_early() -> None:
    """--terminating-grace-period: hosts leave a ClusterEndpoint and, within their grace, replicas
    restart, hand over, are partitioned (leader mode) or killed, paused, joined (shard mode), or the
    edit is made while none runs; a leaving host stays published (not ready, terminating) for a
    whole grace from when it left and from the last takeover, then goes."""
    stats = Stats()
    failure = await fuzz([FIXED_SEED], 10, shrink_budget=120, stats=stats, grace=GRACE)
    if failure is None:
        failure = await fuzz([random.randrange(1 << 30)], 8, shrink_budget=120, stats=stats, shard=True, grace=GRACE)
    assert failure is None, report(failure)
    assert stats.steps == 18 and stats.checks >= 2 * stats.steps
    assert stats.unlisted > 0 and stats.graced > 0  # hosts did leave while published, and were watched going
