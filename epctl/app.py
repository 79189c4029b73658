"""Wires the tasks of ``epctl controller`` (docs/design.md section 2) and shuts them down gracefully.

Start order matters for "a restart writes nothing": the informers (ClusterEndpoints, our
EndpointSlices, Services) sync first; only then does the source build the desired state, adopting
the readiness already published in our slices as each check's initial state; only then do the
writer and the prober start. Shutdown (SIGTERM): stop probing, flush pending writes and status,
drain Events, close — well inside the 10 s a Pod gets by default.
"""

from __future__ import annotations

import asyncio
import logging
import platform
from dataclasses import dataclass
from typing import Any

from epctl import __version__
from epctl.api.spec import DRAIN_ANNOTATION
from epctl.endpoints import MANAGED_LABEL, MANAGED_VALUE
from epctl.health import HealthServer
from epctl.heap import HeapKeeper
from epctl.kube.client import ENDPOINTS as V1_ENDPOINTS
from epctl.kube.client import ENDPOINTSLICES, SERVICES, ApiError, KubeClient
from epctl.kube.events import EventRecorder
from epctl.kube.informer import Informer
from epctl.kube.lease import LeaderElector, default_identity
from epctl.kube.priority import DEFAULT_BOUND, Turn
from epctl.kube.secrets import secret_credentials
from epctl.kube.status import StatusWriter
from epctl.kube.writer import Writer
from epctl.lifecycle import until_terminated
from epctl.metrics import (
    BUILD,
    DESIRED_SLICES,
    ENDPOINTS,
    ENDPOINTS_DESIRED,
    GC_FULL_PAUSE,
    HANDOVERS,
    LEADER,
    NOT_SYNCED,
    NOT_SYNCED_REASONS,
    NUM_SLICES,
    SERVICE_ENDPOINTS,
    SHARD_TARGETS_OWNED,
    PerTargetMetrics,
    PrometheusDiscoveryMetrics,
    PrometheusInformerMetrics,
    PrometheusProbeMetrics,
    PrometheusShardMetrics,
    PrometheusWriterMetrics,
    api_request,
)
from epctl.orphans import orphaned
from epctl.probe.database import DatabaseProber
from epctl.probe.scheduler import Scheduler
from epctl.shard.fence import Fence
from epctl.shard.member import ShardMember
from epctl.slices import MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL
from epctl.sources.clusterendpoint import CLUSTERENDPOINTS, ClusterEndpointSource
from epctl.sources.mirror import MirrorSource, mirror_source
from epctl.sources.openstack import OpenStackSource
from epctl.sources.topology import NODES, TopologySource
from epctl.state import DesiredState, TargetKey
from epctl.tasks import EarliestDeadline, cancel_and_wait, core_health, within
from epctl.topology import trim_node

log = logging.getLogger(__name__)
Obj = dict[str, Any]


@dataclass
class ControllerSettings:
    namespace: str | None = None
    batch_delay: float = 0.1
    max_batch_delay: float = 1.0
    max_endpoints_per_slice: int = 100
    max_concurrent_probes: int = 1000
    write_concurrency: int = 8
    allow_loopback_hosts: bool = False
    manage_endpoints: bool = True  # also own the v1 Endpoints of every managed Service (epctl.endpoints)
    resolve_interval: float = 30.0
    metrics_addr: str | None = ":8080"
    sync_timeout: float = 120.0
    mirror_pairs: dict[tuple[str, str], tuple[str, str]] | None = None  # target -> source, from flags
    leader_elect: bool = False
    shard: bool = False  # every replica owns a share of the targets (member Leases); else one leader
    leader_election_namespace: str = "default"
    leader_election_id: str = "epctl-controller"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    identity: str | None = None
    pod_owner: dict[str, str] | None = None  # the Pod (name, uid, namespace) our member Lease goes with
    per_target_metrics: bool = False
    max_probe_rate: float = 0.0  # probes started per second at most (0: as many as the loop affords)
    openstack_timeout: float = 10.0  # per OpenStack HTTP request
    openstack_retry_base: float = 5.0  # first retry after a failed poll; doubles up to the max
    openstack_retry_max: float = 300.0
    terminating_grace: float = 0.0  # seconds a host that left a ClusterEndpoint is published terminating
    routing_first_bound: float = DEFAULT_BOUND  # s a status patch or Event waits for routing writes at most
    topology_hints: bool = True  # watch Nodes and write hints.forZones where a Service asks (needs nodes list/watch)


