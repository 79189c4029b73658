"""DesiredState: what every Service epctl manages should look like. Pure: no I/O.

Producers (the ClusterEndpoint source and the prober's transitions, later mirroring and OpenStack)
replace a target's desired state or flip one endpoint's readiness. Every change that alters
something marks the target dirty and calls ``on_dirty``, which wakes the writer. A change that
alters nothing marks nothing: the writer is never woken for a no-op.

A target is one Service (namespace, name). It holds the Service's desired ports (when epctl owns
the Service itself) and *port groups*: endpoints that share an address type and a port list and so
can share EndpointSlices. A ClusterEndpoint gets one group per (port, address family), because
readiness is probed per port and a slice carries one readiness per endpoint.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

log = logging.getLogger(__name__)

Obj = dict[str, Any]
TargetKey = tuple[str, str]  # (namespace, service name)


@dataclass(frozen=True, order=True)
class SlicePort:
    """A port as EndpointSlices carry it: the Service port's name, the hosts' port number."""

    name: str
    port: int
    protocol: str = "TCP"

    def to_api(self) -> Obj:
        return {"name": self.name, "port": self.port, "protocol": self.protocol}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One address in a slice with its conditions (and, for mirrored endpoints, topology)."""

    address: str
    ready: bool
    serving: bool
    terminating: bool = False
    hostname: str | None = None
    node_name: str | None = None
    zone: str | None = None
    hints: str | None = None  # JSON text, so the dataclass stays hashable and comparable
    target_ref: str | None = None  # JSON text

    def to_api(self) -> Obj:
        out: Obj = {"addresses": [self.address],
                    "conditions": {"ready": self.ready, "serving": self.serving, "terminating": self.terminating}}
        if self.hostname is not None:
            out["hostname"] = self.hostname
        if self.node_name is not None:
            out["nodeName"] = self.node_name
        if self.zone is not None:
            out["zone"] = self.zone
        if self.hints is not None:
            out["hints"] = json.loads(self.hints)
        if self.target_ref is not None:
            out["targetRef"] = json.loads(self.target_ref)
        return out


@dataclass(frozen=True)
class PortGroup:
    """Endpoints that can share slices: one address type, one port list."""

    address_type: str
    ports: tuple[SlicePort, ...]
    endpoints: dict[str, Endpoint] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target_port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class ServiceSpec:
    """The parts of a Service epctl owns. ``headless`` maps to ``clusterIP: None``."""

    ports: tuple[ServicePort, ...]
    headless: bool = False


@dataclass(frozen=True)
class Target:
    namespace: str
    name: str
    groups: dict[str, PortGroup] = field(default_factory=dict, hash=False)
    service: ServiceSpec | None = None  # None: the Service exists and is not ours to shape
    owner: Obj | None = field(default=None, hash=False, compare=True)  # ownerReference for what we create
    adopt: bool = False  # take over an existing Service of this name that we do not own
    source: str = ""  # the front-end that claims this Service (one holder per Service)
    # seconds an endpoint this claim no longer lists stays published terminating before it goes
    grace: float = 0.0

    @property
    def key(self) -> TargetKey:
        return (self.namespace, self.name)


MIRRORED_LABEL = "epctl.io/mirrored"  # on what a mirror wrote: the sweep's only way to tell it from a manager's


def front_end_labels(target: Target) -> dict[str, str]:
    """Labels epctl's slices and Endpoints carry for their front-end: a mirror's are marked, so what
    it wrote can be found (and swept) when its annotation went away while no controller ran. A
    ClusterEndpoint's are recognised by their owner; the manager's are left alone (no controller
    can know whether a manager still serves them)."""
    return {MIRRORED_LABEL: "true"} if target.source == "mirror" else {}


