"""EndpointSlice planning: (desired port groups, observed slices) -> minimal writes. Pure.

Follows the Kubernetes EndpointSlice reconciler (pkg/controller/endpointslice/reconciler.go):

1. Observed slices whose address type and ports match no desired group are deleted.
2. Within a group, every endpoint stays in the slice it is already in; changed conditions are
   updated in place; endpoints no longer desired are dropped; an address found twice is kept once.
3. New endpoints go first into slices that are being updated anyway (fullest first), then into
   new slices of ``max_per_slice``; a remainder smaller than a slice goes into the fullest
   existing slice with room rather than a new one.
4. Slices left empty are deleted. Unchanged slices are not touched: a no-op costs zero writes and
   a single condition flip costs one update of one slice.

Names are deterministic, ``<service>-<group hash>-<n>``, so a crash between create and observe
cannot produce a duplicate: the retry hits AlreadyExists, re-reads and re-plans.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from epctl.jsonkey import json_key
from epctl.state import Endpoint, PortGroup, SlicePort

Obj = dict[str, Any]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
# the first design note said "epctl.io/controller", but "/" is not allowed in a label value (the API server
# answers 422); Kubernetes' own controllers use DNS-style values such as endpointslice-controller.k8s.io.
MANAGED_BY = "controller.epctl.io"
GROUP_LABEL = "epctl.io/port-group"
MAX_PER_SLICE_LIMIT = 1000
_ENDPOINT_FIELDS = ("addresses", "conditions", "hostname", "nodeName", "zone", "hints", "targetRef")


@dataclass
class Plan:
    creates: list[Obj] = field(default_factory=list)
    updates: list[Obj] = field(default_factory=list)
    deletes: list[Obj] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.creates or self.updates or self.deletes)

    @property
    def writes(self) -> int:
        return len(self.creates) + len(self.updates) + len(self.deletes)


def group_hash(group: PortGroup) -> str:
    return _shape_hash(group.address_type, group.ports)


@functools.lru_cache(maxsize=4096)
def _shape_hash(address_type: str, ports: tuple[SlicePort, ...]) -> str:
    """Memoised: every plan of every write hashes its groups, and a cluster has few distinct shapes."""
    shape = json.dumps([address_type, [p.to_api() for p in ports]], sort_keys=True)
    return hashlib.sha256(shape.encode()).hexdigest()[:10]


def _shape(obj: Obj) -> tuple[str, list[Obj]]:
    ports = sorted(({"name": p.get("name", ""), "port": p.get("port"), "protocol": p.get("protocol", "TCP")}
                    for p in obj.get("ports") or []), key=json_key)
    return obj.get("addressType", ""), ports


def normalize_endpoint(endpoint: Obj) -> Obj:
    """The managed fields of an endpoint, with conditions spelled out the way we write them."""
    out = {k: endpoint[k] for k in _ENDPOINT_FIELDS if endpoint.get(k) is not None}
    conditions = endpoint.get("conditions") or {}
    out["conditions"] = {"ready": conditions.get("ready"), "serving": conditions.get("serving"),
                         "terminating": conditions.get("terminating")}
    return out


def slice_labels(service: str, group: PortGroup) -> dict[str, str]:
    return {SERVICE_NAME_LABEL: service, MANAGED_BY_LABEL: MANAGED_BY, GROUP_LABEL: group_hash(group)}


@dataclass
class _Work:
    obj: Obj
    endpoints: list[Obj]
    changed: bool


def plan_slices(namespace: str, service: str, groups: list[PortGroup], observed: list[Obj], *,
                max_per_slice: int = 100, owner_references: list[Obj] | None = None,
                extra_labels: dict[str, str] | None = None) -> Plan:
    """The writes that turn ``observed`` (our slices of this Service) into ``groups``."""
    if not 1 <= max_per_slice <= MAX_PER_SLICE_LIMIT:
        raise ValueError(f"max_per_slice must be between 1 and {MAX_PER_SLICE_LIMIT}")
    plan = Plan()
    owners = owner_references or []
    wanted = {group_hash(g): g for g in groups if g.endpoints}
    by_group: dict[str, list[Obj]] = {}
    for obj in sorted(observed, key=lambda o: o["metadata"]["name"]):
        digest = (obj["metadata"].get("labels") or {}).get(GROUP_LABEL, "")
        group = wanted.get(digest)
        if group is None or _shape(obj) != (group.address_type, sorted(
                (p.to_api() for p in group.ports), key=json_key)):
            plan.deletes.append(obj)
        else:
            by_group.setdefault(digest, []).append(obj)
    taken_names = {o["metadata"]["name"] for o in observed}
    for digest, group in wanted.items():
        _plan_group(plan, namespace, service, digest, group, by_group.get(digest, []), max_per_slice, owners,
                    taken_names, extra_labels or {})
    return plan


def _plan_group(plan: Plan, namespace: str, service: str, digest: str, group: PortGroup, slices: list[Obj],
                max_per_slice: int, owners: list[Obj], taken_names: set[str], extra_labels: dict[str, str]) -> None:
    want: dict[str, Endpoint] = group.endpoints
    labels = {**slice_labels(service, group), **extra_labels}
    ports = [p.to_api() for p in group.ports]
    placed: set[str] = set()
    work: list[_Work] = []
    for obj in slices:
        kept: list[Obj] = []
        changed = False
        for endpoint in obj.get("endpoints") or []:
            address = (endpoint.get("addresses") or [""])[0]
            if address in want and address not in placed and len(kept) < max_per_slice:
                desired = want[address].to_api()
                changed |= normalize_endpoint(endpoint) != normalize_endpoint(desired)
                kept.append(desired)
                placed.add(address)
            else:
                changed = True
        meta = obj["metadata"]
        if (any((meta.get("labels") or {}).get(k) != v for k, v in labels.items())
                or (meta.get("ownerReferences") or []) != owners or obj.get("ports") != ports):
            changed = True
        work.append(_Work(obj, kept, changed))
    remaining = [want[a].to_api() for a in sorted(want) if a not in placed]
    for item in sorted((w for w in work if w.changed), key=lambda w: -len(w.endpoints)):
        room = max_per_slice - len(item.endpoints)
        if room > 0 and remaining:
            item.endpoints += remaining[:room]
            remaining = remaining[room:]
    new_slices: list[list[Obj]] = []
    while len(remaining) >= max_per_slice:
        new_slices.append(remaining[:max_per_slice])
        remaining = remaining[max_per_slice:]
    if remaining:
        fits = [w for w in work if not w.changed and w.endpoints
                and max_per_slice - len(w.endpoints) >= len(remaining)]
        if fits:
            target = max(fits, key=lambda w: len(w.endpoints))
            target.endpoints += remaining
            target.changed = True
        else:
            new_slices.append(remaining)
    for item in work:
        if not item.changed:
            continue
        if not item.endpoints:
            plan.deletes.append(item.obj)
            continue
        meta = item.obj["metadata"]
        plan.updates.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {**meta, "labels": {**(meta.get("labels") or {}), **labels}, "ownerReferences": owners},
            "addressType": group.address_type, "ports": ports, "endpoints": item.endpoints})
    n = 0
    for endpoints in new_slices:
        while f"{service}-{digest}-{n}" in taken_names:
            n += 1
        name = f"{service}-{digest}-{n}"
        taken_names.add(name)
        metadata: Obj = {"name": name, "namespace": namespace, "labels": labels}
        if owners:
            metadata["ownerReferences"] = owners
        plan.creates.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": metadata,
                             "addressType": group.address_type, "ports": ports, "endpoints": endpoints})


def apply_plan(observed: list[Obj], plan: Plan) -> list[Obj]:
    """What the slices look like after ``plan`` succeeds (used by tests and the writer's own view)."""
    doomed = {o["metadata"]["name"] for o in plan.deletes}
    updated = {o["metadata"]["name"]: o for o in plan.updates}
    result = [updated.get(o["metadata"]["name"], o) for o in observed if o["metadata"]["name"] not in doomed]
    return result + list(plan.creates)


def service_index(namespace: str, service: str) -> str:
    """The slice informer's index value for a Service's slices (see :func:`service_of_slice`)."""
    return f"{namespace}/{service}"


def service_of_slice(obj: Obj) -> str | None:
    """The index value of the Service an EndpointSlice belongs to (its service-name label), for the
    slice informer's index."""
    meta = obj.get("metadata") or {}
    service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    return service_index(meta.get("namespace", ""), service) if service else None