class Controller:
    def __init__(self, client: KubeClient, settings: ControllerSettings) -> None:
        self.client, self.settings = client, settings
        ns = settings.namespace
        informer_metrics = PrometheusInformerMetrics()
        self.ceps = Informer(client, CLUSTERENDPOINTS, ns, metrics=informer_metrics, name="clusterendpoints",
                             drop_last_applied=True,  # only status is written, as a merge patch
                             keep_managers_of=(DRAIN_ANNOTATION,),  # who drained a host, for its Event
                             frozen=True)  # the source keeps the frozen record, and interns the specs it parses
        # read per reconcile, never kept by a subscriber: stored as deflated JSON (epctl.kube.frozen)
        self.slices = Informer(client, ENDPOINTSLICES, ns, label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY}",
                               metrics=informer_metrics, name="endpointslices", frozen=True)
        self.services = Informer(client, SERVICES, ns, metrics=informer_metrics, name="services", frozen=True)
        self.endpoints = (Informer(client, V1_ENDPOINTS, ns, label_selector=f"{MANAGED_LABEL}={MANAGED_VALUE}",
                                   metrics=informer_metrics, name="endpoints", frozen=True)
                          if settings.manage_endpoints else None)
        self.state = DesiredState()
        # status patches and Events each get half the routing writer's concurrency (they go after it)
        side = max(1, settings.write_concurrency // 2)
        self.events = EventRecorder(client, concurrency=side)
        self.status = StatusWriter(client, CLUSTERENDPOINTS, self.ceps.peek, delay=settings.batch_delay,
                                   concurrency=side)
        self.scheduler = Scheduler(lambda t: self.source.on_transition(t),
                                   max_concurrent=settings.max_concurrent_probes, metrics=PrometheusProbeMetrics(),
                                   target_metrics=PerTargetMetrics() if settings.per_target_metrics else None,
                                   max_rate=settings.max_probe_rate or None,
                                   on_delayed=lambda delayed: self.source.probes_delayed(delayed),
                                   api_backlog=lambda: self.writer.backlogged() or self.status.backlogged(),
                                   database_prober=DatabaseProber(secret_credentials(client)))
        self.discovery = OpenStackSource(client, timeout=settings.openstack_timeout,
                                         retry_base=settings.openstack_retry_base,
                                         retry_max=settings.openstack_retry_max, metrics=PrometheusDiscoveryMetrics(),
                                         informer_metrics=informer_metrics)
        self.source = ClusterEndpointSource(self.state, self.scheduler, self.ceps, self.slices, self.status,
                                            self.events, allow_loopback=settings.allow_loopback_hosts,
                                            resolve_interval=settings.resolve_interval, discovery=self.discovery,
                                            services=self.services,
                                            mirrored=lambda svc: mirror_source(svc, settings.mirror_pairs),
                                            terminating_grace=settings.terminating_grace)
        self.ceps.subscribe(lambda event: self.status.observed(event.obj))  # our own patches' echoes
        self.writer = Writer(client, self.state, self.slices, self.services, batch_delay=settings.batch_delay,
                             max_batch_delay=settings.max_batch_delay, concurrency=settings.write_concurrency,
                             max_per_slice=settings.max_endpoints_per_slice, reporter=self.source,
                             metrics=PrometheusWriterMetrics(), endpoints=self.endpoints)
        self.writer.owner_exists = self._still_claimed  # before re-creating a Service someone deleted
        self.mirror = MirrorSource(client, self.state, self.services, self.events,
                                   flag_pairs=settings.mirror_pairs)
        self.state.on_dirty = self.writer.notify
        self.writer.on_listed = self.source.follow_not_ready
        self.writer.may_ready = self.source.may_ready
        # routing first: slices and Endpoints, then status patches, then Events (epctl.kube.priority)
        self.status.turn = Turn([self.writer], bound=settings.routing_first_bound)
        self.events.turn = Turn([self.writer, self.status], bound=settings.routing_first_bound)
        self.nodes: Informer | None = None
        self.topology: TopologySource | None = None
        if settings.topology_hints:
            self.nodes = Informer(client, NODES, None, metrics=informer_metrics, name="nodes", trim=trim_node)
            self.topology = TopologySource(self.state, self.nodes, self.services, self.events, self.writer.notify)
            self.writer.decorate = self.topology.decorate
            self.topology.on_verdict = self.source.topology_changed
            self.source.topology = self.topology.verdict
        self._grace_timer = EarliestDeadline(self.state.expire)
        self.state.on_deadline = self._grace_timer.at  # leaving endpoints' grace (state.py)
        self.state.on_grace_over = self.source.grace_over
        self._service_series: set[tuple[str, str]] = set()  # epctl_service_endpoints series exported
        self._not_synced_reasons: set[str] = set(NOT_SYNCED_REASONS)  # epctl_clusterendpoints_not_synced series
        self.health = (HealthServer(settings.metrics_addr, self.healthy, self.ready)
                       if settings.metrics_addr else None)
        self._core: list[asyncio.Task[None]] = []
        self._gauge_task: asyncio.Task[None] | None = None
        self.heap = HeapKeeper(on_full_collection=GC_FULL_PAUSE.observe)
        self.elector: LeaderElector | None = None
        self.member: ShardMember | None = None
        self.fence = Fence(self.owns)  # without election: every target, forever
        if settings.shard:
            identity = settings.identity or default_identity()
            pod = settings.pod_owner or {}
            # the garbage collector deletes at once an object whose owner is in another namespace
            owner = ({"apiVersion": "v1", "kind": "Pod", "name": pod["name"], "uid": pod["uid"]}
                     if pod and pod.get("namespace") == settings.leader_election_namespace else None)
            self.member = ShardMember(client, settings.leader_election_namespace, identity,
                                      group=settings.leader_election_id, lease_duration=settings.lease_duration,
                                      renew_deadline=settings.renew_deadline, retry_period=settings.retry_period,
                                      on_change=self._follow_ownership, legacy_leader=settings.leader_election_id,
                                      owner_reference=owner, metrics=PrometheusShardMetrics())
            self.fence = self.member.fence
        elif settings.leader_elect:
            self.elector = LeaderElector(client, settings.leader_election_namespace, settings.leader_election_id,
                                         identity=settings.identity, lease_duration=settings.lease_duration,
                                         renew_deadline=settings.renew_deadline, retry_period=settings.retry_period)
            self.fence = Fence(self.owns, self.elector.valid_until)
        for part in (self.writer, self.status, self.events, self.source, self.mirror):
            part.owns = self.owns
        for writer in (self.writer, self.status, self.events):
            writer.fence = self.fence  # every write asks it at the moment of sending

    def owns(self, key: TargetKey) -> bool:
        """May this replica probe and write the target ``key`` (a Service) now? One leader owns every
        target; with ``--shard`` each member holds its share (docs/design.md section 8)."""
        if self.member is not None:
            return self.member.holds(key)
        return self.elector is None or self.elector.is_leader

    async def _follow_ownership(self) -> None:
        """Ownership changed: let go of what is no longer ours and wait until nothing more is written
        for it (only then may the new owner start); take over what is newly ours, from caches at least
        as new as the handover (a lagging watch would otherwise hand us a host the previous owner had
        already marked not ready, and our repair would publish it ready again)."""
        await self._catch_up()
        released, acquired = self.source.reconcile_ownership()
        mirror_released, mirror_acquired = self.mirror.reconcile_ownership()
        # bounded: a handover never waits longer than the renew deadline for a slow write (renewals go
        # on meanwhile); what is still running then is cancelled, and the fence stops anything later
        bound = self.settings.renew_deadline
        await asyncio.gather(self.writer.release_unowned(bound), self.status.release_unowned(bound),
                             self.events.release_unowned(bound))
        await self._sweep()  # what changed while nobody held what we hold now (a pass over two caches)
        HANDOVERS.labels("released").inc(released + mirror_released)
        HANDOVERS.labels("acquired").inc(acquired + mirror_acquired)
        if released or acquired or mirror_released or mirror_acquired:
            log.info("targets handed over", extra={"released": released + mirror_released,
                                                   "acquired": acquired + mirror_acquired})

    async def _catch_up(self) -> None:
        """Before taking targets over: wait, briefly, until the caches whose state a takeover adopts
        (ClusterEndpoint status, our slices and Endpoints) have seen the resourceVersion of the moment
        ownership was granted (the converged listing; the won Lease), so the previous owner's last
        writes are in them. Bounded by the retry period: a quiet resource's watch advances only with
        kube-apiserver's bookmarks (about one a minute), and what the wait does not cover the
        not-ready rule does (``ClusterEndpointSource.follow_not_ready``)."""
        rv = ""
        if self.member is not None:
            rv, self.member.converged_at_rv = self.member.converged_at_rv, ""
        elif self.elector is not None and self.elector.is_leader:
            rv, self.elector.acquired_rv = self.elector.acquired_rv, ""
        if not rv:
            return
        adopted = [self.ceps, self.slices, *([self.endpoints] if self.endpoints else [])]
        fresh = await asyncio.gather(*(i.caught_up(rv, self.settings.retry_period) for i in adopted))
        behind = [i.name for i, ok in zip(adopted, fresh, strict=True) if not ok]
        if behind:
            log.info("taking over from caches that have not shown the handover yet", extra={"informers": behind})

    async def _sweep(self) -> None:
        """Delete the slices and Endpoints of held targets that no front-end claims any more (edits made
        while no controller held them: docs/design.md section 8). A candidate from the caches is
        confirmed by a fresh read of its owner (a ClusterEndpoint) or its Service (a mirror) first:
        one cache may lag behind another, and a live ClusterEndpoint's slices must never go."""
        objects = [((o["metadata"].get("namespace", ""),
                     (o["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL, "")), o)
                   for o in self.slices.cache.values()]
        if self.endpoints is not None:
            objects += [((o["metadata"].get("namespace", ""), o["metadata"].get("name", "")), o)
                        for o in self.endpoints.cache.values()]
        uids = {str(o["metadata"].get("uid", "")) for o in self.ceps.cache.values()}

        def mirrored(key: TargetKey) -> bool:
            service = self.services.get(*key)
            return service is not None and mirror_source(service, self.settings.mirror_pairs) is not None

        candidates = orphaned(objects, claimed=lambda key: self.state.get(key) is not None, holds=self.owns,
                              clusterendpoint_uids=uids, mirrored=mirrored)
        gone: set[TargetKey] = set()
        for key, ref in candidates.items():
            try:
                if await self._still_claimed(key, ref):
                    continue
            except ApiError as err:
                log.warning("could not confirm an unclaimed target: %s", err, extra={"target": "/".join(key)})
                continue
            gone.add(key)
        if gone:
            log.info("deleting what no front-end claims any more",
                     extra={"targets": ",".join("/".join(k) for k in sorted(gone))})
            self.writer.sweep(gone)

    async def _still_claimed(self, key: TargetKey, owner: Obj | None) -> bool:
        """A fresh read: does the owning ClusterEndpoint still exist, or does the Service still ask to be
        mirrored?"""
        path = (CLUSTERENDPOINTS.path(key[0], str(owner.get("name", ""))) if owner is not None
                else SERVICES.path(*key))
        try:
            found = await self.client.request("GET", path)
        except ApiError as err:
            if err.code == 404:
                return False
            raise
        if owner is not None:
            return bool(found.get("metadata", {}).get("uid") == owner.get("uid"))
        return mirror_source(found, self.settings.mirror_pairs) is not None

    @property
    def informers(self) -> list[Informer]:
        return [self.ceps, self.slices, self.services, *([self.endpoints] if self.endpoints else []),
                *([self.nodes] if self.nodes else [])]

    def ready(self) -> tuple[bool, str]:
        waiting = [i.name for i in self.informers if not i.synced.is_set()]
        return (not waiting, f"waiting for informers: {', '.join(waiting)}" if waiting else "synced")

    def healthy(self) -> tuple[bool, str]:
        return core_health(self._core)

    def _refresh_gauges(self) -> None:
        """State gauges, recomputed on the loop (never read from the metrics thread)."""
        size = self.settings.max_endpoints_per_slice
        desired = ready = needed = 0
        seen: set[tuple[str, str]] = set()
        for key, target in self.state.targets.items():
            total = healthy = 0
            for group in target.groups.values():
                total += len(group.endpoints)
                healthy += sum(1 for e in group.endpoints.values() if e.ready)
                needed += -(-len(group.endpoints) // size)
            desired, ready = desired + total, ready + healthy
            if self.source.conflicted(key):
                continue  # not a managed Service: another controller owns it, epctl publishes nothing there
            SERVICE_ENDPOINTS.labels(key[0], key[1], "ready").set(healthy)
            SERVICE_ENDPOINTS.labels(key[0], key[1], "not_ready").set(total - healthy)
            seen.add(key)
        for gone in self._service_series - seen:  # a deleted Service's series go with it
            for state in ("ready", "not_ready"):
                SERVICE_ENDPOINTS.remove(gone[0], gone[1], state)
        self._service_series = seen
        ENDPOINTS_DESIRED.set(desired)
        ENDPOINTS.labels("ready").set(ready)
        ENDPOINTS.labels("not_ready").set(desired - ready)
        DESIRED_SLICES.set(needed)
        NUM_SLICES.set(len(self.slices.cache))
        SHARD_TARGETS_OWNED.set(len(self.state.targets))
        not_synced = self.source.not_synced()
        self._not_synced_reasons |= set(not_synced)
        for reason in self._not_synced_reasons:  # back to 0, never removed: the alert sees the recovery
            NOT_SYNCED.labels(reason).set(not_synced.get(reason, 0))
        if self.member is not None:
            LEADER.set(1 if self.leading else 0)

    async def _gauges(self) -> None:
        while True:
            self._refresh_gauges()
            await asyncio.sleep(5.0)

    async def start(self) -> None:
        BUILD.info({"version": __version__, "python": platform.python_version()})
        if self.health:
            await self.health.start()
        self._core = [informer.start() for informer in self.informers]
        await within(self.settings.sync_timeout, asyncio.gather(*(i.synced.wait() for i in self.informers)))
        self.source.start()  # owned targets only: a standby or another member's target stays parsed, idle
        await self.source.settle()
        self.heap.start()  # caches and checks are in: keep full GC pauses off the event loop
        self.mirror.start()
        self._core += [self.writer.start(), self.status.start(), self.events.start()]
        await self._sweep()
        self._gauge_task = asyncio.create_task(self._gauges(), name="gauges")
        self.scheduler.start()
        self.discovery.resume()
        if self.member is not None:
            self._core.append(asyncio.create_task(self.member.run(), name="shard-membership"))
        elif self.elector is not None:
            self._core.append(asyncio.create_task(self.elector.run(self._lead, self._unlead), name="leader-election"))
        else:
            LEADER.set(1)
        log.info("controller started", extra={"namespace": self.settings.namespace or "all",
                                               "clusterendpoints": len(self.ceps.cache)})

    async def _lead(self) -> None:
        """Gaining leadership: take every target over from what is published."""
        LEADER.set(1)
        await self._follow_ownership()

    async def _unlead(self) -> None:
        """Losing leadership: ``owns`` already says no; stop probing and wait for writes in flight."""
        LEADER.set(0)
        await self._follow_ownership()

    @property
    def leading(self) -> bool:
        """Writing anything at all (the leader; with --shard, a member whose ring converged)."""
        if self.member is not None:
            return self.member.holdings.converged
        return self.elector is None or self.elector.is_leader

    async def stop(self, flush_timeout: float = 8.0) -> None:
        LEADER.set(0)
        self._grace_timer.cancel()
        if self._gauge_task is not None:
            self._gauge_task.cancel()
        for task in self._core[len(self.informers):]:
            if task.get_name() in ("leader-election", "shard-membership"):
                await cancel_and_wait(task)
        await self.scheduler.stop()
        await self.discovery.stop()
        await self.source.stop()
        await self.mirror.stop()
        flushed = await self.writer.flush(flush_timeout * 0.6)
        await self.status.flush(flush_timeout * 0.2)
        await self.events.drain(flush_timeout * 0.1)
        if self.elector is not None:
            await self.elector.release()  # after the flush: a standby takes over at its next retry
        if self.member is not None:
            await self.member.release()  # after the flush: the others take our targets at their next look
        await self.writer.stop()
        await self.status.stop()
        await self.events.stop()
        for informer in self.informers:
            await informer.stop()
        await self.heap.stop()
        if self.health:
            await self.health.stop()
        log.info("controller stopped", extra={"flushed": flushed})


async def run_controller(settings: ControllerSettings, kubeconfig: str | None, context: str | None) -> int:
    client = await KubeClient.connect(kubeconfig, context, pool_size=16 + 4 * settings.write_concurrency,
                                      on_response=api_request)
    controller = Controller(client, settings)
    try:
        await controller.start()
        await until_terminated()
        log.info("signal received: shutting down")
    finally:
        await controller.stop()
        await client.close()
    return 0
