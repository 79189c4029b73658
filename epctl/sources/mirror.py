"""Service mirroring: a selector-less Service gets the endpoints of another Service.

The classic case is a ``kubernetes-vip`` LoadBalancer Service that must always list the same
Ready control-plane endpoints as ``default/kubernetes``. A target Service says what it follows with
``epctl.io/mirror-from: <namespace>/<name>``, or the endpoint-copier annotations
(``endpoint-copier/enabled: "true"``, ``endpoint-copier/default-service-name``,
``endpoint-copier/default-service-namespace``), or the controller is given one pair by flags.

Everything a source slice says about an endpoint is copied (ready, serving, terminating, hostname,
nodeName, zone, hints), address types stay apart (dual-stack gives IPv4 and IPv6 slices), nothing
is truncated (the planner splits). Ports come from the target Service: a numeric ``targetPort`` is
used as is, a named one is resolved against each source slice's port names, no ``targetPort``
means ``port``. Refused, with a Warning Event and no writes: a target with a selector (Kubernetes
manages its slices), chains and cycles, unresolvable named ports (that port only). A source with
zero endpoints gives a target with zero endpoints; a deleted source empties the target (Event);
removing the annotation removes our slices.

Source slices are watched per source namespace with one label selector
(``kubernetes.io/service-name in (...)``), never cluster-wide; the informer is rebuilt when the
set of sources in a namespace changes.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from epctl.kube.client import ENDPOINTSLICES, KubeClient
from epctl.kube.events import EventRecorder
from epctl.kube.informer import Informer, InformerEvent
from epctl.slices import SERVICE_NAME_LABEL
from epctl.state import DesiredState, Endpoint, PortGroup, SlicePort, Target, TargetKey

log = logging.getLogger(__name__)
Obj = dict[str, Any]

MIRROR_ANNOTATION = "epctl.io/mirror-from"
SEED_ENABLED = "endpoint-copier/enabled"
SEED_NAME = "endpoint-copier/default-service-name"
SEED_NAMESPACE = "endpoint-copier/default-service-namespace"
SOURCE = "mirror"  # our claim on a Service in the DesiredState


def mirror_source(service: Obj, flag_pairs: dict[TargetKey, TargetKey] | None = None) -> TargetKey | None:
    """The (namespace, name) a Service asks to mirror, from its annotations or the flag pairs. Pure."""
    meta = service.get("metadata", {})
    key = (meta.get("namespace", ""), meta.get("name", ""))
    annotations = meta.get("annotations") or {}
    ours = annotations.get(MIRROR_ANNOTATION)
    if ours:
        namespace, _, name = ours.rpartition("/")
        return (namespace or key[0], name)
    if annotations.get(SEED_ENABLED) == "true":
        return (annotations.get(SEED_NAMESPACE) or "default", annotations.get(SEED_NAME) or "kubernetes")
    return (flag_pairs or {}).get(key)


@dataclass
class MirrorPlan:
    groups: dict[str, PortGroup]
    unresolved: list[str]  # target ports that no source slice could resolve


def _endpoint(address: str, source: Obj) -> Endpoint:
    conditions = source.get("conditions") or {}
    ready = conditions.get("ready") is not False
    serving = conditions.get("serving")
    return Endpoint(address, ready, ready if serving is None else bool(serving), bool(conditions.get("terminating")),
                    hostname=source.get("hostname"), node_name=source.get("nodeName"), zone=source.get("zone"),
                    hints=json.dumps(source["hints"], sort_keys=True) if source.get("hints") else None)


def plan_mirror(target: Obj, source_slices: list[Obj]) -> MirrorPlan:
    """The port groups a target Service gets from its source's slices. Pure."""
    wanted = target.get("spec", {}).get("ports") or []
    groups: dict[str, PortGroup] = {}
    resolved_somewhere: set[str] = set()
    for obj in sorted(source_slices, key=lambda o: o["metadata"]["name"]):
        address_type = obj.get("addressType")
        if address_type not in ("IPv4", "IPv6"):
            continue
        by_name = {(p.get("name") or ""): p.get("port") for p in obj.get("ports") or []}
        ports: list[SlicePort] = []
        for port in wanted:
            name, protocol = port.get("name", ""), port.get("protocol", "TCP")
            target_port = port.get("targetPort", port.get("port"))
            number = target_port if isinstance(target_port, int) else by_name.get(str(target_port))
            if isinstance(number, int):
                ports.append(SlicePort(name, number, protocol))
                resolved_somewhere.add(name)
        if not ports:
            continue
        shape = (address_type, tuple(ports))
        group_id = f"{address_type}/" + ",".join(f"{p.name}:{p.port}/{p.protocol}" for p in ports)
        group = groups.setdefault(group_id, PortGroup(shape[0], shape[1], {}))
        for endpoint in obj.get("endpoints") or []:
            for address in endpoint.get("addresses") or []:
                group.endpoints.setdefault(address, _endpoint(address, endpoint))
    unresolved = sorted({p.get("name", "") for p in wanted} - resolved_somewhere) if source_slices else []
    return MirrorPlan(groups, unresolved)


