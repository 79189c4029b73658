"""Which endpoints a node's kube-proxy sends new connections to: its rule, for tests. Pure.

Written from kube-proxy's source (pkg/proxy/topology.go ``CategorizeEndpoints`` with the
``canUseTopology`` gate of 1.24-1.30), for a Service with the Cluster traffic policy:

- The Service must ask: annotation ``service.kubernetes.io/topology-mode`` (read first) or
  ``service.kubernetes.io/topology-aware-hints`` set and not ``disabled``/``Disabled``, or
  ``spec.trafficDistribution`` PreferClose/PreferSameZone. (kube-proxy 1.31+ reads hints whenever
  they are present; epctl writes them only when asked, so both agree.)
- The node needs a ``topology.kubernetes.io/zone`` label. Only ready endpoints count: if any ready
  endpoint has no zone hint, or none is hinted for the node's zone, topology is ignored.
- Usable: the ready endpoints (hinted for the zone when topology applies); when there is none, the
  serving and terminating ones (ProxyTerminatingEndpoints, 1.26+).

Endpoints are merged across the Service's slices that carry the port, by address.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Obj = dict[str, Any]
ZONE_LABEL = "topology.kubernetes.io/zone"


def _asks(service: Obj) -> bool:
    annotations = (service.get("metadata") or {}).get("annotations") or {}
    value = annotations.get("service.kubernetes.io/topology-mode") or annotations.get(
        "service.kubernetes.io/topology-aware-hints") or ""
    if value and value not in ("disabled", "Disabled"):
        return True
    return (service.get("spec") or {}).get("trafficDistribution") in ("PreferClose", "PreferSameZone")


def _endpoints(slices: Iterable[Obj], port: str) -> list[Obj]:
    merged: dict[str, Obj] = {}
    for obj in slices:
        if not any((p.get("name") or "") == port for p in obj.get("ports") or []):
            continue
        for endpoint in obj.get("endpoints") or []:
            for address in endpoint.get("addresses") or []:
                merged.setdefault(address, endpoint)
    return [{**e, "address": a} for a, e in sorted(merged.items())]


def _condition(endpoint: Obj, name: str) -> bool:
    value = (endpoint.get("conditions") or {}).get(name)
    if name == "ready":
        return value is not False  # nil is ready (API semantics)
    if name == "serving":
        return value if value is not None else _condition(endpoint, "ready")
    return bool(value)


def _zone_hints(endpoint: Obj) -> set[str]:
    return {z.get("name", "") for z in ((endpoint.get("hints") or {}).get("forZones") or [])}


def routes(service: Obj, slices: Iterable[Obj], node: Obj, port: str = "") -> set[str]:
    """The addresses ``node``'s kube-proxy would send new connections for ``port`` of ``service`` to."""
    endpoints = _endpoints(slices, port)
    zone = ((node.get("metadata") or {}).get("labels") or {}).get(ZONE_LABEL, "")
    ready = [e for e in endpoints if _condition(e, "ready")]
    topology = bool(_asks(service) and zone and ready and all(_zone_hints(e) for e in ready)
                    and any(zone in _zone_hints(e) for e in ready))
    usable = {e["address"] for e in ready if not topology or zone in _zone_hints(e)}
    if not usable:
        usable = {e["address"] for e in endpoints if _condition(e, "serving") and _condition(e, "terminating")}
    return usable
