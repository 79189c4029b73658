"""``epctl manager``: drop-in for kube-endpoint-manager (one Service, endpoints from OpenStack).

Same env vars and flags as the seed (ENDPOINT_TYPE, SYNC_PERIOD, K8S_NAMESPACE, K8S_ENDPOINT,
K8S_API_SERVER, K8S_API_TOKEN, FILTER_NAME, FILTER_METADATA, OS_*), the same filter semantics
(``re.match``: anchored at the start, not the end; FILTER_METADATA is space-separated
``keyregex:valueregex`` split on the first colon; a VM's ``*endpoint.network.name/version``
metadata picks its network), but the defects fixed: only ACTIVE servers by default, errors keep
the last endpoints instead of crashing, an unchanged cloud writes nothing, an empty successful
answer empties the Service, domains are configurable, API TLS is verified.

It runs the same engine as ClusterEndpoints — OpenStack poller, probe scheduler (optional
``--probe``), desired state, slice planner and debounced writer — on the EndpointSlices of one
pre-created selector-less Service whose ports it follows. Slices are owned by that Service, so
deleting it removes them. A missing Service is an error logged until it appears (watched, so it is
picked up at once).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from epctl import __version__
from epctl.api.spec import (
    GRPCProbe,
    HTTPProbe,
    PortSpec,
    Probe,
    ProbeTiming,
    ServerQuery,
    TCPProbe,
    UDPProbe,
)
from epctl.endpoints import MANAGED_LABEL, MANAGED_VALUE
from epctl.health import HealthServer
from epctl.kube.client import ENDPOINTS, ENDPOINTSLICES, SERVICES, KubeClient
from epctl.kube.config import SERVICE_ACCOUNT, ClusterConfig
from epctl.kube.events import EventRecorder
from epctl.kube.informer import Informer
from epctl.kube.writer import Writer
from epctl.lifecycle import until_terminated
from epctl.metrics import (
    PrometheusDiscoveryMetrics,
    PrometheusInformerMetrics,
    PrometheusProbeMetrics,
    PrometheusWriterMetrics,
    api_request,
)
from epctl.probe.scheduler import CheckKey, Scheduler, Transition
from epctl.slices import MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL, service_index
from epctl.sources.openstack import DiscoveryUpdate, OpenStackSource
from epctl.sources.openstack_auth import Credentials, credentials_from_env
from epctl.sources.targets import (
    build_groups,
    discovered_endpoints,
    discovered_zones,
    family,
    groups_to_keep,
    published_addresses,
    published_endpoints,
    published_terminating,
    published_zones,
)
from epctl.state import DesiredState, Target
from epctl.tasks import EarliestDeadline, cancel_and_wait, core_health

log = logging.getLogger(__name__)
Obj = dict[str, Any]


class ManagerConfigError(ValueError):
    """A bad flag or env value; the message says which and why."""


@dataclass
class ManagerSettings:
    namespace: str
    service: str
    endpoint_type: str = "openstack"
    sync_period: float = 5.0
    filter_name: str | None = None
    filter_metadata: str | None = None
    filter_status: tuple[str, ...] = ("ACTIVE",)
    network: str | None = None
    address_kind: str = "fixed"
    ip_version: int = 4
    keep_last_on_empty: bool = False
    terminating_grace: float = 0.0  # seconds a server gone from discovery stays published terminating
    probe: Probe | None = None
    timing: ProbeTiming = field(default_factory=ProbeTiming)
    metrics_addr: str | None = ":8080"
    allow_loopback_hosts: bool = False
    manage_endpoints: bool = True  # also own the Service's v1 Endpoints (replaces the seed's stale one)
    batch_delay: float = 0.1
    max_batch_delay: float = 1.0
    max_endpoints_per_slice: int = 100
    openstack_timeout: float = 10.0
    openstack_retry_base: float = 5.0
    openstack_retry_max: float = 300.0


# --- pure: the seed's settings as ours ---------------------------------------------------------------

def parse_filter_metadata(text: str | None) -> tuple[tuple[str, str], ...]:
    """``"role:db.* env:prod"`` -> ((key regex, value regex), ...) with the seed's ``re.match``
    semantics (prefix match) expressed as full matches. Splits on the first colon only, so values
    may contain colons (``url:http://.*``)."""
    pairs: list[tuple[str, str]] = []
    for item in (text or "").split():
        key, colon, value = item.partition(":")
        if not colon or not key:
            raise ManagerConfigError(f"FILTER_METADATA: {item!r} is not keyregex:valueregex")
        for part in (key, value):
            try:
                re.compile(part)
            except re.error as exc:
                raise ManagerConfigError(f"FILTER_METADATA: {part!r} is not a valid regex: {exc}") from None
        pairs.append((f"(?:{key})(?s:.*)", f"(?:{value})(?s:.*)"))
    return tuple(pairs)


def seed_query(settings: ManagerSettings) -> ServerQuery:
    name = None
    if settings.filter_name:
        try:
            re.compile(settings.filter_name)
        except re.error as exc:
            raise ManagerConfigError(f"FILTER_NAME: not a valid regex: {exc}") from None
        name = f"^(?:{settings.filter_name})"  # the seed used re.match
    return ServerQuery(name_regex=name, metadata=parse_filter_metadata(settings.filter_metadata),
                       statuses=tuple(sorted({s.upper() for s in settings.filter_status})),
                       network=settings.network, address_kind=settings.address_kind, ip_version=settings.ip_version)


def parse_probe(text: str | None) -> Probe | None:
    """``tcp`` | ``http:/path`` | ``https:/path`` | ``udp[:data]`` | ``grpc[:service]`` | ``none``."""
    if not text or text == "none":
        return None
    kind, _, arg = text.partition(":")
    if kind == "tcp" and not arg:
        return TCPProbe()
    if kind in ("http", "https"):
        path = arg or "/"
        if not path.startswith("/"):
            raise ManagerConfigError(f"--probe {text!r}: the HTTP path must start with '/'")
        return HTTPProbe(path=path, scheme=kind.upper())
    if kind == "udp":
        return UDPProbe(data=arg.encode())
    if kind == "grpc":
        return GRPCProbe(service=arg)
    raise ManagerConfigError(f"--probe {text!r}: expected tcp, http:/path, https:/path, udp[:data], grpc[:service] "
                             "or none")


def service_ports(service: Obj, probe: Probe | None, timing: ProbeTiming) -> tuple[list[PortSpec], list[str]]:
    """Ports of the managed Service as the endpoints serve them (targetPort), and any problems."""
    ports: list[PortSpec] = []
    problems: list[str] = []
    for raw in (service.get("spec") or {}).get("ports") or []:
        port = int(raw.get("port") or 0)
        target = raw.get("targetPort", port)
        if isinstance(target, str):
            if target.isdigit():
                target = int(target)
            else:
                problems.append(f"port {raw.get('name') or port}: named targetPort {target!r} cannot be resolved "
                                f"on VMs; using port {port}")
                target = port
        ports.append(PortSpec(name=raw.get("name") or "", protocol=raw.get("protocol") or "TCP", port=port,
                              target_port=int(target), hosts=(), probe=probe, timing=timing))
    return ports, problems


def cluster_config(api_server: str | None, token: str | None, ca_file: str | None, insecure: bool,
                   sa_root: str = SERVICE_ACCOUNT) -> ClusterConfig:
    """K8S_API_SERVER / K8S_API_TOKEN as the seed took them, but verified: the CA is the pod's
    service-account CA unless given; only an explicit ``--insecure-skip-tls-verify`` skips it."""
    server = api_server or "kubernetes.default.svc"
    if "://" not in server:
        server = f"https://{server}"
    if server.startswith("http://"):
        raise ManagerConfigError(f"K8S_API_SERVER {server}: plain HTTP would send the token in clear; use https")
    ca = ca_file or f"{sa_root}/ca.crt"
    if not insecure and not os.path.exists(ca):
        raise ManagerConfigError(f"cannot verify the API server's certificate: no CA file at {ca} "
                                 "(pass --k8s-ca-file, or --insecure-skip-tls-verify to skip verification)")
    token_file = None if token else f"{sa_root}/token"
    return ClusterConfig(server=server.rstrip("/"), ca_file=None if insecure else ca, token=token,
                         token_file=token_file, insecure=insecure)


# --- the engine around one Service ---------------------------------------------------------------------

class Manager:
    def __init__(self, client: KubeClient, settings: ManagerSettings, credentials: Credentials) -> None:
        self.client, self.settings, self.credentials = client, settings, credentials
        self.key = (settings.namespace, settings.service)
        self.query = seed_query(settings)
        informer_metrics = PrometheusInformerMetrics()
        self.services = Informer(client, SERVICES, settings.namespace,
                                 field_selector=f"metadata.name={settings.service}", metrics=informer_metrics,
                                 name="service")
        self.slices = Informer(client, ENDPOINTSLICES, settings.namespace,
                               label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY},{SERVICE_NAME_LABEL}={settings.service}",
                               metrics=informer_metrics, name="endpointslices")
        self.endpoints = (Informer(client, ENDPOINTS, settings.namespace, metrics=informer_metrics, name="endpoints",
                                   field_selector=f"metadata.name={settings.service}",
                                   label_selector=f"{MANAGED_LABEL}={MANAGED_VALUE}")
                          if settings.manage_endpoints else None)
        self.state = DesiredState()
        self.events = EventRecorder(client)
        self.scheduler = Scheduler(self._on_transition, metrics=PrometheusProbeMetrics())
        self.discovery = OpenStackSource(None, timeout=settings.openstack_timeout,
                                         retry_base=settings.openstack_retry_base,
                                         retry_max=settings.openstack_retry_max, metrics=PrometheusDiscoveryMetrics())
        self.writer = Writer(client, self.state, self.slices, self.services, batch_delay=settings.batch_delay,
                             max_batch_delay=settings.max_batch_delay, max_per_slice=settings.max_endpoints_per_slice,
                             reporter=self, metrics=PrometheusWriterMetrics(), endpoints=self.endpoints)
        self.state.on_dirty = self.writer.notify
        self._grace_timer = EarliestDeadline(self.state.expire)
        self.state.on_deadline = self._grace_timer.at  # leaving endpoints' grace (state.py)
        self.health = HealthServer(settings.metrics_addr, self.healthy, self.ready) if settings.metrics_addr else None
        self.discovered: dict[str, str] | None = None  # address -> server name; None until known
        # published terminating (leaving): held so until the cloud first answers (targets.published_terminating)
        self.held_terminating: frozenset[str] = frozenset()
        self.zones: dict[str, str] = {}  # address -> availability zone (endpoints[].zone)
        self.discovery_state: tuple[bool, str, str] = (False, "Pending", "waiting for the first OpenStack answer")
        self.service_problem: str | None = None
        self._core: list[asyncio.Task[None]] = []
        self._nagger: asyncio.Task[None] | None = None

    @property
    def informers(self) -> list[Informer]:
        return [self.services, self.slices, *([self.endpoints] if self.endpoints else [])]

    # --- health ------------------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if not all(i.synced.is_set() for i in self.informers):
            return False, "waiting for informers"
        if self.service_problem:
            return False, self.service_problem
        return True, "ok"

    def healthy(self) -> tuple[bool, str]:
        return core_health(self._core)

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.health:
            await self.health.start()
        self._core = [i.start() for i in self.informers]
        await asyncio.gather(*(i.synced.wait() for i in self.informers))
        self.services.subscribe(lambda _event: self._materialise())
        self.discovery.watch_credentials(self.key, self.credentials, self.query, self.settings.sync_period,
                                         self._on_discovery, seed_network_metadata=True)
        self._materialise()
        self.scheduler.start()
        self.discovery.resume()
        self._core += [self.writer.start(), self.events.start()]
        self._nagger = asyncio.create_task(self._nag(), name="missing-service")
        log.info("manager started", extra={"service": "/".join(self.key), "auth_url": self.credentials.auth_url,
                                           "sync_period": self.settings.sync_period})

    async def stop(self, flush_timeout: float = 8.0) -> None:
        self._grace_timer.cancel()
        await cancel_and_wait(self._nagger)
        await self.scheduler.stop()
        await self.discovery.stop()
        await self.writer.flush(flush_timeout * 0.8)
        await self.events.drain(flush_timeout * 0.1)
        await self.writer.stop()
        await self.events.stop()
        for informer in self.informers:
            await informer.stop()
        if self.health:
            await self.health.stop()

    async def _nag(self) -> None:
        """A missing Service is an error until it exists: say so every minute, not just once."""
        while True:
            await asyncio.sleep(60.0)
            if self.service_problem:
                log.error(self.service_problem)

    # --- desired state -----------------------------------------------------------------------------

    def _service(self) -> Obj | None:
        service = self.services.get(*self.key)
        problem = None
        if service is None:
            problem = (f"Service {self.key[0]}/{self.key[1]} not found: create it (selector-less, with the ports "
                       "to serve); retrying as soon as it appears")
        elif (service.get("spec") or {}).get("selector"):
            problem = (f"Service {self.key[0]}/{self.key[1]} has a selector, so Kubernetes manages its "
                       "EndpointSlices; remove the selector to let epctl manager fill it")
        if problem != self.service_problem:
            self.service_problem = problem
            if problem:
                log.error(problem)
                self.state.remove_target(self.key)  # our slices go (a deleted Service's are GC'd anyway)
                if service is not None:
                    self.events.record({"apiVersion": "v1", "kind": "Service", **service}, "Warning",
                                       "ManagerRefused", problem)
        return None if problem else service

    def _materialise(self) -> None:
        service = self._service()
        if service is None:
            return
        ports, problems = service_ports(service, self.settings.probe, self.settings.timing)
        for problem in problems:
            log.warning(problem, extra={"service": "/".join(self.key)})
        ours = self.slices.indexed(service_index(*self.key))
        if self.discovered is None:  # before the first answer: what our slices already publish
            published = published_addresses(ours, self.key)
            if not published:
                return  # nothing of ours yet (a first start, maybe over the seed's Endpoints): wait for the cloud
            self.discovered = published
            self.held_terminating = published_terminating(ours, self.key)
            self.zones = published_zones(ours, self.key)
        addresses = set(self.discovered)
        grace = self.settings.terminating_grace
        # not held yet (a restart): servers that left meanwhile get their grace too
        left = published_endpoints(ours, self.key, ports) if grace > 0 and self.state.get(self.key) is None else None
        groups, _ = build_groups(self.key, ports, lambda _port: addresses, self.scheduler, ours, zones=self.zones,
                                 drained=self.held_terminating, keep=groups_to_keep(grace, self.state.get(self.key),
                                                     self.state.leaving.get(self.key, {}), left))
        if self.state.get(self.key) is None and self._undecided(ports, addresses):
            return  # first publication once every check has its first result (see ClusterEndpointSource)
        owner = {"apiVersion": "v1", "kind": "Service", "name": self.key[1],
                 "uid": service["metadata"].get("uid", ""), "controller": True, "blockOwnerDeletion": True}
        self.state.set_target(Target(self.key[0], self.key[1], groups, None, owner, grace=grace), left)

    def _undecided(self, ports: list[PortSpec], addresses: set[str]) -> bool:
        target = f"{self.key[0]}/{self.key[1]}"
        for port in ports:
            for address in addresses if port.probe is not None and not port.timing.initial_delay_seconds else ():
                state = self.scheduler.state(CheckKey(target, port.label, address))
                if state is None or state.healthy is None:
                    return True
        return False

    def _on_discovery(self, update: DiscoveryUpdate) -> None:
        state = (update.ok, update.reason, update.message)
        if state != self.discovery_state:
            level = logging.INFO if update.ok else logging.WARNING
            log.log(level, "OpenStack discovery: " + update.message if update.ok else
                    "OpenStack discovery failing; keeping the last known endpoints",
                    extra={"reason": update.reason, "error": "" if update.ok else update.message})
            self.discovery_state = state
        if not update.ok or update.servers is None:
            return
        found = discovered_endpoints(update.servers, self.settings.allow_loopback_hosts)
        if not found and self.discovered and self.settings.keep_last_on_empty:
            return
        zones = discovered_zones(update.servers)
        if found != self.discovered or zones != self.zones or self.held_terminating:
            self.discovered, self.zones = found, zones
            self.held_terminating = frozenset()  # the cloud has answered
            self._materialise()

    def _on_transition(self, transition: Transition) -> None:
        group_id = f"{transition.key.port}/{family(transition.key.address)}"
        if self.state.get(self.key) is None:
            self._materialise()  # not published yet: maybe every check is decided now
        self.state.set_ready(self.key, group_id, transition.key.address, transition.healthy)
        log.info("endpoint %s", "healthy" if transition.healthy else "unhealthy",
                 extra={"address": transition.key.address, "port": transition.key.port, "reason": transition.reason})

    # --- SyncReporter ------------------------------------------------------------------------------

    def synced(self, key: tuple[str, str]) -> None:
        pass

    def failed(self, key: tuple[str, str], reason: str, message: str, permanent: bool) -> None:
        log.warning("EndpointSlice write failed", extra={"reason": reason, "error": message})


async def run_manager(settings: ManagerSettings, config: ClusterConfig | None, os_vars: Mapping[str, str],
                      kubeconfig: str | None, context: str | None, allow_insecure: bool) -> int:
    """Run until SIGTERM/SIGINT. ``config`` (from K8S_API_SERVER/TOKEN) wins over kubeconfig/in-cluster."""
    if settings.endpoint_type.lower() != "openstack":
        raise ManagerConfigError(f"ENDPOINT_TYPE {settings.endpoint_type!r}: only 'openstack' is supported")
    credentials = credentials_from_env(os_vars)
    agent = f"epctl-manager/{__version__}"
    if config is not None:
        client = KubeClient(config, pool_size=8, on_response=api_request, user_agent=agent)
    else:
        client = await KubeClient.connect(kubeconfig, context, pool_size=8, allow_insecure=allow_insecure,
                                          on_response=api_request, user_agent=agent)
    manager = Manager(client, settings, credentials)
    try:
        await manager.start()
        await until_terminated()
        log.info("signal received: shutting down")
    finally:
        await manager.stop()
        await client.close()
    return 0