class MirrorSource:
    """Keeps mirrored targets in the DesiredState. ``services`` is the controller's Service informer."""

    def __init__(self, client: KubeClient, state: DesiredState, services: Informer, events: EventRecorder, *,
                 flag_pairs: dict[TargetKey, TargetKey] | None = None,
                 informer_factory: Callable[[str, str], Informer] | None = None) -> None:
        self.client, self.state, self.services, self.events = client, state, services, events
        self.flag_pairs = flag_pairs or {}
        self._factory = informer_factory or self._informer
        self.mirrors: dict[TargetKey, TargetKey] = {}  # target -> source
        self._sources: set[TargetKey] = set()  # every Service some target mirrors
        self._refused: dict[TargetKey, str] = {}  # target -> reason last announced
        self._informers: dict[str, tuple[frozenset[str], Informer]] = {}
        self._started = False
        self._stopping: set[asyncio.Task[None]] = set()
        self.owns: Callable[[TargetKey], bool] = lambda _key: True  # shard ownership: plan only these
        self._owned: set[TargetKey] = set()  # mirror targets owned at the last reconcile_ownership
        # Services that ask to be mirrored (annotation or flag pair), kept from every Service event: a
        # refresh reads only these, not the whole Service cache (which decodes each object it reads)
        self._asking: set[TargetKey] = set()
        services.subscribe(self._on_service)

    def _informer(self, namespace: str, selector: str) -> Informer:
        return Informer(self.client, ENDPOINTSLICES, namespace, label_selector=selector, name=f"mirror:{namespace}")

    def start(self) -> None:
        self._started = True
        # (events kept it since construction; a cache that synced before we subscribed is read once)
        self._asking = {(s["metadata"].get("namespace", ""), s["metadata"].get("name", ""))
                        for s in self.services.cache.values() if mirror_source(s, self.flag_pairs) is not None}
        self.refresh()

    async def stop(self) -> None:
        for _, informer in self._informers.values():
            await informer.stop()
        self._informers.clear()

    def _on_service(self, event: InformerEvent) -> None:
        """Recompute only for a Service that mirrors, mirrored, is refused, or is a source: with
        thousands of Services, a full refresh per Service event made a cold start quadratic."""
        meta = event.obj.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        asks = mirror_source(event.obj, self.flag_pairs) is not None
        if asks and event.type != "DELETED":
            self._asking.add(key)
        else:
            self._asking.discard(key)
        if not self._started:
            return
        old = event.old if event.old is not None else {}
        if (key in self.mirrors or key in self._refused or key in self._sources or asks
                or (old and mirror_source(old, self.flag_pairs) is not None)):
            self.refresh()

    # --- the set of mirrors -------------------------------------------------------------------------

    def refresh(self) -> None:
        """Recompute which Services mirror which, fix the source watches, and re-plan every target."""
        mirrors: dict[TargetKey, TargetKey] = {}
        for asking in sorted(self._asking):
            service = self.services.get(*asking)
            if service is None:
                continue
            meta = service["metadata"]
            source = mirror_source(service, self.flag_pairs)
            if source is None:
                continue
            key = (meta.get("namespace", ""), meta["name"])
            owner = next((ref for ref in meta.get("ownerReferences") or [] if ref.get("kind") == "ClusterEndpoint"),
                         None)
            if owner is not None:  # a ClusterEndpoint's Service: its endpoints come from the ClusterEndpoint
                self._refuse(key, {"apiVersion": "v1", "kind": "Service", **service}, "MirrorRefused",
                             f'this Service belongs to ClusterEndpoint "{owner.get("name")}", which keeps its '
                             "endpoints; delete the ClusterEndpoint (or the mirror annotation)")
                continue
            mirrors[key] = source
        for gone in set(self.mirrors) - set(mirrors):
            self.state.remove_target(gone, SOURCE)  # the writer deletes our slices of a known target
        for gone in set(self._refused) - set(mirrors):
            current = self.services.get(*gone)
            if current is None or mirror_source(current, self.flag_pairs) is None:
                del self._refused[gone]  # no longer asks to be mirrored: a new refusal is news again
        self.mirrors = mirrors
        self._sources = set(mirrors.values())
        self._watch_sources()
        for target in mirrors:
            self._plan(target)

    def _watch_sources(self) -> None:
        wanted: dict[str, set[str]] = {}
        for namespace, name in self.mirrors.values():
            wanted.setdefault(namespace, set()).add(name)
        for namespace in set(self._informers) - set(wanted):
            _, informer = self._informers.pop(namespace)
            self._spawn_stop(informer)
        for namespace, names in wanted.items():
            current = self._informers.get(namespace)
            if current is not None and current[0] == frozenset(names):
                continue
            if current is not None:
                self._spawn_stop(current[1])
            selector = f"{SERVICE_NAME_LABEL} in ({','.join(sorted(names))})"
            informer = self._factory(namespace, selector)
            informer.subscribe(functools.partial(self._on_source_slice, namespace))
            informer.on_synced(functools.partial(self._on_source_synced, namespace))
            informer.start()
            self._informers[namespace] = (frozenset(names), informer)

    def _spawn_stop(self, informer: Informer) -> None:
        task = asyncio.get_running_loop().create_task(informer.stop())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def _on_source_synced(self, namespace: str) -> None:
        for target, (source_namespace, _) in self.mirrors.items():
            if source_namespace == namespace:
                self._plan(target)

    def _on_source_slice(self, namespace: str, event: InformerEvent) -> None:
        labels = event.obj.get("metadata", {}).get("labels") or {}
        source = (namespace, labels.get(SERVICE_NAME_LABEL, ""))
        for target, wanted in self.mirrors.items():
            if wanted == source:
                self._plan(target)

    # --- one target -----------------------------------------------------------------------------------

    def _refuse(self, target: TargetKey, service: Obj, reason: str, message: str) -> None:
        if self._refused.get(target) != message:
            self._refused[target] = message
            log.warning("mirror refused", extra={"service": "/".join(target), "reason": reason})
            self.events.record(service, "Warning", reason, message)

    def reconcile_ownership(self) -> tuple[int, int]:
        """Follow ``owns``: drop mirrors no longer owned, plan the newly owned ones. (released, acquired)"""
        owned = {target for target in self.mirrors if self.owns(target)}
        released, acquired = len(self._owned - owned), len(owned - self._owned)
        self._owned = owned
        for target in self.mirrors:
            self._plan(target)
        return released, acquired

    def _plan(self, target: TargetKey) -> None:
        if not self.owns(target):
            self.state.remove_target(target, SOURCE)  # another replica writes it: nothing is deleted
            return
        service = self.services.get(*target)
        source = self.mirrors.get(target)
        if service is None or source is None:
            return
        service = {"apiVersion": "v1", "kind": "Service", **service}
        owner = {"apiVersion": "v1", "kind": "Service", "name": target[1], "uid": service["metadata"].get("uid", ""),
                 "controller": True, "blockOwnerDeletion": True}
        if service.get("spec", {}).get("selector"):
            self._refuse(target, service, "MirrorRefused", "this Service has a selector, so Kubernetes manages its "
                         "EndpointSlices; mirroring needs a selector-less Service")
            self.state.remove_target(target, SOURCE)
            return
        if source in self.mirrors or target in self.mirrors.values():
            chain = "cycle" if self.mirrors.get(source) == target else "chain"
            self._refuse(target, service, "MirrorRefused", f"mirror {chain}: {target[0]}/{target[1]} mirrors "
                         f"{source[0]}/{source[1]}, which is itself part of a mirror; chains and cycles are refused")
            self.state.remove_target(target, SOURCE)
            return
        entry = self._informers.get(source[0])
        if entry is None or not entry[1].synced.is_set():
            return  # re-planned when the source watch has synced
        if self.services.get(*source) is None:
            self._refuse(target, service, "SourceNotFound", f"source Service {source[0]}/{source[1]} does not "
                         "exist; the mirrored endpoints were removed")
            self.state.set_target(Target(target[0], target[1], {}, None, owner, source=SOURCE))
            return
        slices = [o for o in entry[1].cache.values()
                  if (o["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL) == source[1]]
        plan = plan_mirror(service, slices)
        if plan.unresolved:
            self._refuse(target, service, "PortNotResolved", "target port(s) " + ", ".join(plan.unresolved) +
                         f" name no port of {source[0]}/{source[1]}; nothing is written for them")
        else:
            self._refused.pop(target, None)
        self.state.set_target(Target(target[0], target[1], plan.groups, None, owner, source=SOURCE))
