"""What a database host's role answer means for readiness, and who may be *the* primary. Pure.

The drivers (db_postgres, db_mysql, db_redis) turn a server's answer into a :class:`RoleAnswer`;
:func:`judge` decides one host against the probe's ``expect`` and lag bound; :func:`arbitrate`
decides among the hosts of one port that all claim to be primary (docs/design.md, "Database role
probes"): a Service named for the primary must never send writes to two hosts that disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from epctl.api.spec import Expect

PRIMARY, REPLICA = "primary", "replica"


@dataclass(frozen=True, slots=True)
class RoleAnswer:
    role: str  # PRIMARY or REPLICA
    generation: int = 0  # primary: an order among primaries (PostgreSQL timeline); 0 = the engine has none
    lag: float | None = None  # replica: seconds behind its primary; None = unknown (not replicating)
    link: str = ""  # replica: "" while replicating, else why not (short, secret-free)


def judge(expect: Expect, max_lag: int | None, answer: RoleAnswer) -> tuple[bool, str]:
    """(ready, reason) for one host. A replica that is not replicating has an unknown lag: it fails a
    lag bound but, without one, is still a replica (it serves reads, as the engines do by default)."""
    if answer.role == PRIMARY:
        said = f"primary (timeline {answer.generation})" if answer.generation else "primary"
        if expect is Expect.REPLICA:
            return False, f"is {said}, expected replica"
        return True, said
    said = "replica" + (f" ({answer.link})" if answer.link else "")
    if expect is Expect.PRIMARY:
        return False, f"is {said}, expected primary"
    if max_lag is not None:
        if answer.lag is None:
            return False, f"{said}: replication lag unknown, bound is {max_lag}s"
        if answer.lag > max_lag:
            return False, f"{said}: {answer.lag:.0f}s behind, bound is {max_lag}s"
    if answer.lag is not None and not answer.link:
        return True, f"replica, {answer.lag:.0f}s behind"
    return True, said


def arbitrate(claims: Mapping[str, int]) -> dict[str, str]:
    """address -> why it may not be published as primary, for the ready hosts of one port that claim
    primary (``claims``: address -> generation).

    One claimant: it is the primary. Several: if exactly one has the highest generation (PostgreSQL:
    a promoted standby starts a new, higher timeline; the old primary stays on its old one) it wins
    and the others are vetoed. Otherwise nothing tells which one holds the writes that count (Redis
    and MySQL have no such order; two PostgreSQL clusters may share a timeline number), so *none* is
    published: writes fail until an operator or the failover tool fences one, rather than
    splitting between two primaries that will never agree again."""
    if len(claims) < 2:
        return {}
    top = max(claims.values())
    winners = [a for a, g in claims.items() if g == top]
    if len(winners) == 1 and top > 0:
        return {a: f"not published: {winners[0]} claims primary on a newer timeline ({top} > {g})"
                for a, g in claims.items() if a != winners[0]}
    others = len(claims) - 1
    return {a: f"not published: {others} other host{'s' if others > 1 else ''} also claim{'' if others > 1 else 's'} "
               "primary (split brain; none is published until one steps down)" for a in claims}
