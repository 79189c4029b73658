"""Topology hints for external endpoints, as Kubernetes' EndpointSlice controller writes them. Pure.

Which Services ask (pkg/controller/endpointslice ``hintsEnabled`` and the trafficdist package):

- annotation ``service.kubernetes.io/topology-aware-hints`` (1.24-1.26; wins when both are set) or
  ``service.kubernetes.io/topology-mode`` (1.27+) equal to ``Auto``/``auto``: the topology cache's
  CPU-proportional allocation (:func:`auto_hints`);
- otherwise ``spec.trafficDistribution: PreferClose`` (1.30+; also PreferSameZone): every ready
  endpoint with a zone is hinted for its own zone (:func:`prefer_close_hints`), no safeguards: kube-proxy
  falls back to every endpoint in a zone none is hinted for.

The topology cache (staging/src/k8s.io/endpointslice/topologycache), applied to endpoints that are not
Pods: the zones that matter are those with Nodes (ready, not control-plane, each with a zone label and
allocatable CPU, else no hints at all), weighted by allocatable CPU; each zone gets at least
``ceil(share / 1.2)`` of the ready endpoints (the 20 % overload threshold). Every ready endpoint is
first hinted for its own zone, then surplus endpoints are handed to zones short of their share,
largest gaps first. An endpoint in a zone without Nodes is all surplus: no kube-proxy is there.

Safeguards (no hints, with the reason for the status condition and Event): too little Node
information or Nodes in one zone only; fewer ready endpoints than zones; a ready endpoint without a
zone; a zone with Nodes but no ready endpoint of its own (external hosts are where they are: another
zone's endpoints handed to it are cross-zone anyway, and it would send all its traffic to them); a
split that leaves a zone below its minimum (overload). Hints then drop the moment a zone loses its last
ready endpoint, and return when it has one again.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from epctl.state import Endpoint, PortGroup

Obj = dict[str, Any]
HINTS_ANNOTATION = "service.kubernetes.io/topology-aware-hints"
MODE_ANNOTATION = "service.kubernetes.io/topology-mode"
ZONE_LABEL = "topology.kubernetes.io/zone"
OVERLOAD_THRESHOLD = 0.2
EXCLUDED_NODE_LABELS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")
AUTO, PREFER_CLOSE = "Auto", "PreferClose"
CLOSE_DISTRIBUTIONS = ("PreferClose", "PreferSameZone")


@dataclass(frozen=True)
class Verdict:
    """What a Service's hints are: ``enabled``, or off with a one-word reason and a message."""

    mode: str | None  # AUTO, PREFER_CLOSE, None (not asked)
    enabled: bool
    reason: str
    message: str


def requested_mode(service: Obj | None) -> str | None:
    """AUTO, PREFER_CLOSE or None: what ``service`` asks for (the hints annotation wins)."""
    if service is None:
        return None
    annotations = (service.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(HINTS_ANNOTATION, annotations.get(MODE_ANNOTATION))
    if value is not None:
        return AUTO if value in ("Auto", "auto") else None
    if (service.get("spec") or {}).get("trafficDistribution") in CLOSE_DISTRIBUTIONS:
        return PREFER_CLOSE
    return None


_CPU = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[0-9]+)?$")
_SUFFIX = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18, "Ki": 2.0**10,
           "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60}


def cpu_millis(quantity: Any) -> int:
    """A resource.Quantity of CPU in millicores (0 when absent or unreadable), as MilliValue()."""
    match = _CPU.match(str(quantity).strip()) if quantity is not None else None
    if not match:
        return 0
    number, suffix = float(match.group(1)), match.group(2) or ""
    scale = 10.0 ** int(suffix[1:]) if suffix.startswith("e") else _SUFFIX.get(suffix, 1.0)
    return math.ceil(number * scale * 1000 - 1e-9)


