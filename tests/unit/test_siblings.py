"""The host index and the sweep memo behind "a changed host's siblings look at once" (probe/siblings.py)."""

from __future__ import annotations

from epctl.probe.siblings import HostIndex, SweepMemo


def test_host_index_holds_a_lone_key_bare_and_several_in_order() -> None:
    index: HostIndex[str] = HostIndex()
    index.add("10.0.0.1", "a")
    index.add("10.0.0.1", "a")  # idempotent
    assert list(index.of("10.0.0.1")) == ["a"]
    assert index._by_address["10.0.0.1"] == "a"  # no container for the usual one check per address
    index.add("10.0.0.1", "b")
    index.add("10.0.0.1", "c")
    index.add("10.0.0.1", "b")
    assert list(index.of("10.0.0.1")) == ["a", "b", "c"]
    assert list(index.of("10.0.0.2")) == []
    index.remove("10.0.0.1", "b")
    index.remove("10.0.0.1", "zz")  # not there: nothing happens
    assert list(index.of("10.0.0.1")) == ["a", "c"]
    index.remove("10.0.0.1", "a")
    assert index._by_address["10.0.0.1"] == "c"  # back to bare
    index.remove("10.0.0.1", "c")
    assert len(index) == 0 and list(index.of("10.0.0.1")) == []


def test_host_index_iteration_survives_changes_while_iterating() -> None:
    index: HostIndex[str] = HostIndex()
    for key in "abc":
        index.add("h", key)
    seen = []
    for key in index.of("h"):  # a consumer may remove checks while the scheduler sweeps
        seen.append(key)
        index.remove("h", key)
    assert seen == ["a", "b", "c"] and len(index) == 0


def test_sweep_memo_sweeps_once_per_change_of_a_host() -> None:
    memo = SweepMemo()
    host = ("10.0.0.1", 5432, "tcp")
    assert not memo
    assert memo.first(host, False, now=100.0)  # the host went down: sweep
    memo.saw(host, ok=False, now=100.5)  # its siblings agree
    assert not memo.first(host, False, now=101.0)  # a sibling's own transition: already swept
    assert memo.first(("10.0.0.1", 9187, "tcp"), False, now=101.0)  # another port is another host
    assert memo.first(("10.0.0.1", 5432, "http /"), False, now=101.0)  # another probe too
    assert memo.first(host, True, now=102.0)  # back up: a new change
    assert memo.first(host, False, now=103.0)  # and down again
    assert not memo.first(host, False, now=103.0 + SweepMemo.RETAIN - 1)
    assert memo.first(host, False, now=103.0 + SweepMemo.RETAIN + 1)  # forgotten after RETAIN
    assert len(memo) <= 3  # old entries are dropped
    memo.saw(host, ok=False, now=103.0 + 3 * SweepMemo.RETAIN)
    assert not memo  # and an idle memo empties (the scheduler then skips it per result)


def test_an_answer_against_the_sweep_ends_it() -> None:
    """Found in review: a host down (swept), up again before anything flipped back, down again within a
    minute: the second change must sweep too. Any answer against the sweep's direction ends it."""
    memo = SweepMemo()
    host = ("10.0.0.1", 5432, "tcp")
    assert memo.first(host, False, now=0.0)
    memo.saw(host, ok=True, now=1.0)  # a sibling's confirmation passed: the host is back
    assert memo.first(host, False, now=5.0)
