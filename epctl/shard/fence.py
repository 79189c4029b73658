"""The write fence: the one question every writer asks at the moment it sends a write.

Ownership (``Holdings``) says which targets this replica manages; the fence says whether a write for
one of them may *leave the process now*. The two differ in time: a member owns a target until it
learns otherwise (a listing, a failed renewal, a deleted Lease), but the others may take that target
``lease_duration`` after they last saw this member renew. The member's renewals count from when the
attempt started, so it is safe to send only until ``renew_deadline`` after the last successful
renewal started: after that instant no write leaves, whatever it was waiting on — a queued target, a
planned slice update, a retry, a status patch, an Event, a Service. The client asks the fence again
after waiting for a pooled connection (the fence's remaining time bounds that wait), so a write
cannot slip out late from a queue either.

Why this is enough for "never two writers": another member takes a target only when it has seen
this member's Lease expire (not renewed for ``lease_duration`` by its own clock, which starts no
earlier than our renewal started), or seen it released after our last write. Deleted or hand-edited
member Leases count as expiring, not as released (``epctl.shard.ring.Members``). So every write we
send is sent before anyone else may start; the ``lease_duration - renew_deadline`` margin covers the
time a sent write spends on the wire.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

TargetKey = tuple[str, str]


class Fence:
    """``remaining(key)``: seconds this replica may still *start* a write for ``key`` (<= 0: none).

    ``holds`` is the ownership predicate (a shard member's holdings, the leader's all-or-nothing);
    ``valid_until`` the monotonic instant our claim lapses unless renewed (infinite without any
    election). Both are read at every call: the fence keeps no state of its own to go stale."""

    def __init__(self, holds: Callable[[TargetKey], bool] | None = None,
                 valid_until: Callable[[], float] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._holds = holds or (lambda _key: True)
        self._valid_until = valid_until or (lambda: math.inf)
        self._clock = clock
        self.refused = 0  # writes the fence stopped (each one a write that would have been late)

    def remaining(self, key: TargetKey) -> float:
        if not self._holds(key):
            return 0.0
        return self._valid_until() - self._clock()

    def for_key(self, key: TargetKey) -> Callable[[], float]:
        """The check for one target, as the client's ``fence`` argument takes it."""
        def left() -> float:
            value = self.remaining(key)
            if value <= 0:
                self.refused += 1
            return value
        return left


UNFENCED = Fence()
