"""The checks that probe one host: when one of them sees the host change, the others look at once. Pure.

Many ClusterEndpoints often share a host (one database behind several namespaces' Services). Each
has its own check, thresholds and schedule, so when the host dies each notices on its own slot:
under a stretched schedule that spreads one failure over several seconds of published state. When
one check's verdict changes, the scheduler moves the next run of every *sibling* (same probe, address
and port, still on the old verdict) to now; each still needs its own threshold of results, at the
spec's period, so nothing is decided on another check's word.

:class:`HostIndex` maps an address to its checks. Most addresses have one check, so an address with
one check holds the key itself, not a container (a list per address cost ~60 B an endpoint with
distinct hosts); :class:`SweepMemo` keeps a host's sweep from being repeated by every sibling that
then transitions too. Siblings are checks of the *same probe* (kind, path, service, role...) against
the same address and port: what makes one check's answer evidence about another's.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class HostIndex(Generic[K]):
    """address -> the keys of the checks that probe it (insertion order).

    A lone key is held bare (most addresses have one check); a shared address holds a dict used as
    an ordered set. A list's membership test made indexing quadratic in the checks per address:
    3,000 ClusterEndpoints sharing 10 hosts cost 5.45 s of CPU at start, 0.04 s this way."""

    __slots__ = ("_by_address",)

    def __init__(self) -> None:
        self._by_address: dict[str, K | dict[K, None]] = {}

    def add(self, address: str, key: K) -> None:
        held = self._by_address.get(address)
        if held is None:
            self._by_address[address] = key
        elif isinstance(held, dict):
            held[key] = None
        elif held != key:
            self._by_address[address] = {held: None, key: None}

    def remove(self, address: str, key: K) -> None:
        held = self._by_address.get(address)
        if held is None:
            return
        if isinstance(held, dict):
            held.pop(key, None)
            if len(held) == 1:
                self._by_address[address] = next(iter(held))
        elif held == key:
            del self._by_address[address]

    def of(self, address: str) -> Iterator[K]:
        """The keys probing ``address``, copied: the caller may add and remove while it iterates."""
        held = self._by_address.get(address)
        if held is None:
            return iter(())
        return iter(list(held)) if isinstance(held, dict) else iter((held,))

    def __len__(self) -> int:
        return len(self._by_address)


class SweepMemo:
    """Which way each host probe (address, port, probe) was last swept: one sweep per change of the
    host, not one per sibling that transitions after it (1,000 siblings would each scan 1,000). Any
    answer against that direction (the host came back, or never went) forgets it, so the host's next
    change sweeps again, however soon."""

    __slots__ = ("_pruned", "_swept")

    RETAIN = 60.0  # seconds a sweep is remembered at most

    def __init__(self) -> None:
        self._swept: dict[Hashable, tuple[bool, float]] = {}
        self._pruned = 0.0

    def __len__(self) -> int:
        return len(self._swept)

    def _prune(self, now: float) -> None:
        """Drop entries older than RETAIN, at most once a second (an empty memo costs the scheduler
        nothing per result)."""
        if now - self._pruned > 1.0:
            self._swept = {h: v for h, v in self._swept.items() if now - v[1] < self.RETAIN}
            self._pruned = now

    def saw(self, host: Hashable, ok: bool, now: float) -> None:
        """A probe of ``host`` answered ``ok``: against the last sweep's direction, that sweep is over."""
        self._prune(now)
        last = self._swept.get(host)
        if last is not None and last[0] is not ok:
            del self._swept[host]

    def first(self, host: Hashable, verdict: bool, now: float) -> bool:
        """True (and remembered) unless ``host`` was swept towards ``verdict`` under RETAIN seconds ago
        and no answer since said otherwise."""
        self._prune(now)
        last = self._swept.get(host)
        if last is not None and last[0] is verdict and now - last[1] < self.RETAIN:
            return False
        self._swept[host] = (verdict, now)
        return True
