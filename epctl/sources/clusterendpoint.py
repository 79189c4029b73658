"""ClusterEndpoint source: CRs in, desired Services/slices + probe checks + status out.

For each ClusterEndpoint:
- a valid spec becomes a Target (selector-less Service of the same name, one port group per
  (port, address family)) and one probe check per (port, address);
- an invalid spec is reported (``Ready=False``, reason ``InvalidSpec``, the field errors, a
  Warning Event) and changes nothing else: the last valid spec keeps being served, so a typo never
  drops healthy endpoints; the rest of the controller carries on;
- probe transitions flip endpoint readiness in the store and are announced as Events;
- the status (phase, per-port ready/total/unhealthy with reasons and since, conditions Ready,
  Degraded, Synced) is recomputed on every change and written only when it differs;
- ``spec.discovery.openstack``: the addresses an OpenStack poller finds join every port's hosts.
  Only a successful answer changes them (an error keeps the last ones and turns
  ``DiscoverySynced`` False with the reason); until the first answer after a (re)start, the
  discovered addresses already published in our slices stand, so a restart drops nothing.

Restart adoption: a new check starts from the readiness already published in our slices, so a
restart with steady backends flips nothing and writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from epctl.api import ClusterEndpointSpec, parse_cluster_endpoint
from epctl.api.parse import unknown_drained
from epctl.api.spec import API_VERSION, DRAIN_ANNOTATION, KIND
from epctl.kube.client import Resource
from epctl.kube.events import EventRecorder
from epctl.kube.frozen import FrozenCache
from epctl.kube.informer import Informer, InformerEvent, compact
from epctl.kube.status import StatusWriter, conditions_with_times
from epctl.metrics import CONVERGENCE
from epctl.probe.resolve import resolve
from epctl.probe.scheduler import CheckKey, Scheduler, Transition
from epctl.slices import SERVICE_NAME_LABEL, service_index
from epctl.sources.openstack import DiscoveryUpdate, OpenStackSource
from epctl.sources.targets import (
    build_groups,
    discovered_endpoints,
    discovered_zones,
    family,
    groups_to_keep,
    published_addresses,
    published_endpoints,
    published_readiness,
    published_terminating,
    published_zones,
)
from epctl.state import DesiredState, PortGroup, ServicePort, ServiceSpec, Target, TargetKey

log = logging.getLogger(__name__)
Obj = dict[str, Any]

CLUSTERENDPOINTS = Resource("epctl.io", "v1beta1", "clusterendpoints", "ClusterEndpoint")
ADOPT_ANNOTATION = "epctl.io/adopt"
SOURCE = "ClusterEndpoint"  # our claim on a Service in the DesiredState
MAX_UNHEALTHY_LISTED = 20  # per port in status (the CRD's maxItems); the rest are counted


def _stamp(at: float | None = None) -> str:
    return datetime.fromtimestamp(at or time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _adopted_condition(obj: Obj, kind: str, default: tuple[bool, str, str]) -> tuple[bool, str, str]:
    """A condition as already published for this generation (restart: nothing to rewrite)."""
    status = obj.get("status") or {}
    if status.get("observedGeneration") == obj.get("metadata", {}).get("generation"):
        for condition in status.get("conditions") or []:
            if condition.get("type") == kind:
                return (condition.get("status") == "True", condition.get("reason", ""), condition.get("message", ""))
    return default


def _adopted_sync(obj: Obj) -> tuple[bool, str, str]:
    return _adopted_condition(obj, "Synced", (False, "Pending", "not written yet"))


def _adopted_discovery(obj: Obj) -> tuple[tuple[bool, str, str], Obj | None]:
    counts = (obj.get("status") or {}).get("discovery")
    return (_adopted_condition(obj, "DiscoverySynced", (False, "Pending", "waiting for the first OpenStack answer")),
            counts if isinstance(counts, dict) else None)


def _reported_readiness(obj: Obj) -> dict[tuple[str, str], bool]:
    """(port, address) -> ready as this ClusterEndpoint's status reports it for its current
    generation: listed as unhealthy -> False; every other address of a port whose list is complete
    -> True (which addresses those are, the caller knows). Empty when the status is stale."""
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj.get("metadata", {}).get("generation") or status.get("phase") in (
            None, "Pending"):  # Pending: some addresses were not decided yet
        return {}
    out: dict[tuple[str, str], bool] = {}
    for port in status.get("ports") or []:
        unhealthy = {item.get("address") for item in port.get("unhealthy") or []}
        for address in unhealthy:
            out[(port.get("name", ""), str(address))] = False
        if not port.get("unhealthyNotListed"):
            out[(port.get("name", ""), "*")] = True  # any other address of this port was ready
    return out


_NONE_DRAINING: dict[str, str] = {}  # shared by every entry seen without a drain (never mutated: replaced)


@dataclass(slots=True)
class _Health:
    reason: str = ""
    since: str = ""


@dataclass
class _Entry:
    # the last ClusterEndpoint seen: the informer cache's own frozen record when it keeps one (no second
    # copy of every object; docs/design.md section 10), else the object; read it as ``obj``
    record: Obj | bytes
    store: FrozenCache | None = None
    spec: ClusterEndpointSpec | None = None  # the last valid spec (kept while the current one is invalid)
    errors: list[str] = field(default_factory=list)
    applied: tuple[str, int, str, str] | None = None  # (uid, generation, adopt, drain annotation) last applied
    addresses: dict[str, list[str]] = field(default_factory=dict)  # host -> addresses
    sync: tuple[bool, str, str] = (False, "Pending", "not written yet")
    # OpenStack discovery: address -> server name; None until adopted from our slices or answered
    discovered: dict[str, str] | None = None
    discovery_sync: tuple[bool, str, str] = (False, "Pending", "waiting for the first OpenStack answer")
    discovery_counts: Obj | None = None  # {servers, addresses, poller} as last published
    discovered_zones: dict[str, str] = field(default_factory=dict)  # address -> availability zone
    # discovered addresses published terminating, held in maintenance until discovery first answers
    held_terminating: frozenset[str] = frozenset()
    # drained host -> when this replica first saw it draining (kept while it stays drained)
    drain_since: dict[str, str] | None = None
    resolved: ClusterEndpointSpec | None = None  # the spec whose static hosts ``addresses`` holds
    mirror_blocked: bool = False  # the Service carries a mirror annotation and is not ours: we wait
    undecided: bool = False  # not published yet and some check has no first result yet
    # first decisions that were unhealthy while undecided: one Event at first publication, not one each
    first_unhealthy: dict[tuple[str, str], str] = field(default_factory=dict)  # (port, address) -> reason
    active: bool = False  # materialised here: this replica owns the Service (checks, desired state)

    @property
    def obj(self) -> Obj:
        """The last ClusterEndpoint seen, read-only (a frozen record's decoded object is shared with the
        next reads of it: a transition computes and compares a status from it several times)."""
        record = self.record
        return record if isinstance(record, dict) else self.store.peek_raw(record)  # type: ignore[union-attr]


class ClusterEndpointSource:
    def __init__(self, state: DesiredState, scheduler: Scheduler, informer: Informer, slices: Informer,
                 status: StatusWriter, events: EventRecorder, *, allow_loopback: bool = False,
                 resolve_interval: float = 30.0, discovery: OpenStackSource | None = None,
                 services: Informer | None = None, mirrored: Callable[[Obj], TargetKey | None] | None = None,
                 terminating_grace: float = 0.0) -> None:
        self.state, self.scheduler, self.informer, self.slices = state, scheduler, informer, slices
        self.services, self.mirrored = services, mirrored
        self.status, self.events = status, events
        self.discovery = discovery
        self.allow_loopback = allow_loopback
        self.resolve_interval = resolve_interval
        self.terminating_grace = terminating_grace
        self._entries: dict[TargetKey, _Entry] = {}
        self._delayed = False  # the scheduler stretches periods beyond 2x (ProbesDelayed)
        self._health: dict[CheckKey, _Health] = {}
        # adopted not ready, but the status we adopted from had no reason for it (a cache behind the
        # previous owner's last status at a takeover): filled when that status arrives
        self._unexplained: dict[TargetKey, set[CheckKey]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._resolver: asyncio.Task[None] | None = None
        self._started = False  # events before start() are ignored: start() replays the synced cache
        self._unpublished: dict[TargetKey, float] = {}  # first transition not yet written, per target
        # the topology hints' verdict for a target (epctl.sources.topology), for the TopologyHints condition
        self.topology: Callable[[TargetKey], Any] = lambda _key: None
        # shard ownership (docs/design.md section 8): only owned ClusterEndpoints get checks, desired
        # state, discovery and status here; the others are parsed and resolved, ready to take over warm
        self.owns: Callable[[TargetKey], bool] = lambda _key: True
        informer.subscribe(self._on_event)
        slices.subscribe(self._on_slice)  # before the writer's: the desired state is right when it re-plans
        if services is not None:
            services.subscribe(self._on_service)

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Apply every cached ClusterEndpoint (informers must be synced) and follow changes.

        Until now events are ignored: adopting published readiness needs the slice cache synced,
        and the ClusterEndpoint informer may well finish its list before the slice informer.
        """
        self._started = True
        for obj in list(self.informer.cache.values()):
            self._on_event(InformerEvent("ADDED", obj))
        self._resolver = asyncio.create_task(self._re_resolve(), name="cep-resolver")

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._resolver] if self._resolver else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def reconcile_ownership(self) -> tuple[int, int]:
        """Follow ``owns``: let go of ClusterEndpoints no longer owned (checks, desired state, discovery,
        pending status) and take over the newly owned ones from what is published (the previous
        owner's slices and status are the truth, so taking over flips nothing). Returns (released,
        acquired)."""
        released = acquired = 0
        for key, entry in list(self._entries.items()):
            owned = self.owns(key)
            if entry.active and not owned:
                self._release(key, entry)
                released += 1
            elif owned and not entry.active:
                self._acquire(key, entry)
                acquired += 1
        return released, acquired

    def _release(self, key: TargetKey, entry: _Entry) -> None:
        entry.active = False
        target = f"{key[0]}/{key[1]}"
        if self.discovery is not None:
            self.discovery.unwatch(key)
        self.scheduler.remove_target(target)
        self._health = {k: v for k, v in self._health.items() if k.target != target}
        self._unexplained.pop(key, None)
        self.state.remove_target(key, SOURCE)  # the writer no longer owns it: nothing is deleted
        self.status.forget(*key)
        self._unpublished.pop(key, None)
        entry.discovered = None  # adopted again from the slices if it comes back
        entry.drain_since = None  # another replica may undrain and drain again meanwhile

    def _acquire(self, key: TargetKey, entry: _Entry) -> None:
        entry.active = True
        # the conditions the previous owner published are the truth now, not what this replica saw when
        # it first met the object (its entry.sync would still say "not written yet")
        entry.sync = _adopted_sync(entry.obj)
        entry.discovery_sync, counts = _adopted_discovery(entry.obj)
        entry.discovery_counts = counts if counts is not None else entry.discovery_counts
        if entry.spec is None:
            self._write_status(key)
            return
        self._follow_discovery(key, entry.spec)
        if entry.resolved is entry.spec:
            self._materialise(key, entry)
        # else: the pending _apply materialises it

    async def settle(self) -> None:
        """Wait for pending spec applications (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- ClusterEndpoint events -------------------------------------------------------------------

    def _on_event(self, event: InformerEvent) -> None:
        if not self._started:
            return
        meta = event.obj.get("metadata", {})
        key: TargetKey = (meta.get("namespace", "default"), meta.get("name", ""))
        if event.type == "DELETED":
            if key in self._entries:
                self._forget(key)
            return
        entry = self._entries.get(key)
        if entry is not None and entry.applied is not None and entry.applied[0] != str(meta.get("uid") or ""):
            self._forget(key)  # another object under the same name: a delete and an add
            entry = None
        if entry is None:
            discovery_sync, counts = _adopted_discovery(event.obj)
            entry = self._entries[key] = _Entry(event.obj, sync=_adopted_sync(event.obj),
                                                discovery_sync=discovery_sync, discovery_counts=counts,
                                                active=self.owns(key))
        self._keep(key, entry, event.obj)
        annotations = meta.get("annotations") or {}
        marker = (str(meta.get("uid") or ""), int(meta.get("generation") or 0),
                  annotations.get(ADOPT_ANNOTATION, ""), annotations.get(DRAIN_ANNOTATION, ""))
        if entry.applied == marker:  # our own status write, or a metadata-only change that does not concern us
            # someone else's status seen late (the previous owner's last word, after a takeover): what we
            # queued was computed from the older one (its reasons, its conditions' transition times)
            if entry.active and (self._explain(key, entry) or self.status.waiting(*key)):
                self._write_status(key)
            return
        entry.applied = marker
        # the parsed spec is kept: intern its strings (hosts shared by many ClusterEndpoints), here and
        # not for every event (a status echo, most of them, is dropped just above)
        spec, errors = parse_cluster_endpoint(compact(event.obj), allow_loopback=self.allow_loopback)
        if spec is None:
            entry.errors = [str(e) for e in errors]
            if entry.active:  # the owner reports it; every replica keeps the last valid spec
                log.warning("invalid ClusterEndpoint", extra={"clusterendpoint": "/".join(key),
                                                              "errors": "; ".join(entry.errors)})
            self.events.record(event.obj, "Warning", "InvalidSpec", "; ".join(entry.errors))
            self._write_status(key)
            return
        entry.errors = []
        if entry.spec is not None or spec.drain:
            # first sight (a start, a takeover): what the status already reports is not news
            before = entry.spec.drain if entry.spec is not None else tuple(
                str(h.get("host")) for h in (event.obj.get("status") or {}).get("drainingHosts") or [])
            self._drain_events(event.obj, before, spec.drain, spec, entry.spec)
        entry.spec = spec
        self._spawn(self._apply(key))
        if entry.active:
            self._follow_discovery(key, spec)

    def _keep(self, key: TargetKey, entry: _Entry, obj: Obj) -> None:
        """Remember ``obj`` as the entry's last ClusterEndpoint: as the cache's own frozen record when
        the cache holds exactly this object (events are dispatched right after the cache took them)."""
        cache = self.informer.cache
        name = f"{key[0]}/{key[1]}"
        if isinstance(cache, FrozenCache) and name in cache:
            entry.record, entry.store = cache.raw(name), cache
        else:
            entry.record, entry.store = obj, None

    def _on_slice(self, event: InformerEvent) -> None:
        if event.type == "DELETED" or not self._started:
            return
        meta = event.obj.get("metadata", {})
        self.follow_not_ready((meta.get("namespace", ""), (meta.get("labels") or {}).get(SERVICE_NAME_LABEL, "")),
                              [event.obj])

    def follow_not_ready(self, key: TargetKey, slices: list[Obj]) -> None:
        """No repair may make a host ready that has not passed a probe of ours. A check held ready
        whose last probe of ours did not pass (none yet: adopted from our cache when we took the
        target over; or failing, below the failure threshold) follows a slice that says not ready:
        that is the previous owner's last word seen late (a lagging watch, or the writer's fresh
        read after a conflict), or someone who knows better, not an edit to undo. The next passing
        probe makes it ready again. (Called for every slice event, and by the writer with what it
        lists before it re-plans.)"""
        entry = self._entries.get(key)
        if not self._started or entry is None or not entry.active:
            return
        target, corrected = f"{key[0]}/{key[1]}", False
        for (label, address), ready in published_readiness(slices, key).items():
            state = None if ready else self.scheduler.state(CheckKey(target, label, address))
            if state is not None and state.healthy and state.successes == 0:  # ready, but not by our last probe
                state.healthy = False
                check_key = CheckKey(target, label, address)
                self._adopt_health(key, entry, check_key)
                corrected = True
        if corrected and entry.spec is not None and entry.resolved is entry.spec:
            self._materialise(key, entry)

    def may_ready(self, key: TargetKey, port_name: str, address: str) -> bool:
        """May the writer publish this endpoint ready where a slice says not ready? Only after a passing
        probe of ours (its last result passed); a port without a probe is always ready. Not ours to say
        for a Service another front-end holds (a mirror's: a waiting ClusterEndpoint's checks of the
        same name would hold the origin's hosts)."""
        if self.state.holder(key) != SOURCE:
            return True
        target = f"{key[0]}/{key[1]}"
        for check_key in self.scheduler.keys_of(target):
            if check_key.address == address and (not port_name or check_key.port == port_name):
                state = self.scheduler.state(check_key)
                return state is None or state.successes > 0
        return True

    def _drain_events(self, obj: Obj, before: tuple[str, ...], after: tuple[str, ...],
                      spec: ClusterEndpointSpec | None = None, previous: ClusterEndpointSpec | None = None) -> None:
        """An Event per host put into or taken out of maintenance, naming who asked (the field manager that
        set the annotation, from managedFields) and when."""
        by = drain_requester(obj)
        who = f" (by {by[0]} at {by[1]})" if by else ""
        was = set(unknown_drained(previous)) if previous is not None else set()
        unknown = [h for h in unknown_drained(spec) if h not in was] if spec is not None else []
        if unknown:
            self.events.record(obj, "Warning", "DrainUnknownHost", f"{', '.join(unknown)} in {DRAIN_ANNOTATION} "
                                                                     "name no host of this ClusterEndpoint: nothing "
                                                                     "drained for them")
        for host in after:
            if host not in before and host not in unknown:
                self.events.record(obj, "Normal", "Draining", f"{host} drained: published terminating, no new "
                                                               f"connections{who}")
        for host in before:
            if host not in after:
                self.events.record(obj, "Normal", "Undrained", f"{host} back in service{who}")

    def _forget(self, key: TargetKey) -> None:
        """The ClusterEndpoint ``key`` is gone: its checks, desired state and pending status go too."""
        self._entries.pop(key, None)
        if self.discovery is not None:
            self.discovery.unwatch(key)
        self.scheduler.remove_target(f"{key[0]}/{key[1]}")
        self._health = {k: v for k, v in self._health.items() if k.target != f"{key[0]}/{key[1]}"}
        self._unexplained.pop(key, None)
        self.state.remove_target(key, SOURCE)
        self.status.forget(*key)

    # --- OpenStack discovery ----------------------------------------------------------------------

    def _follow_discovery(self, key: TargetKey, spec: ClusterEndpointSpec) -> None:
        if self.discovery is None:
            return
        if spec.openstack is None:
            self.discovery.unwatch(key)
            entry = self._entries.get(key)
            if entry is not None:
                entry.discovered = None
            return
        self.discovery.watch_secret(key, key[0], spec.openstack, lambda update: self._on_discovery(key, update))

    def _on_discovery(self, key: TargetKey, update: DiscoveryUpdate) -> None:
        entry = self._entries.get(key)
        if entry is None or entry.spec is None or entry.spec.openstack is None or not entry.active:
            return
        changed = False
        sync = (update.ok, update.reason, update.message)
        if update.ok and update.servers is not None:
            found = discovered_endpoints(update.servers, self.allow_loopback)
            if not found and entry.spec.openstack.keep_last_on_empty and entry.discovered:
                sync = (True, "KeptLastOnEmpty", f"0 servers match; keeping the {len(entry.discovered)} last known "
                                                 "addresses (keepLastOnEmpty)")
            else:
                zones = discovered_zones(update.servers)
                changed = found != entry.discovered or zones != entry.discovered_zones or bool(entry.held_terminating)
                entry.discovered = found
                entry.held_terminating = frozenset()  # the cloud has answered: its names and absences count
                entry.discovered_zones = zones
            entry.discovery_counts = {"servers": len(update.servers), "addresses": len(entry.discovered or {}),
                                      "poller": update.poller}
        if sync != entry.discovery_sync and not update.ok:
            log.warning("OpenStack discovery failing; keeping the last known endpoints",
                        extra={"clusterendpoint": "/".join(key), "reason": update.reason})
            self.events.record(entry.obj, "Warning", f"Discovery{update.reason}", update.message)
        entry.discovery_sync = sync
        if changed and entry.resolved is entry.spec:  # else the pending _apply materialises
            self._materialise(key, entry)
        else:
            self._write_status(key)

    def _discovered(self, key: TargetKey, entry: _Entry) -> dict[str, str]:
        """address -> server name; before the first answer, what our slices already publish."""
        spec = entry.spec
        if spec is None or spec.openstack is None:
            return {}
        if entry.discovered is None:
            static = {a for addresses in entry.addresses.values() for a in addresses}
            ours = self.slices.indexed(service_index(*key))
            published = published_addresses(ours, key)
            entry.discovered = {a: h for a, h in published.items() if a not in static}
            entry.held_terminating = published_terminating(ours, key) & entry.discovered.keys()
            zones = published_zones(ours, key)
            entry.discovered_zones = {a: z for a, z in zones.items() if a in entry.discovered}
        return entry.discovered

    async def _apply(self, key: TargetKey) -> None:
        entry = self._entries.get(key)
        if entry is None or entry.spec is None:
            return
        spec = entry.spec
        hosts = sorted({h for p in spec.ports for h in p.hosts})
        resolved = await asyncio.gather(*(resolve(h, self.allow_loopback) for h in hosts))
        entry = self._entries.get(key)
        if entry is None or entry.spec is not spec:
            return  # changed while resolving; the newer application wins
        for host, (addresses, error) in zip(hosts, resolved, strict=True):
            if error:
                log.warning("host did not resolve to usable addresses", extra={
                    "clusterendpoint": "/".join(key), "host": host, "error": error})
                self.events.record(entry.obj, "Warning", "HostNotResolved", error)
            if addresses or not error:
                entry.addresses[host] = addresses
            else:  # keep the last good answer: a DNS blip must not drop endpoints
                entry.addresses.setdefault(host, [])
        entry.resolved = spec
        self._materialise(key, entry)

    def _materialise(self, key: TargetKey, entry: _Entry) -> None:
        if not entry.active:
            return  # another replica owns it
        spec = entry.spec
        assert spec is not None
        discovered = set(self._discovered(key, entry))

        def adopted_unhealthy(check_key: CheckKey) -> None:
            state = self.scheduler.state(check_key)
            if check_key not in self._health and not (state is not None and state.healthy):  # ours says healthy
                self._adopt_health(key, entry, check_key)

        published = self.slices.indexed(service_index(*key))
        # not held here yet (a restart, a handover): hosts that left meanwhile get their grace too
        left = (published_endpoints(published, key, spec.ports)
                if self.terminating_grace > 0 and self.state.holder(key) != SOURCE else None)
        groups, stale = build_groups(
            key, spec.ports, lambda port: {a for h in port.hosts for a in entry.addresses.get(h, [])} | discovered,
            self.scheduler, published, adopted_unhealthy,
            reported=_reported_readiness(entry.obj), drained=self._drained(key, entry),
            zones=self._zones(key, entry), keep=groups_to_keep(
                self.terminating_grace, self.state.get(key) if self.state.holder(key) == SOURCE else None,
                self.state.leaving.get(key, {}), left))
        for check_key in stale:
            self._health.pop(check_key, None)
        entry.undecided = self.state.holder(key) != SOURCE and self._undecided(key, spec, entry)
        if entry.undecided:
            # Not published yet: publish once every check has its first result, not before. Publishing
            # undecided hosts as not ready would empty an adopted Service (and our Endpoints would
            # take the old ones' mirrored slices away) until the first probes answer.
            self._write_status(key)
            return
        if entry.first_unhealthy:
            self._summarise_first(entry, groups)
        meta = entry.obj["metadata"]
        owner = {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta.get("uid", ""),
                 "controller": True, "blockOwnerDeletion": True}
        service = ServiceSpec(tuple(ServicePort(p.name, p.port, p.target_port, p.protocol) for p in spec.ports),
                              headless=spec.cluster_ip == "None")
        adopt = (meta.get("annotations") or {}).get(ADOPT_ANNOTATION) == "true"
        conflict = self._mirror_conflict(key, entry)
        entry.mirror_blocked = conflict is not None
        if conflict is None:
            self.state.set_target(Target(key[0], key[1], groups, service, owner, adopt, SOURCE,
                                         grace=self.terminating_grace), left)
            holder = self.state.holder(key)
            if holder != SOURCE:
                conflict = (f'Service "{key[1]}" is already managed by epctl ({holder}); it is handed over '
                            "when that claim ends")
        else:
            self.state.remove_target(key, SOURCE)
        if conflict is not None:
            self.failed(key, "ServiceConflict", conflict, True, force=True)
        self._write_status(key)

    def _summarise_first(self, entry: _Entry, groups: dict[str, PortGroup]) -> None:
        """One Event for a ClusterEndpoint's first publication naming its hosts that were unhealthy
        from the start: a first install of many failing hosts costs an Event per ClusterEndpoint, not
        per host. (A first healthy decision is not news, as before.)"""
        total = sum(len(group.endpoints) for group in groups.values())
        published = {address for group in groups.values() for address in group.endpoints}
        listed = [f"{address} port {port}: {reason}"
                  for (port, address), reason in sorted(entry.first_unhealthy.items()) if address in published]
        entry.first_unhealthy.clear()
        if listed:
            self.events.record(entry.obj, "Warning", "EndpointUnhealthy",
                               f"first probes: {len(listed)} of {total} endpoints unhealthy: {'; '.join(listed)}")

    def _drained_by_name(self, key: TargetKey, entry: _Entry) -> dict[str, set[str]]:
        """Each name in the drain annotation -> the addresses it puts into maintenance: a host as written
        (all its addresses), a discovered server (all of its addresses) or an address; empty: it names
        nothing here (reported, not an error: see parse._drain)."""
        if entry.spec is None or not entry.spec.drain:
            return {}
        discovered = self._discovered(key, entry)
        static = {h: entry.addresses.get(h, []) for p in entry.spec.ports for h in p.hosts}
        out: dict[str, set[str]] = {}
        for name in entry.spec.drain:
            found = out.setdefault(name, set())
            found.update(static.get(name, []))
            found.update(a for a, server in discovered.items() if server == name or a == name)
            if any(name in addresses for addresses in static.values()):
                found.add(name)
        return out

    def _drained(self, key: TargetKey, entry: _Entry) -> set[str]:
        """The addresses in maintenance (and, until discovery first answers, those our slices publish
        terminating: see targets.published_terminating)."""
        return {a for addresses in self._drained_by_name(key, entry).values() for a in addresses} | (
            entry.held_terminating)

    def _zones(self, key: TargetKey, entry: _Entry) -> dict[str, str]:
        """address -> zone: spec.zones for listed hosts, the availability zone for discovered servers."""
        out = dict(entry.discovered_zones)
        for host, zone in (entry.spec.zones if entry.spec is not None else ()):
            for address in entry.addresses.get(host, []):
                out[address] = zone
        return out

    def _undecided(self, key: TargetKey, spec: ClusterEndpointSpec, entry: _Entry) -> bool:
        target = f"{key[0]}/{key[1]}"
        discovered = set(self._discovered(key, entry))
        for port in spec.ports:
            if port.probe is None or port.timing.initial_delay_seconds:
                continue  # an initial delay means "not ready until then" (kubelet): nothing to wait for
            for address in {a for h in port.hosts for a in entry.addresses.get(h, [])} | discovered:
                state = self.scheduler.state(CheckKey(target, port.label, address))
                if state is None or state.healthy is None:
                    return True
        return False

    def _mirror_conflict(self, key: TargetKey, entry: _Entry) -> str | None:
        """Why a mirror, not this ClusterEndpoint, has the Service ``key``: it carries a mirror
        annotation and is not (yet) ours. Decided from the objects, so a restart keeps the holder."""
        service = self.services.peek(*key) if self.services is not None else None
        if service is None or self.mirrored is None:
            return None
        source = self.mirrored(service)
        uid = entry.obj["metadata"].get("uid")
        if source is None or any(ref.get("uid") == uid for ref in service["metadata"].get("ownerReferences") or []):
            return None
        return (f'Service "{key[1]}" mirrors {source[0]}/{source[1]} (annotation epctl.io/mirror-from or '
                "endpoint-copier); remove that annotation to hand the Service over to this ClusterEndpoint")

    def _on_service(self, event: InformerEvent) -> None:
        """A Service changed: a mirror annotation may have come or gone (explicit hand-over)."""
        if not self._started:
            return
        meta = event.obj.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        entry = self._entries.get(key)
        if entry is None or entry.spec is None or entry.resolved is not entry.spec:
            return
        if (self._mirror_conflict(key, entry) is not None) != entry.mirror_blocked:
            self._materialise(key, entry)

    def _adopt_health(self, key: TargetKey, entry: _Entry, check_key: CheckKey) -> None:
        """Take a not-ready check's reason and since from the status (a restart, a takeover)."""
        health = self._health[check_key] = self._previous_health(entry, check_key.port, check_key.address)
        if not health.reason:
            self._unexplained.setdefault(key, set()).add(check_key)

    def _explain(self, key: TargetKey, entry: _Entry) -> bool:
        """The ClusterEndpoint's status changed (not by its spec): fill in the reasons of adopted
        not-ready checks that the status we adopted from did not have. A takeover from a cache behind
        the previous owner's last status wrote "reason": "" and a new since for a host that stayed down,
        and kept them until the host changed again. True if any was filled."""
        unexplained = self._unexplained.get(key)
        if not unexplained:
            return False
        filled = False
        for check_key in list(unexplained):
            health = self._previous_health(entry, check_key.port, check_key.address)
            if health.reason and check_key in self._health:
                self._health[check_key] = health
                filled = True
            if health.reason or check_key not in self._health:
                unexplained.discard(check_key)
        if not unexplained:
            del self._unexplained[key]
        return filled

    @staticmethod
    def _previous_health(entry: _Entry, port_name: str, address: str) -> _Health:
        """Reason and since of an unhealthy endpoint as the current status reports them (restart)."""
        for port in (entry.obj.get("status") or {}).get("ports") or []:
            if port.get("name") == port_name:
                for item in port.get("unhealthy") or []:
                    if item.get("address") == address:
                        return _Health(item.get("reason", ""), item.get("since", ""))
        return _Health()

    async def _re_resolve(self) -> None:
        """Follow DNS: re-resolve named hosts and re-apply the specs whose addresses changed."""
        while True:
            await asyncio.sleep(self.resolve_interval)
            for key, entry in list(self._entries.items()):
                if entry.spec is None:
                    continue
                names = [h for p in entry.spec.ports for h in p.hosts if entry.addresses.get(h) != [h]]
                for host in set(names):
                    addresses, error = await resolve(host, self.allow_loopback)
                    if (addresses or not error) and addresses != entry.addresses.get(host):
                        self._spawn(self._apply(key))
                        break

    # --- probe transitions and write outcomes -------------------------------------------------------

    def on_transition(self, transition: Transition) -> None:
        namespace, _, name = transition.key.target.partition("/")
        key = (namespace, name)
        entry = self._entries.get(key)
        if entry is None or not entry.active:
            return  # a probe that was in flight when the target was let go
        unexplained = self._unexplained.get(key)
        if unexplained:
            unexplained.discard(transition.key)
        if transition.healthy:  # status lists only unhealthy endpoints' reason and since: keep nothing
            self._health.pop(transition.key, None)
        else:  # seconds-resolution stamps: thousands of endpoints that fail together share one string
            self._health[transition.key] = _Health(transition.reason, sys.intern(_stamp(transition.at)))
        self._unpublished.setdefault(key, time.monotonic())
        group_id = f"{transition.key.port}/{family(transition.key.address)}"
        self.state.set_ready(key, group_id, transition.key.address, transition.healthy, SOURCE)
        first = transition.previous is None and entry.undecided  # summarised when it is published
        unreported = entry.first_unhealthy.pop((transition.key.port, transition.key.address), None) is not None
        if first and not transition.healthy:
            entry.first_unhealthy[(transition.key.port, transition.key.address)] = transition.reason
        if (entry.undecided and entry.spec is not None and entry.resolved is entry.spec
                and not self._undecided(key, entry.spec, entry)):
            self._materialise(key, entry)  # the last first result is in: publish
        _log_transition(transition)
        if transition.healthy:
            if transition.previous is False and not unreported:  # a first healthy decision is not news
                self.events.record(entry.obj, "Normal", "EndpointHealthy",
                                   f"{transition.key.address} port {transition.key.port} is healthy again")
        elif not first:
            self.events.record(entry.obj, "Warning", "EndpointUnhealthy",
                               f"{transition.key.address} port {transition.key.port}: {transition.reason}")
        self._write_status(key)

    def topology_changed(self, key: TargetKey) -> None:
        """The topology hints' verdict for ``key`` changed: rewrite its TopologyHints condition."""
        self._write_status(key)

    def probes_delayed(self, delayed: bool) -> None:
        """The scheduler started (or stopped) stretching every check's period beyond 2x: say so in every
        ClusterEndpoint's status (a ProbesDelayed condition), where `kubectl describe cep` shows it."""
        self._delayed = delayed
        for key in list(self._entries):
            self._write_status(key)

    def grace_over(self, key: TargetKey) -> None:
        """Hosts removed from ``key``'s spec finished their grace (``DesiredState.expire``): recount
        ``status.draining`` now. Not on the write that follows: that write may fail for long, or never
        be tried for a Service that is someone else's; the count follows the desired state."""
        if self.state.holder(key) == SOURCE:
            self._write_status(key)

    def synced(self, key: TargetKey) -> None:
        if self.state.holder(key) != SOURCE:
            return  # the writer reports on a Service another front-end holds
        since = self._unpublished.pop(key, None)
        if since is not None:
            CONVERGENCE.observe(time.monotonic() - since)
        entry = self._entries.get(key)
        if entry is not None and entry.sync[0] is not True:
            entry.sync = (True, "Synced", "Service and EndpointSlices are up to date")
            self._write_status(key)

    def failed(self, key: TargetKey, reason: str, message: str, permanent: bool, force: bool = False) -> None:
        entry = self._entries.get(key)
        if entry is None or (not force and self.state.holder(key) != SOURCE):
            return
        if entry.sync != (False, reason, message):
            entry.sync = (False, reason, message)
            log.warning("ClusterEndpoint not synced", extra={"clusterendpoint": "/".join(key), "reason": reason,
                                                             "error": message})
            if permanent:
                self.events.record(entry.obj, "Warning", reason, message)
            self._write_status(key)

    def conflicted(self, key: TargetKey) -> bool:
        """Is ``key``'s Service someone else's (ServiceConflict)? Its hosts are probed, nothing published."""
        entry = self._entries.get(key)
        return entry is not None and not entry.sync[0] and entry.sync[1] == "ServiceConflict"

    def not_synced(self) -> dict[str, int]:
        """Owned ClusterEndpoints not published as their spec says, by reason (the Synced condition's
        reason; InvalidSpec for a spec that does not parse): the state behind an alert, which a rate of
        failed writes cannot be (a ServiceConflict is not retried until something changes)."""
        counts: dict[str, int] = {}
        for entry in self._entries.values():
            if not entry.active:
                continue
            if entry.errors:
                reason = "InvalidSpec"
            elif entry.sync[0]:
                continue
            else:
                reason = entry.sync[1]
            counts[reason] = counts.get(reason, 0) + 1
        return counts

    # --- status ---------------------------------------------------------------------------------------

    def _write_status(self, key: TargetKey) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.active:
            self.status.set(key[0], key[1], self.compute_status(key, entry))

    def compute_status(self, key: TargetKey, entry: _Entry) -> Obj:
        target_name = f"{key[0]}/{key[1]}"
        ports_status: list[Obj] = []
        healthy = total = 0
        unknown = 0
        per_port_ready: list[tuple[str, int]] = []
        drained = self._drained(key, entry) if entry.spec is not None else set()
        leaving = list(self.state.leaving.get(key, {}))  # (group id, address): removed, within the grace
        draining = in_maintenance = 0
        for port in (entry.spec.ports if entry.spec else ()):
            label = port.label
            static = {a: h for h in port.hosts for a in entry.addresses.get(h, [])}
            addresses = sorted({**self._discovered(key, entry), **static}.items(), key=lambda x: x[0])
            addresses = [(host, address) for address, host in addresses]
            ready = 0
            port_draining = 0
            unhealthy: list[Obj] = []
            for host, address in addresses:
                if address in drained:
                    port_draining += 1  # in maintenance: neither ready nor unhealthy
                    continue
                if port.probe is None:
                    ready += 1
                    continue
                check_key = CheckKey(target_name, label, address)
                state = self.scheduler.state(check_key)
                if state is None or state.healthy is None:
                    unknown += 1
                elif state.healthy:
                    ready += 1
                else:
                    health = self._health.get(check_key, _Health(state.reason or "unhealthy"))
                    unhealthy.append({"host": host, "address": address, "reason": health.reason or state.reason,
                                      **({"since": health.since} if health.since else {})})
            in_maintenance += port_draining
            port_draining += sum(1 for group_id, _ in leaving if group_id.rpartition("/")[0] == label)
            healthy += ready
            draining += port_draining
            total += len(addresses)
            per_port_ready.append((port.name or str(port.port), ready))
            listed = unhealthy[:MAX_UNHEALTHY_LISTED]  # bounded: status must stay far below the size limit
            ports_status.append({"name": label, "ready": ready, "total": len(addresses),
                                 **({"draining": port_draining} if port_draining else {}),
                                 **({"unhealthy": listed} if listed else {}),
                                 **({"unhealthyNotListed": len(unhealthy) - len(listed)}
                                    if len(unhealthy) > len(listed) else {})})
        sync_ok, sync_reason, sync_message = entry.sync
        conflict = not sync_ok and sync_reason == "ServiceConflict"
        # what `kubectl get cep` shows by default: PHASE is the hosts' health (also while another front-end
        # holds the Service: the checks still run), REASON says why Ready is False (ServiceConflict, ...)
        if entry.errors:
            phase = "Invalid"
        elif unknown:
            phase = "Pending"
        elif total and healthy + in_maintenance == total:
            phase = "Healthy"
        elif healthy:
            phase = "Degraded"
        else:
            phase = "Unhealthy"
        generation = int(entry.obj["metadata"].get("generation") or 0)
        empty_ports = [name for name, ready in per_port_ready if not ready]
        if entry.errors:
            more = f"; and {len(entry.errors) - 5} more errors" if len(entry.errors) > 5 else ""
            ready_cond = ("False", "InvalidSpec", "; ".join(entry.errors[:5]) + more)
        elif conflict:
            ready_cond = ("False", "ServiceConflict", sync_message)
        elif per_port_ready and not empty_ports:
            ready_cond = ("True", "EndpointsReady", "every port has at least one ready endpoint")
        elif unknown:
            ready_cond = ("False", "Probing", "waiting for the first probe results")
        else:
            ready_cond = ("False", "NoReadyEndpoints",
                          f"no ready endpoint on port{'s' if len(empty_ports) > 1 else ''} {', '.join(empty_ports)}")
        degraded = len([u for p in ports_status for u in p.get("unhealthy", [])]) + sum(
            p.get("unhealthyNotListed", 0) for p in ports_status)
        if entry.errors:
            degraded_cond = ("Unknown", "InvalidSpec", "the spec is invalid: nothing is probed until it is fixed")
        elif degraded:
            degraded_cond = ("True", "UnhealthyEndpoints", f"{degraded} of {total} endpoints failing their probe")
        else:
            degraded_cond = ("False", "AllHealthy", "no failing endpoint")
        conditions: list[Obj] = [
            {"type": "Ready", "status": ready_cond[0], "reason": ready_cond[1], "message": ready_cond[2]},
            {"type": "Degraded", "status": degraded_cond[0], "reason": degraded_cond[1], "message": degraded_cond[2]},
            {"type": "Synced", "status": "True" if sync_ok else "False", "reason": sync_reason,
             "message": sync_message},
        ]
        if self._delayed and entry.spec is not None:
            factor = self.scheduler.stretch.factor
            conditions.append({"type": "ProbesDelayed", "status": "True", "reason": "Overloaded", "message": (
                f"checks run about every {factor:.1f}x their periodSeconds: the controller cannot start every due "
                "probe in time (epctl_probe_period_stretch); give it more CPU, lengthen periods or add replicas")})
        verdict = self.topology(key)
        if verdict is not None and entry.spec is not None:
            conditions.append({"type": "TopologyHints", "status": "True" if verdict.enabled else "False",
                               "reason": verdict.reason, "message": verdict.message})
        extra: Obj = {}
        extra["draining"] = draining  # always: `kubectl get cep` shows 0, not <none>
        if entry.spec is not None and entry.spec.drain:
            by = drain_requester(entry.obj)
            # since: when the host's drain began. The managedFields time moves whenever the same manager
            # edits any other field it owns (an unrelated annotation), so a host seen draining keeps its
            # since while it stays drained (at a start or takeover: the since the status says); a status
            # that changed for nothing was written long after the edit (the fuzzer's idle window).
            began = entry.drain_since
            if began is None:  # first sight (a start, a takeover): the status says since when
                began = {str(h.get("host")): str(h.get("since")) for h in
                         (entry.obj.get("status") or {}).get("drainingHosts") or [] if h.get("since")}
            by_name = self._drained_by_name(key, entry)
            entry.drain_since = {h: began.get(h) or (by[1] if by else "") for h in by_name}  # undrained: forgotten
            # before discovery first answers, a name it would resolve is matched as the status said
            known = {str(h.get("host")): bool(h.get("matched")) for h in
                     (entry.obj.get("status") or {}).get("drainingHosts") or []} if entry.held_terminating else {}
            extra["drainingHosts"] = [{"host": h, "matched": bool(found) or known.get(h, False),
                                       **({"manager": by[0], "since": entry.drain_since[h]} if by else {})}
                                      for h, found in by_name.items()]
        else:
            entry.drain_since = _NONE_DRAINING
        if entry.spec is not None and entry.spec.openstack is not None:
            ok, reason, message = entry.discovery_sync
            conditions.append({"type": "DiscoverySynced", "status": "True" if ok else "False", "reason": reason,
                               "message": message})
            if entry.discovery_counts is not None:
                extra["discovery"] = entry.discovery_counts
        for condition in conditions:
            condition["observedGeneration"] = generation
        previous = (entry.obj.get("status") or {}).get("conditions")
        return {"observedGeneration": generation, "phase": phase, "healthy": healthy, "total": total,
                "conditions": conditions_with_times(previous, conditions), "ports": ports_status, **extra}


def drain_requester(obj: Obj) -> tuple[str, str] | None:
    """(field manager, time) that last set the drain annotation, from the managedFields the informer
    keeps for it (see kube.informer.slim): Kubernetes records the tool (kubectl-annotate, epctl-drain,
    ...) in the object; the user behind it is in the API server's audit log."""
    entries = [e for e in (obj.get("metadata") or {}).get("managedFields") or []
               if DRAIN_ANNOTATION in (e.get("annotations") or ()) or DRAIN_ANNOTATION in str(e.get("fieldsV1"))]
    if not entries:
        return None
    latest = max(entries, key=lambda e: str(e.get("time") or ""))
    return str(latest.get("manager") or "unknown"), str(latest.get("time") or "")


def _log_transition(transition: Transition) -> None:
    """One line per health transition. A first healthy decision is routine (debug: a cold start of
    10,000 endpoints must not flood the log); anything unhealthy and every later change is news."""
    fields = {"target": transition.key.target, "port": transition.key.port, "address": transition.key.address,
              "reason": transition.reason}
    if not transition.healthy:
        log.warning("endpoint unhealthy", extra=fields)
    elif transition.previous is None:
        log.debug("endpoint healthy", extra=fields)
    else:
        log.info("endpoint healthy again", extra=fields)