def _node_ready(node: Obj) -> bool:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def zone_ratios(nodes: Iterable[Obj]) -> tuple[dict[str, float] | None, str]:
    """Zone -> share of the allocatable CPU of the ready worker Nodes (the topology cache's SetNodes),
    or (None, why not)."""
    cpu: dict[str, int] = {}
    for node in nodes:
        labels = (node.get("metadata") or {}).get("labels") or {}
        if any(label in labels for label in EXCLUDED_NODE_LABELS) or not _node_ready(node):
            continue
        zone = labels.get(ZONE_LABEL) or ""
        millis = cpu_millis(((node.get("status") or {}).get("allocatable") or {}).get("cpu"))
        if not zone or not millis:
            name = (node.get("metadata") or {}).get("name", "")
            return None, f"insufficient Node information: Node {name} has no {ZONE_LABEL} label or no " \
                         "allocatable CPU"
        cpu[zone] = cpu.get(zone, 0) + millis
    total = sum(cpu.values())
    if not total:
        return None, "insufficient Node information: no ready worker Node"
    if len(cpu) < 2:
        return None, f"Nodes ready in one zone only ({next(iter(cpu))})"
    return {zone: millis / total for zone, millis in sorted(cpu.items())}, ""


@dataclass
class _Allocation:
    minimum: int
    maximum: int
    desired: float


def _allocations(ratios: Mapping[str, float], ready: int) -> tuple[dict[str, _Allocation] | None, str]:
    if len(ratios) > ready:
        return None, f"insufficient number of endpoints ({ready} ready, {len(ratios)} zones)"
    out: dict[str, _Allocation] = {}
    for zone, ratio in ratios.items():
        desired = ratio * ready
        minimum = math.ceil(desired * (1 / (1 + OVERLOAD_THRESHOLD)))
        out[zone] = _Allocation(minimum, 0, max(desired, float(minimum)))
    total_minimum = sum(a.minimum for a in out.values())
    if total_minimum > ready:
        return None, f"the minimum allocation exceeds the overload threshold ({ready} ready, {len(ratios)} zones)"
    for allocation in out.values():
        allocation.maximum = allocation.minimum + ready - total_minimum
    return out, ""


def _most(values: dict[str, float]) -> tuple[str, float]:
    zone, most = "", 0.0
    for z in sorted(values):
        if values[z] > most:
            zone, most = z, values[z]
    return zone, most


def auto_hints(endpoints: Iterable[Endpoint], ratios: Mapping[str, float] | None,
               ratio_problem: str = "") -> tuple[dict[str, str] | None, str, str]:
    """address -> hinted zone for the ready endpoints, or (None, reason, message)."""
    ready = sorted((e for e in endpoints if e.ready), key=lambda e: e.address)
    if ratios is None:
        return None, "InsufficientNodeInfo", ratio_problem or "no Node information"
    missing = [e.address for e in ready if not e.zone]
    if missing:
        return None, "EndpointWithoutZone", f"endpoint {missing[0]} has no zone (spec.zones or discovery)"
    own: dict[str, int] = {}
    for endpoint in ready:
        own[str(endpoint.zone)] = own.get(str(endpoint.zone), 0) + 1
    empty = [zone for zone in ratios if not own.get(zone)]
    if empty:
        return None, "ZoneWithoutEndpoints", f"zone {empty[0]} has Nodes but no ready endpoint"
    allocations, problem = _allocations(ratios, len(ready))
    if allocations is None:
        return None, "InsufficientEndpoints", problem
    giving_desired = {z: float(n) - allocations[z].desired if z in allocations else float(n)
                      for z, n in own.items()}
    giving_desired = {z: v for z, v in giving_desired.items() if v > 0}
    receiving_desired = {z: a.desired - own.get(z, 0) for z, a in allocations.items()
                         if a.desired - own.get(z, 0) > 0}
    giving: dict[str, int] = {}
    receiving: dict[str, int] = {}
    while True:  # whole endpoints from the largest surplus to the largest gap (getGivingAndReceivingZones)
        give_zone, give = _most(giving_desired)
        take_zone, take = _most(receiving_desired)
        if not give_zone or not take_zone or (give < 1.0 and take < 1.0) or give < 0.5 or take < 0.5:
            break
        giving[give_zone] = giving.get(give_zone, 0) + 1
        giving_desired[give_zone] -= 1
        receiving[take_zone] = receiving.get(take_zone, 0) + 1
        receiving_desired[take_zone] -= 1
    hints = {e.address: str(e.zone) for e in ready}
    for endpoint in ready:  # redistributeHints: in order, each surplus endpoint to the first zone short
        zone = str(endpoint.zone)
        if giving.get(zone, 0) <= 0:
            continue
        for take_zone in sorted(receiving):
            if receiving[take_zone] > 0:
                hints[endpoint.address] = take_zone
                giving[zone] -= 1
                receiving[take_zone] -= 1
                break
    counts = {z: sum(1 for h in hints.values() if h == z) for z in allocations}
    for address in sorted(a for a, h in hints.items() if h not in allocations):
        # still hinted for a zone without Nodes (rounding left it): no kube-proxy would ever use it
        zone = max(sorted(allocations), key=lambda z: allocations[z].desired - counts[z])
        hints[address] = zone
        counts[zone] += 1
    short = [z for z, a in allocations.items() if not a.minimum <= counts[z] <= a.maximum]
    if short:
        return None, "Overloaded", f"the split would overload zone {short[0]} ({len(ready)} ready endpoints)"
    return hints, "", ""