class DesiredState:
    """One holder per Service. A front-end (``Target.source``) that claims a Service another one holds
    is refused: its claim waits, is kept current, and takes over only when the holder releases the
    Service. So two front-ends never write one Service, and one can never delete the other's slices."""

    def __init__(self, on_dirty: Callable[[TargetKey], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.targets: dict[TargetKey, Target] = {}
        # endpoints leaving within their Target's grace: (group id, address) -> (deadline, endpoint)
        self.leaving: dict[TargetKey, dict[tuple[str, str], tuple[float, Endpoint]]] = {}
        self.clock = clock
        # asks to be called back (``expire``) at a ``clock`` time: the app sets a loop timer
        self.on_deadline: Callable[[float], None] | None = None
        # told the targets whose leaving endpoints ``expire`` removed: what reports on them (a
        # ClusterEndpoint's status.draining) recounts then, whether or not a write follows or succeeds
        self.on_grace_over: Callable[[TargetKey], None] | None = None
        self.waiting: dict[TargetKey, dict[str, Target]] = {}  # refused claims, by source, oldest first
        self.dirty: set[TargetKey] = set()
        self.on_dirty = on_dirty

    def _mark(self, key: TargetKey) -> None:
        self.dirty.add(key)
        if self.on_dirty is not None:
            self.on_dirty(key)

    def get(self, key: TargetKey) -> Target | None:
        return self.targets.get(key)

    def holder(self, key: TargetKey) -> str | None:
        """The source holding ``key``, or None."""
        target = self.targets.get(key)
        return None if target is None else target.source

    def set_target(self, target: Target,
                   published: Mapping[tuple[str, str], Endpoint] | None = None) -> bool:
        """Replace a target's whole desired state; True if that changed what is published.

        A claim on a Service that another source holds changes nothing published: it waits.

        ``published``: (group id, address) -> what the Service's slices publish, for a target this
        replica does not hold yet (a restart, a handover). Those that ``target`` no longer lists left
        before it was held here (while another replica, or no controller, ran): they leave with a
        whole grace from now, as if they had just gone. The deadline of a grace under way is not
        kept anywhere but in the replica that started it, so after a restart or handover it starts
        again: a host stays terminating up to one grace longer, never shorter.
        """
        held = self.targets.get(target.key)
        if held is not None and held.source != target.source:
            self.waiting.setdefault(target.key, {})[target.source] = target
            return False
        target = self._with_leaving(held, target, published if held is None else None)
        if held == target:
            return False
        self.targets[target.key] = target
        self._mark(target.key)
        return True

    def remove_target(self, key: TargetKey, source: str = "") -> bool:
        """``source`` gives up ``key``; True if that changed what is published. The oldest waiting
        claim, if any, takes the Service over."""
        waiting = self.waiting.get(key, {})
        waiting.pop(source, None)
        held = self.targets.get(key)
        if held is None or held.source != source:
            return False
        self.leaving.pop(key, None)
        del self.targets[key]
        if waiting:
            successor = waiting.pop(next(iter(waiting)))
            self.targets[key] = successor
        if not waiting:
            self.waiting.pop(key, None)
        self._mark(key)
        return True

    def set_ready(self, key: TargetKey, group_id: str, address: str, ready: bool, source: str = "") -> bool:
        """Flip one endpoint's readiness (serving follows ready) in ``source``'s claim on ``key``;
        True if that changed what is published. A terminating endpoint (drained) stays ready=false:
        only its serving follows the probe."""
        held = self.targets.get(key)
        target = held if held is not None and held.source == source else self.waiting.get(key, {}).get(source)
        group = target.groups.get(group_id) if target else None
        endpoint = group.endpoints.get(address) if group else None
        if target is None or group is None or endpoint is None:
            return False
        new = replace(endpoint, serving=ready) if endpoint.terminating else replace(endpoint, ready=ready,
                                                                                      serving=ready)
        if new == endpoint:
            return False
        endpoints = {**group.endpoints, address: new}
        groups = {**target.groups, group_id: replace(group, endpoints=endpoints)}
        if target is held:
            self.targets[key] = replace(target, groups=groups)
            self._mark(key)
            return True
        self.waiting[key][source] = replace(target, groups=groups)
        return False

    def _with_leaving(self, held: Target | None, target: Target,
                      published: Mapping[tuple[str, str], Endpoint] | None = None) -> Target:
        """``target`` plus the endpoints ``held`` (or, not held yet, the slices: ``published``)
        published that it no longer lists, as terminating (ready=false, serving as last probed) until
        ``target.grace`` seconds after they went. An endpoint listed again is simply back; one whose
        whole port group went leaves at once (the Service port it served is gone)."""
        key = target.key
        if (held is None and not published) or target.grace <= 0:
            self.leaving.pop(key, None)
            return target
        now = self.clock()
        leaving = dict(self.leaving.get(key, {}))
        gone: list[tuple[str, Endpoint]] = [(group_id, endpoint) for group_id, group in held.groups.items()
                                            for endpoint in group.endpoints.values()] if held is not None else [
            (group_id, endpoint) for (group_id, _), endpoint in (published or {}).items()]
        for group_id, endpoint in gone:
            kept = target.groups.get(group_id)
            address = endpoint.address
            if kept is not None and address not in kept.endpoints and (group_id, address) not in leaving:
                leaving[(group_id, address)] = (now + target.grace, replace(endpoint, ready=False, terminating=True))
        leaving = {k: v for k, v in leaving.items() if v[0] > now and k[0] in target.groups
                   and k[1] not in target.groups[k[0]].endpoints}
        if not leaving:
            self.leaving.pop(key, None)
            return target
        self.leaving[key] = leaving
        groups = dict(target.groups)
        for (group_id, address), (_, endpoint) in leaving.items():
            group = groups[group_id]
            groups[group_id] = replace(group, endpoints={**group.endpoints, address: endpoint})
        if self.on_deadline is not None:
            self.on_deadline(min(deadline for deadline, _ in leaving.values()))
        return replace(target, groups=groups)

    def expire(self) -> float | None:
        """Remove the leaving endpoints whose grace is over; returns the next deadline (None: none left).
        Each target that lost some is marked dirty (to be written) and passed to ``on_grace_over``."""
        now = self.clock()
        over: list[TargetKey] = []
        for key in list(self.leaving):
            leaving = self.leaving[key]
            done = [k for k, (deadline, _) in leaving.items() if deadline <= now]
            if not done:
                continue
            for item in done:
                del leaving[item]
            if not leaving:
                del self.leaving[key]
            held = self.targets.get(key)
            if held is None:
                continue
            groups = dict(held.groups)
            for group_id, address in done:
                group = groups.get(group_id)
                if group is not None and address in group.endpoints:
                    groups[group_id] = replace(group, endpoints={
                        a: e for a, e in group.endpoints.items() if a != address})
            self.targets[key] = replace(held, groups=groups)
            self._mark(key)
            over.append(key)
        deadlines = [d for leaving in self.leaving.values() for d, _ in leaving.values()]
        if self.on_grace_over is not None:
            for key in over:
                try:
                    self.on_grace_over(key)
                except Exception:  # a failed report must not end every later grace: the timer re-arms from
                    log.exception("grace over: report failed", extra={"target": "/".join(key)})  # our answer
        return min(deadlines) if deadlines else None

    def take_dirty(self) -> set[TargetKey]:
        taken, self.dirty = self.dirty, set()
        return taken
