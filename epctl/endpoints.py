"""The v1 Endpoints of a managed Service, written the way Kubernetes' endpoints controller writes them. Pure.

Why epctl writes Endpoints at all (it publishes EndpointSlices): every cluster runs the
EndpointSliceMirroring controller, which turns the Endpoints object of any selector-less Service into
slices of its own. An Endpoints object left behind by the tools epctl replaces (they all wrote
Endpoints) would keep its stale hosts routable next to our slices, since kube-proxy merges every slice
of a Service. So epctl owns the Endpoints of the Services it manages, labelled
``endpointslice.kubernetes.io/skip-mirror: "true"`` (the mirroring controller then deletes what it
mirrored), with ready endpoints in ``addresses`` and the rest in ``notReadyAddresses`` — which is also
what consumers that still read Endpoints (Prometheus ``role: endpoints``, older ingress controllers)
need to see.

Layout follows ``RepackSubsets``: ports whose (address, ready) sets are equal share one subset.
Over 1,000 addresses the object is truncated as the endpoints controller does it (ready addresses
first, each subset keeping its proportional share) and annotated
``endpoints.kubernetes.io/over-capacity: truncated``; unlike that controller's rounding, no subset
is ever left empty, since kube-apiserver rejects a subset without addresses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from epctl.jsonkey import json_key
from epctl.state import Endpoint, PortGroup, SlicePort, Target, front_end_labels

Obj = dict[str, Any]

SKIP_MIRROR_LABEL = "endpointslice.kubernetes.io/skip-mirror"
MANAGED_LABEL = "app.kubernetes.io/managed-by"  # the same label epctl puts on the Services it owns
MANAGED_VALUE = "epctl"
OVER_CAPACITY = "endpoints.kubernetes.io/over-capacity"
MAX_CAPACITY = 1000
IP_FAMILIES = ("IPv4", "IPv6")


def _address(endpoint: Endpoint) -> Obj:
    out: Obj = {"ip": endpoint.address}
    if endpoint.hostname:
        out["hostname"] = endpoint.hostname
    if endpoint.node_name:
        out["nodeName"] = endpoint.node_name
    if endpoint.target_ref:
        out["targetRef"] = json.loads(endpoint.target_ref)
    return out


def _port(port: SlicePort) -> Obj:
    out: Obj = {"port": port.port, "protocol": port.protocol}
    if port.name:
        out["name"] = port.name
    return out


def desired_subsets(groups: Iterable[PortGroup]) -> tuple[list[Obj], bool]:
    """(subsets, truncated) for these port groups."""
    per_port: dict[SlicePort, dict[str, Endpoint]] = {}
    for group in groups:
        if group.address_type not in IP_FAMILIES:
            continue  # an Endpoints address is an IP: FQDN endpoints live in slices only
        for port in group.ports:
            per_port.setdefault(port, {}).update(group.endpoints)
    shared: dict[tuple[tuple[str, bool], ...], list[SlicePort]] = {}
    for port, endpoints in per_port.items():
        if endpoints:
            shared.setdefault(tuple(sorted((a, e.ready) for a, e in endpoints.items())), []).append(port)
    subsets = []
    for ports in shared.values():
        endpoints = per_port[ports[0]]
        subsets.append({
            "addresses": [_address(endpoints[a]) for a in sorted(endpoints) if endpoints[a].ready],
            "notReadyAddresses": [_address(endpoints[a]) for a in sorted(endpoints) if not endpoints[a].ready],
            "ports": [_port(p) for p in sorted(ports)]})
    subsets.sort(key=lambda s: json.dumps(s["ports"], sort_keys=True))
    truncated = _truncate(subsets)
    return [{k: v for k, v in s.items() if v} for s in subsets], truncated


def _truncate(subsets: list[Obj]) -> bool:
    """Keep at most MAX_CAPACITY addresses: ready ones first, each subset its proportional share.

    As the endpoints controller's ``truncateEndpoints``, with one difference: no subset is ever
    left with neither ``addresses`` nor ``notReadyAddresses`` (kube-apiserver's ValidateEndpoints
    rejects that, and the whole write with it). A subset whose share rounds to nothing, or that had
    only not-ready addresses when ready ones are being cut, keeps one address, so its ports stay
    listed; the other subsets give up what that costs, largest share first.
    """
    ready = sum(len(s["addresses"]) for s in subsets)
    not_ready = sum(len(s["notReadyAddresses"]) for s in subsets)
    if ready + not_ready <= MAX_CAPACITY:
        return False
    cut_ready = ready > MAX_CAPACITY
    cut = "addresses" if cut_ready else "notReadyAddresses"
    room = MAX_CAPACITY if cut_ready else MAX_CAPACITY - ready
    total = ready if cut_ready else not_ready
    keep: list[dict[str, int]] = []  # per subset: field -> how many to keep
    for subset in subsets:
        have = len(subset[cut])
        share = min(have, math.ceil(have / total * room))
        kept = {"addresses": share, "notReadyAddresses": 0} if cut_ready else {
            "addresses": len(subset["addresses"]), "notReadyAddresses": share}
        if not any(kept.values()):  # never an empty subset
            kept["addresses" if subset["addresses"] else "notReadyAddresses"] = 1
        keep.append(kept)
    excess = sum(sum(k.values()) for k in keep) - MAX_CAPACITY
    while excess > 0:
        # take one from the largest count that can spare it (the field being cut first), keeping
        # every subset non-empty; stop if none can (more subsets than MAX_CAPACITY: still valid)
        candidates = [(name != cut, -k[name], i, name) for i, k in enumerate(keep) for name in k
                      if k[name] > 0 and sum(k.values()) > 1]
        if not candidates:
            break
        _, _, i, name = min(candidates)
        keep[i][name] -= 1
        excess -= 1
    for subset, kept in zip(subsets, keep, strict=True):
        for name, count in kept.items():
            subset[name] = subset[name][:count]
    return True


def desired_endpoints(target: Target) -> Obj:
    """The whole Endpoints object epctl wants for ``target`` (metadata as far as it is ours)."""
    subsets, truncated = desired_subsets(target.groups.values())
    metadata: Obj = {"name": target.name, "namespace": target.namespace,
                     "labels": {SKIP_MIRROR_LABEL: "true", MANAGED_LABEL: MANAGED_VALUE, **front_end_labels(target)}}
    if truncated:
        metadata["annotations"] = {OVER_CAPACITY: "truncated"}
    if target.owner:
        metadata["ownerReferences"] = [target.owner]
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": metadata, "subsets": subsets}


def _normal_subsets(subsets: Any) -> list[Obj]:
    """Subsets in one canonical order, empty lists and empty port names dropped, for comparison."""
    out = []
    for subset in subsets or []:
        norm: Obj = {}
        for field in ("addresses", "notReadyAddresses"):
            items = sorted(subset.get(field) or [], key=json_key)
            if items:
                norm[field] = items
        norm["ports"] = sorted(({k: v for k, v in p.items() if v not in ("", None)} for p in subset.get("ports") or []),
                               key=json_key)
        out.append(norm)
    return sorted(out, key=json_key)


def _readiness(subsets: Any) -> list[tuple[str, str]]:
    """(field, ip) of every address, sorted: differs whenever a host's readiness or the host set does,
    and is far cheaper than :func:`_normal_subsets` (what a flip changes, it sees first)."""
    return sorted((field, address.get("ip", "")) for subset in subsets or []
                  for field in ("addresses", "notReadyAddresses") for address in subset.get(field) or [])


def _same_subsets(observed: Any, desired: Any) -> bool:
    return _readiness(observed) == _readiness(desired) and _normal_subsets(observed) == _normal_subsets(desired)


def endpoints_update(observed: Obj, desired: Obj) -> Obj | None:
    """The object to PUT so that ``observed`` becomes what we want, or None if it already is.

    Labels and annotations that others set stay; ours are set; the over-capacity annotation comes and
    goes with truncation; the ownerReferences become ours (adopting a hand-made or left-over object).
    """
    meta, want = observed.get("metadata") or {}, desired["metadata"]
    labels = {**(meta.get("labels") or {}), **want["labels"]}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != OVER_CAPACITY}
    annotations.update(want.get("annotations") or {})
    owners = want.get("ownerReferences") or []
    if (labels == (meta.get("labels") or {}) and annotations == (meta.get("annotations") or {})
            and (meta.get("ownerReferences") or []) == owners
            and _same_subsets(observed.get("subsets"), desired["subsets"])):
        return None
    metadata = {**meta, "labels": labels, "annotations": annotations, "ownerReferences": owners}
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": metadata, "subsets": desired["subsets"]}


def is_ours(obj: Obj | None) -> bool:
    return ((obj or {}).get("metadata", {}).get("labels") or {}).get(MANAGED_LABEL) == MANAGED_VALUE
