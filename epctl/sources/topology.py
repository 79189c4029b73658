"""Topology hints in the controller: Nodes in, ``hints.forZones`` on the way to the API, verdicts out.

The writer calls :meth:`TopologySource.decorate` with a target's port groups just before it plans
the slices, so hints always follow the readiness being written (a zone's last ready endpoint
failing drops the hints in the same write). The computation is :mod:`epctl.topology` (pure).

- Nodes are watched (list/watch, cluster-scoped); a change in the zones' CPU shares re-writes every
  target whose Service asks for hints.
- A Service's annotations or ``spec.trafficDistribution`` changing re-writes that target.
- Mirrored targets are left as their source slices say (their hints are copied, not computed).
- When the verdict of a target changes: an Event on the Service, as the EndpointSlice controller
  records one (``TopologyAwareHintsEnabled`` / ``TopologyAwareHintsDisabled`` with the reason), and
  ``on_verdict`` (the ClusterEndpoint source writes its ``TopologyHints`` condition).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from epctl.kube.client import Resource
from epctl.kube.events import EventRecorder
from epctl.kube.informer import Informer, InformerEvent
from epctl.state import DesiredState, PortGroup, TargetKey
from epctl.topology import Verdict, requested_mode, with_hints, zone_ratios

log = logging.getLogger(__name__)
Obj = dict[str, Any]
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
MIRROR_SOURCE = "mirror"  # epctl.sources.mirror.SOURCE: its hints are copied from the source slices


class TopologySource:
    def __init__(self, state: DesiredState, nodes: Informer, services: Informer, events: EventRecorder,
                 notify: Callable[[TargetKey], None]) -> None:
        self.state, self.nodes, self.services, self.events = state, nodes, services, events
        self.notify = notify  # wakes the writer for a target
        self.on_verdict: Callable[[TargetKey], None] = lambda _key: None
        self.verdicts: dict[TargetKey, Verdict] = {}
        self._ratios: dict[str, float] | None = None
        self._problem = "Nodes not listed yet"
        self._modes: dict[TargetKey, str | None] = {}
        nodes.subscribe(self._on_node)
        nodes.on_synced(self._recount)
        services.subscribe(self._on_service)

    def verdict(self, key: TargetKey) -> Verdict | None:
        """The last verdict for ``key``, None when its Service does not ask for hints."""
        verdict = self.verdicts.get(key)
        return verdict if verdict is not None and verdict.mode is not None else None

    def decorate(self, key: TargetKey, groups: list[PortGroup]) -> list[PortGroup]:
        target = self.state.get(key)
        if target is None or target.source == MIRROR_SOURCE:
            return groups
        service = self.services.peek(*key)
        mode = requested_mode(service)
        self._modes[key] = mode
        out, verdict = with_hints(groups, mode, self._ratios, self._problem)
        previous = self.verdicts.get(key)
        if verdict != previous:
            self.verdicts[key] = verdict
            self._announce(key, service, previous, verdict)
        return out

    def _announce(self, key: TargetKey, service: Obj | None, previous: Verdict | None, verdict: Verdict) -> None:
        if service is not None and verdict.mode is not None:
            if verdict.enabled and not (previous and previous.enabled):
                self.events.record(service, "Normal", "TopologyAwareHintsEnabled",
                                   f"topology-aware hints enabled ({verdict.mode}), writing hints.forZones")
            elif not verdict.enabled and (previous is None or previous.enabled or previous.reason != verdict.reason):
                log.info("topology hints off", extra={"service": "/".join(key), "reason": verdict.reason,
                                                      "detail": verdict.message})
                self.events.record(service, "Warning", "TopologyAwareHintsDisabled",
                                   f"{verdict.reason}: {verdict.message}, removing hints")
        elif service is not None and previous is not None and previous.enabled:
            self.events.record(service, "Normal", "TopologyAwareHintsDisabled",
                               "the Service no longer asks for topology-aware routing, removing hints")
        self.on_verdict(key)

    def _on_node(self, event: InformerEvent) -> None:
        if not self.nodes.relisting:
            self._recount()

    def _recount(self) -> None:
        ratios, problem = zone_ratios(self.nodes.cache.values())
        if (ratios, problem) == (self._ratios, self._problem):
            return
        self._ratios, self._problem = ratios, problem
        for key, mode in list(self._modes.items()):
            if mode is not None and self.state.get(key) is not None:
                self.notify(key)

    def _on_service(self, event: InformerEvent) -> None:
        meta = event.obj.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if self.state.get(key) is None:
            return
        mode = None if event.type == "DELETED" else requested_mode(event.obj)
        if mode != self._modes.get(key) or (mode is None and self.verdict(key) is not None):
            self._modes[key] = mode
            self.notify(key)
