"""What epctl published that no front-end claims any more: the sweep's decision, pure.

The writer deletes what it was told to stop publishing while it ran. What changed while *no* process
held a target — the controller down for an upgrade, a shard handover's gap — nobody was told about:
a mirror annotation removed, a ClusterEndpoint deleted while the garbage collector is slow (or its
objects left behind by a cascade that never ran). Such slices and Endpoints keep routing to what they
held. So at start and on every acquisition the controller asks, for every object labelled as ours
whose target it holds and no front-end of this process claims:

- owned (as controller) by a ClusterEndpoint: orphaned when no ClusterEndpoint of that uid exists
  (one that exists but is invalid keeps what it published: bad input loses nothing);
- marked as a mirror's (``epctl.io/mirrored``): orphaned when its Service no longer asks to be
  mirrored (or is gone);
- anything else (``epctl manager``'s, made by an older version): left alone, since a manager may still
  serve it and no controller can tell.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from epctl.state import MIRRORED_LABEL, TargetKey

Obj = dict[str, Any]
CEP_GROUP = "epctl.io"


def _controller_ref(obj: Obj) -> Obj | None:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return next((r for r in refs if r.get("controller")), None)


def orphaned(objects: Iterable[tuple[TargetKey, Obj]], *, claimed: Callable[[TargetKey], bool],
             holds: Callable[[TargetKey], bool], clusterendpoint_uids: set[str],
             mirrored: Callable[[TargetKey], bool]) -> dict[TargetKey, Obj | None]:
    """The targets whose objects (``(target, object)`` pairs of our slices and Endpoints) nobody claims,
    each with the ClusterEndpoint ownerReference that names its missing owner (None: a mirror's).

    ``claimed``: a front-end of this process claims the target now; ``holds``: this process may write
    it; ``mirrored``: its Service asks to be mirrored. These are *candidates*: a cache may lag (the
    caller confirms each with a fresh read before anything is deleted)."""
    found: dict[TargetKey, Obj | None] = {}
    for key, obj in objects:
        if key in found or not holds(key) or claimed(key):
            continue
        ref = _controller_ref(obj)
        labels = obj.get("metadata", {}).get("labels") or {}
        if ref is not None and ref.get("kind") == "ClusterEndpoint" \
                and str(ref.get("apiVersion", "")).split("/")[0] == CEP_GROUP:
            if ref.get("uid") not in clusterendpoint_uids:
                found[key] = ref
        elif labels.get(MIRRORED_LABEL) == "true" and not mirrored(key):
            found[key] = None
    return found
