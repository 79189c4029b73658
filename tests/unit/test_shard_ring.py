"""Shard ownership, pure: rendezvous owners, liveness from observed Leases, the handover rule."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from epctl.shard.member import lease_name
from epctl.shard.ring import Holdings, LeaseRecord, Members, Ring, owner

KEYS = [("ns", f"svc-{i}") for i in range(3000)]


def test_owners_spread_evenly_and_every_replica_agrees() -> None:
    members = ["a", "b", "c"]
    counts = Counter(owner(key, members) for key in KEYS)
    assert set(counts) == set(members)
    assert all(800 < n < 1200 for n in counts.values()), counts  # ~1,000 each
    assert all(owner(key, list(reversed(members))) == owner(key, members) for key in KEYS)  # order-free


def test_adding_a_member_moves_only_its_share() -> None:
    before = {key: owner(key, ["a", "b", "c"]) for key in KEYS}
    after = {key: owner(key, ["a", "b", "c", "d"]) for key in KEYS}
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == "d" for key in moved)  # nothing moves between the old members
    assert 0.2 < len(moved) / len(KEYS) < 0.3  # ~1/4


def test_removing_a_member_moves_only_its_targets() -> None:
    before = {key: owner(key, ["a", "b", "c"]) for key in KEYS}
    after = {key: owner(key, ["a", "c"]) for key in KEYS}
    assert all(before[key] == "b" for key in KEYS if before[key] != after[key])


def test_ring_version_depends_only_on_the_member_set() -> None:
    assert Ring.of(["b", "a"]).version == Ring.of(["a", "b", "a"]).version != Ring.of(["a"]).version


def R(holder: str, renewed: str, ack: str = "v", released_by: str = "", duration: float = 3.0) -> LeaseRecord:
    return LeaseRecord(holder, renewed, duration, ack, released_by)


def test_liveness_is_measured_on_our_clock_from_when_a_renewal_was_seen() -> None:
    members = Members()
    members.observe({"m-a": R("a", "t1"), "m-b": R("b", "t1"), "m-c": R("", "t1", "")}, now=0)
    assert members.alive(1.0) == {"a": "v", "b": "v"}  # a released Lease (no holder) is no member
    members.observe({"m-a": R("a", "t2"), "m-b": R("b", "t1")}, now=2.5)
    assert set(members.alive(3.2)) == {"a"}  # b has not renewed since we first saw it, 3 s ago
    members.observe({"m-a": R("a", "t2", "w")}, now=4.0)  # an ack changes, renewTime does not
    assert members.alive(5.4) == {"a": "w"} and members.alive(5.6) == {}
    # a renewal we could not see (our listing failed for a while) counts from when we see it
    members.observe({"m-a": R("a", "t9", "w")}, now=60.0)
    assert set(members.alive(61.0)) == {"a"}


def test_a_deleted_or_edited_lease_is_alive_until_its_last_renewal_expires() -> None:
    """Only the member itself ends its membership early (a release after its last write). A Lease
    deleted by someone (kubectl, a cascading delete, the garbage collector), or whose holder or group
    label someone changed, may belong to a member still writing: it counts until it would expire."""
    members = Members()
    members.observe({"m-a": R("a", "t1"), "m-b": R("b", "t1")}, now=0)
    members.observe({"m-a": R("a", "t2")}, now=1.0)  # m-b deleted (or relabelled out of the group)
    assert set(members.alive(2.9)) == {"a", "b"} and set(members.alive(3.1)) == {"a"}
    members.observe({"m-a": R("a", "t2"), "m-b": R("", "t1")}, now=1.0)  # holder cleared by hand, unsigned
    assert set(members.alive(2.9)) == {"a", "b"}
    members.observe({"m-a": R("a", "t2"), "m-b": R("x", "t5", duration=99)}, now=1.0)  # holder edited
    assert set(members.alive(2.9)) == {"a", "b"} and set(members.alive(3.1)) == {"a"}
    members.observe({"m-a": R("a", "t2"), "m-b": R("b", "t6")}, now=2.0)  # b wrote its Lease again
    assert set(members.alive(4.9)) == {"b"}  # a last renewed at 1.0; b at 2.0


def test_a_release_signed_by_the_member_ends_it_at_once() -> None:
    members = Members()
    members.observe({"m-a": R("a", "t1"), "m-b": R("b", "t1")}, now=0)
    members.observe({"m-a": R("a", "t1"), "m-b": R("", "t2", released_by="someone-else")}, now=0.5)
    assert "b" in members.alive(0.6) and members.released() == []
    members.observe({"m-a": R("a", "t1"), "m-b": R("", "t2", released_by="b")}, now=0.6)
    assert set(members.alive(0.7)) == {"a"} and members.released() == ["m-b"]
    members.observe({"m-a": R("a", "t1")}, now=0.8)  # deleted after its release: stays gone
    assert set(members.alive(0.9)) == {"a"} and members.released() == []


def test_a_new_member_takes_nothing_until_the_ring_converges() -> None:
    ring = Ring.of(["a", "b"])
    a = Holdings("a")
    assert a.apply(ring)
    assert not any(a.holds(key) for key in KEYS[:50])  # acked by nobody yet
    assert not a.converge({"a": ring.version, "b": "old"})
    assert a.converge({"a": ring.version, "b": ring.version})
    assert all(a.holds(key) == (ring.owner(key) == "a") for key in KEYS[:200])


def test_a_member_keeps_what_it_owns_in_every_ring_since_the_last_convergence() -> None:
    old, new = Ring.of(["a", "b"]), Ring.of(["a", "b", "c"])
    a = Holdings("a")
    a.apply(old)
    a.converge({"a": old.version, "b": old.version})
    a.apply(new)  # c joined: what moves to c is let go now, the rest is kept without a gap
    for key in KEYS[:300]:
        assert a.holds(key) == (old.owner(key) == "a" and new.owner(key) == "a")
    # back to the old ring before the new one converged: what went to c is not taken back yet,
    # since c may have taken it if the new ring converged without our noticing
    a.apply(old)
    lost = [key for key in KEYS[:300] if old.owner(key) == "a" and new.owner(key) == "c"]
    assert lost and not any(a.holds(key) for key in lost)
    assert a.converge({"a": old.version, "b": old.version})
    assert all(a.holds(key) for key in lost)


def test_dropping_holds_nothing_until_a_ring_converges_again() -> None:
    ring = Ring.of(["a"])
    a = Holdings("a")
    a.apply(ring)
    a.converge({"a": ring.version})
    assert a.holds(KEYS[0]) and a.drop()
    assert not a.holds(KEYS[0])
    a.apply(ring)
    assert not a.holds(KEYS[0])
    a.converge({"a": ring.version})
    assert a.holds(KEYS[0])


STEP = st.tuples(st.sampled_from(["look", "look", "look", "die", "join"]), st.integers(0, 3),
                 st.integers(0, 15), st.integers(0, 15))


@settings(max_examples=300, deadline=None)
@given(st.lists(STEP, max_size=40))
def test_never_two_holders_under_any_order_of_views(steps: list[tuple[str, int, int, int]]) -> None:
    """Members look at the Leases in any order. A view holds every live member, except members that
    joined since the viewer last looked and have not written an ack yet, plus any dead ones whose
    Leases have not expired yet for it.
    A dying member has stepped down first (it cannot renew, so it drops before its Lease expires).
    Each member acks a ring only after applying it, as ShardMember does. No key is ever held twice."""
    names = "abcd"
    holdings = {n: Holdings(n) for n in names[:2]}
    acks = dict.fromkeys(names, "")
    alive = set(names[:2])
    unseen: dict[str, set[str]] = {n: set() for n in names}  # joined since n last looked
    for action, who, stale_mask, skip_mask in steps:
        me = names[who]
        if action == "die" and me in alive and len(alive) > 1:
            holdings[me].drop()
            alive.discard(me)
        elif action == "join" and me not in alive:
            alive.add(me)
            holdings[me], acks[me] = Holdings(me), ""
            for other in names:
                if other != me:
                    unseen[other].add(me)
        elif action == "look" and me in alive:
            stale = {n for i, n in enumerate(names) if stale_mask >> i & 1 and n not in alive}
            # a listing is a consistent read: a member that has written its Lease (it acks the ring it
            # applied) is in every listing after that; only one that has not written yet can be missed
            skipped = {n for i, n in enumerate(names) if skip_mask >> i & 1 and n in unseen[me] and not acks[n]}
            ring = Ring.of((alive | stale | {me}) - skipped)
            unseen[me] &= skipped
            holdings[me].apply(ring)
            acks[me] = ring.version  # released first (apply), then acked
            holdings[me].converge({m: acks[m] for m in ring.members})
        for key in KEYS[:40]:
            assert sum(h.holds(key) for n, h in holdings.items() if n in alive) <= 1


def test_member_lease_names_are_valid_object_names() -> None:
    assert lease_name("epctl-controller-7d9f_1a2b3c4d") == "epctl-member-epctl-controller-7d9f-1a2b3c4d"
    assert lease_name("Host_NAME!") == "epctl-member-host-name"
    assert len(lease_name("x" * 400)) <= 253