def prefer_close_hints(endpoints: Iterable[Endpoint]) -> dict[str, str]:
    """trafficDistribution PreferClose: each ready endpoint with a zone is hinted for that zone."""
    return {e.address: e.zone for e in endpoints if e.ready and e.zone}


def trim_node(node: Obj) -> None:
    """Keep of a Node only what :func:`zone_ratios` reads (labels, allocatable CPU, the Ready condition):
    its images, addresses and capacity lists are most of its size, times every Node of the cluster."""
    meta = node.get("metadata") or {}
    node["metadata"] = {k: meta[k] for k in ("name", "uid", "resourceVersion", "labels") if k in meta}
    status = node.get("status") or {}
    node["status"] = {"allocatable": {"cpu": (status.get("allocatable") or {}).get("cpu")},
                      "conditions": [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]}
    node.pop("spec", None)


def _hinted(endpoint: Endpoint, zone: str | None) -> Endpoint:
    hints = json.dumps({"forZones": [{"name": zone}]}) if zone else None
    return endpoint if endpoint.hints == hints else replace(endpoint, hints=hints)


def with_hints(groups: list[PortGroup], mode: str | None, ratios: Mapping[str, float] | None,
               ratio_problem: str = "") -> tuple[list[PortGroup], Verdict]:
    """``groups`` with ``hints.forZones`` set (or cleared) on every endpoint, and the verdict. Each port
    group is decided on its own, as kube-proxy routes each Service port on its own; the verdict is
    the first group's problem, if any."""
    if mode is None:
        if not any(e.hints for g in groups for e in g.endpoints.values()):  # the common case: nothing to do
            return groups, Verdict(None, False, "NotRequested", "the Service does not ask for topology-aware routing")
        return ([replace(g, endpoints={a: _hinted(e, None) for a, e in g.endpoints.items()}) for g in groups],
                Verdict(None, False, "NotRequested", "the Service does not ask for topology-aware routing"))
    out: list[PortGroup] = []
    verdict = Verdict(mode, True, "HintsSet", "hints.forZones written for every ready endpoint")
    for group in groups:
        if mode == PREFER_CLOSE:
            hints: dict[str, str] | None = prefer_close_hints(group.endpoints.values())
            reason = message = ""
        else:
            hints, reason, message = auto_hints(group.endpoints.values(), ratios, ratio_problem)
        if hints is None and verdict.enabled:
            verdict = Verdict(mode, False, reason, message)
        out.append(replace(group, endpoints={a: _hinted(e, (hints or {}).get(a)) for a, e in group.endpoints.items()}))
    return out, verdict
