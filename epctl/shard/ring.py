"""Shard ownership, pure: who owns a target, who is alive, and what one member may write now.

No I/O here (``epctl.shard.member`` reads and writes the Leases); everything is a function of
what the member Leases said and when this process saw them, so it is tested directly.

- **Owner**: rendezvous (highest-random-weight) hashing of the target key over the live members.
  Every replica computes the same owner from the same member set, and adding or removing one
  member moves only the targets that member wins or held: about 1/N of them.
- **Liveness**: a member is alive while its Lease has a holder and this process saw its renewTime
  change within the Lease's duration (measured on our monotonic clock, never by comparing remote
  timestamps with ours: client-go's rule).
- **Holdings**: what this member may write. See :class:`Holdings` for the handover protocol and
  the argument for why two members never write one target at the same time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

TargetKey = tuple[str, str]  # (namespace, Service name)
MAX_CHAIN = 16  # rings applied without convergence before a member drops everything and waits


def weight(member: str, key: TargetKey) -> int:
    """The rendezvous weight of ``key`` on ``member`` (stable across processes and Python versions)."""
    digest = hashlib.blake2b(f"{member}\x00{key[0]}/{key[1]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(key: TargetKey, members: Iterable[str]) -> str | None:
    """The member that owns ``key``: the highest weight (ties, astronomically rare, by name)."""
    best: tuple[int, str] | None = None
    for member in members:
        candidate = (weight(member, key), member)
        if best is None or candidate > best:
            best = candidate
    return None if best is None else best[1]


@dataclass(frozen=True)
class Ring:
    """The live members as one member sees them. Two members that see the same set agree on every
    owner, and publish the same ``version``."""

    members: tuple[str, ...] = ()

    @staticmethod
    def of(members: Iterable[str]) -> Ring:
        return Ring(tuple(sorted(set(members))))

    @property
    def version(self) -> str:
        text = "\n".join(self.members)
        return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()

    def owner(self, key: TargetKey) -> str | None:
        return owner(key, self.members)


@dataclass(frozen=True)
class LeaseRecord:
    """One member Lease as a listing showed it."""

    holder: str
    renew_time: str
    duration: float
    ack: str  # the ring version the holder has applied (released everything it does not own in it)
    released_by: str = ""  # set by the holder itself when it shut down after its last write


@dataclass
class Observation:
    """One member Lease as this process last saw it."""

    holder: str  # the member: a Lease's holder never changes (its name is derived from the identity)
    renew_time: str
    duration: float
    ack: str
    seen_at: float  # monotonic time we first saw this renewal
    released: bool = False


@dataclass
class Members:
    """Liveness from observed member Leases: a renewal seen is fresh *now*; without a new one a member
    is alive until its duration has passed since we saw the last.

    Only the member itself can end its membership early, by releasing its Lease (holder cleared and
    ``released_by`` set to its identity) after its last write. Everything else that can happen to a
    Lease — deleted (by a person, a cascading delete, the garbage collector), its holder or group
    label edited, its duration shortened — is *not* a renewal and *not* a release: the member is
    still alive until its last seen renewal expires. That is what fences a member that has not yet
    noticed: it stops writing ``renew_deadline`` after its last renewal started, before that."""

    observed: dict[str, Observation] = field(default_factory=dict)  # Lease name -> last observation

    def observe(self, leases: Mapping[str, LeaseRecord], now: float) -> None:
        """Take one complete listing: Lease name -> what it said."""
        fresh: dict[str, Observation] = {}
        for name, gone in self.observed.items():
            if name not in leases and not gone.released and now - gone.seen_at < gone.duration:
                fresh[name] = gone  # vanished without a release: alive until it would have expired
        for name, rec in leases.items():
            old = self.observed.get(name)
            if old is None:
                fresh[name] = Observation(rec.holder, rec.renew_time, rec.duration, rec.ack, now,
                                          released=not rec.holder)
            elif not rec.holder and rec.released_by and rec.released_by == old.holder:
                fresh[name] = Observation(old.holder, rec.renew_time, old.duration, old.ack, old.seen_at, True)
            elif rec.holder and rec.holder == old.holder and not old.released:
                renewed = rec.renew_time != old.renew_time
                fresh[name] = Observation(old.holder, rec.renew_time, max(rec.duration, old.duration) if not renewed
                                          else rec.duration, rec.ack, now if renewed else old.seen_at)
            elif rec.holder and (old.released or not old.holder):
                fresh[name] = Observation(rec.holder, rec.renew_time, rec.duration, rec.ack, now)  # (re)joined
            else:  # edited by someone else: not a renewal, not a release
                if now - old.seen_at < old.duration:
                    fresh[name] = old
        self.observed = fresh

    def alive(self, now: float) -> dict[str, str]:
        """holder -> ack of every live member."""
        return {o.holder: o.ack for o in self.observed.values()
                if o.holder and not o.released and now - o.seen_at < o.duration}

    def released(self) -> list[str]:
        """Names of Leases their members released (to be deleted: nobody renews them again)."""
        return [name for name, o in self.observed.items() if o.released]

    def next_expiry(self, now: float) -> float | None:
        """Seconds until the next live member would expire if it stopped renewing (to look again then)."""
        left = [o.seen_at + o.duration - now for o in self.observed.values()
                if o.holder and not o.released and now - o.seen_at < o.duration]
        return min(left) if left else None


class Holdings:
    """What member ``me`` may write: the targets it owns in *every* ring it applied since the last
    ring that converged (all of that ring's members published it as applied).

    Protocol, per member:
    1. It sees a new ring (a listing of the member Leases): targets it no longer owns are released
       at once (``apply``; the caller stops probing them and waits for their writes in flight), and
       only then does it publish the ring's version on its own Lease (its *ack*).
    2. A target it owns in the new ring but did not hold is taken only once the ring converged:
       every live member of it has acked that version (``converge``).
    3. A member that cannot renew its Lease for the renew deadline holds nothing (``drop``) until
       a ring converges again.

    Why two writers never overlap. Invariant: a member's holdings are always a subset of what it
    owns in the ring its Lease currently acks (holdings shrink before the ack is written, and grow
    only at convergence of the acked ring). Member B takes target T in ring R only when every live
    member of R acks R. Any other member A that could write T is either in R and acks R, so it holds
    only what it owns in R, which excludes T; or not in R, because B saw A's Lease expire or be
    released. A released Lease was cleared after A stopped writing; an expired one means A has not
    renewed for its lease duration, and A steps down ``renew_deadline`` after its last successful
    renewal started, which is earlier (the leader election argument, with the same margin). A can
    only take T again through a later ring that converged, which needs B's ack of it, and B acks a
    ring only after releasing what it does not own there.
    """

    def __init__(self, me: str) -> None:
        self.me = me
        self.ring = Ring()  # the newest ring applied
        self.chain: list[Ring] | None = None  # None: hold nothing until a ring converges
        self._cache: dict[TargetKey, bool] = {}

    def holds(self, key: TargetKey) -> bool:
        held = self._cache.get(key)
        if held is None:
            held = self.chain is not None and all(r.owner(key) == self.me for r in self.chain)
            self._cache[key] = held
        return held

    def owns(self, key: TargetKey) -> bool:
        """Owned in the newest ring (held, or to be held once that ring converges)."""
        return self.ring.owner(key) == self.me

    def apply(self, ring: Ring) -> bool:
        """A new ring was seen; True if that can have released something."""
        if ring == self.ring:
            return False
        self.ring = ring
        if self.chain is not None:
            self.chain.append(ring)
            if len(self.chain) > MAX_CHAIN:  # membership churning without ever converging
                self.chain = None
        self._cache.clear()
        return True

    def converge(self, acks: Mapping[str, str]) -> bool:
        """``acks``: live member -> the ring version its Lease publishes. True if holdings grew."""
        ring = self.ring
        if self.me not in ring.members or any(acks.get(m) != ring.version for m in ring.members):
            return False
        if self.chain == [ring]:
            return False
        self.chain = [ring]
        self._cache.clear()
        return True

    def drop(self) -> bool:
        """Hold nothing (our Lease may be expiring); True if something was held."""
        held = self.chain is not None
        self.chain = None
        self.ring = Ring()
        self._cache.clear()
        return held

    @property
    def converged(self) -> bool:
        return self.chain == [self.ring] and bool(self.ring.members)
