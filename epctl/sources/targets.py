"""Building a Target's port groups and probe checks from ports and addresses.

Shared by the ClusterEndpoint source and ``epctl manager`` so both go through exactly the same
engine: one check per (port, address) with the readiness already published in our slices as its
initial state (a restart flips nothing), one port group per (port, address family).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from epctl.api.parse import host_error
from epctl.api.spec import PortSpec
from epctl.probe.scheduler import Check, CheckKey, Scheduler
from epctl.slices import GROUP_LABEL, MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL, group_hash
from epctl.sources.openstack_select import DiscoveredServer
from epctl.state import Endpoint, PortGroup, SlicePort, Target, TargetKey

log = logging.getLogger(__name__)
Obj = dict[str, Any]


def family(address: str) -> str:
    return "IPv6" if ":" in address else "IPv4"


def _our_slices(slices: Iterable[Obj], key: TargetKey) -> Iterable[Obj]:
    for obj in slices:
        meta = obj["metadata"]
        if meta.get("namespace") == key[0] and (meta.get("labels") or {}).get(SERVICE_NAME_LABEL) == key[1]:
            yield obj


def published_readiness(slices: Iterable[Obj], key: TargetKey) -> dict[tuple[str, str], bool]:
    """(port name or number, address) -> the ``ready`` condition our slices publish for ``key``.

    One pass over the slices per Target (not one per endpoint: discovery makes Targets of hundreds
    of endpoints, and the slice cache holds every Target's slices)."""
    index: dict[tuple[str, str], bool] = {}
    for obj in _our_slices(slices, key):
        labels = {label for p in obj.get("ports") or [] for label in (p.get("name") or "", str(p.get("port")))}
        for endpoint in obj.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            # the probe's verdict: serving (a drained or leaving endpoint is ready=false but still probed)
            ready = (conditions.get("serving") if conditions.get("serving") is not None
                     else conditions.get("ready")) is not False
            for address in endpoint.get("addresses") or []:
                for label in labels:
                    index.setdefault((label, address), ready)
    return index


def published_addresses(slices: Iterable[Obj], key: TargetKey) -> dict[str, str]:
    """address -> hostname (or the address) of every endpoint our slices publish for ``key``."""
    found: dict[str, str] = {}
    for obj in _our_slices(slices, key):
        for endpoint in obj.get("endpoints") or []:
            for address in endpoint.get("addresses") or []:
                found[address] = endpoint.get("hostname") or address
    return found


def published_terminating(slices: Iterable[Obj], key: TargetKey) -> frozenset[str]:
    """The addresses our slices publish terminating for ``key``: drained or leaving. Before discovery
    has answered, its stand-in (what the slices publish) holds these in maintenance: which server a
    drain names, or whether a leaving one is still there, is the cloud's to say, and until it does
    such a host must not be probed and published ready again."""
    return frozenset(address for obj in _our_slices(slices, key) for endpoint in obj.get("endpoints") or []
                     if (endpoint.get("conditions") or {}).get("terminating")
                     for address in endpoint.get("addresses") or [])


def _skeleton(port: PortSpec, address_family: str) -> PortGroup:
    return PortGroup(address_family, (SlicePort(port.name, port.target_port, port.protocol),), {})


def published_endpoints(slices: Iterable[Obj], key: TargetKey,
                        ports: Sequence[PortSpec]) -> dict[tuple[str, str], Endpoint]:
    """(group id, address) -> the endpoint our slices publish for ``key`` in the port group of one of
    ``ports`` (matched by the slices' port-group label). ``DesiredState.set_target`` gives those the
    target no longer lists their grace when it is not held here yet (a restart, a handover); an
    endpoint of a port that is gone leaves at once, as it does when it goes live."""
    by_label = {group_hash(_skeleton(port, address_family)): f"{port.label}/{address_family}"
                for port in ports for address_family in ("IPv4", "IPv6")}
    found: dict[tuple[str, str], Endpoint] = {}
    for obj in _our_slices(slices, key):
        labels = obj["metadata"].get("labels") or {}
        group_id = by_label.get(labels.get(GROUP_LABEL, ""))
        if group_id is None or labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
            continue
        for endpoint in obj.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            ready = conditions.get("ready") is not False
            serving = conditions.get("serving") if conditions.get("serving") is not None else ready
            for address in endpoint.get("addresses") or []:
                found[(group_id, address)] = Endpoint(address, ready, serving is not False,
                                                      bool(conditions.get("terminating")), zone=endpoint.get("zone"))
    return found


def groups_to_keep(grace: float, held: Target | None, leaving: Iterable[tuple[str, str]],
                   left: Iterable[tuple[str, str]] | None) -> set[str]:
    """The port groups :func:`build_groups` keeps even when no host of their port is listed any more,
    so that endpoints leaving within a grace have a group to leave from: the groups ``held`` publishes
    something in (the port's last host may be going now), those of the store's ``leaving`` endpoints
    and those of the endpoints ``left`` about to be given their grace (not held yet)."""
    if grace <= 0:
        return set()
    keep = {group_id for group_id, _ in (*leaving, *(left or ()))}
    if held is not None:
        keep.update(group_id for group_id, group in held.groups.items() if group.endpoints)
    return keep


def published_zones(slices: Iterable[Obj], key: TargetKey) -> dict[str, str]:
    """address -> zone our slices publish for ``key`` (a restart keeps zones until discovery answers)."""
    return {address: endpoint["zone"] for obj in _our_slices(slices, key) for endpoint in obj.get("endpoints") or []
            if endpoint.get("zone") for address in endpoint.get("addresses") or []}


def discovered_zones(servers: Iterable[DiscoveredServer]) -> dict[str, str]:
    """address -> availability zone of the discovered servers that have one."""
    return {address: server.zone for server in servers if server.zone for address in server.addresses}


def discovered_endpoints(servers: Iterable[DiscoveredServer], allow_loopback: bool) -> dict[str, str]:
    """address -> server name for discovered servers, without the addresses an EndpointSlice
    refuses (loopback, link-local, ... unless allowed), each skip logged."""
    found: dict[str, str] = {}
    for server in servers:
        for address in server.addresses:
            problem = host_error(address, allow_loopback)
            if problem:
                log.warning("discovered address skipped", extra={"server": server.name, "address": address,
                                                                 "error": problem})
            else:
                found[address] = server.name
    return found


def build_groups(key: TargetKey, ports: Sequence[PortSpec], addresses: Callable[[PortSpec], Iterable[str]],
                 scheduler: Scheduler, slices: Iterable[Obj],
                 on_adopted_unhealthy: Callable[[CheckKey], None] | None = None,
                 reported: Mapping[tuple[str, str], bool] | None = None,
                 drained: Collection[str] = (), zones: Mapping[str, str] | None = None,
                 keep: Collection[str] = ()) -> tuple[dict[str, PortGroup], list[CheckKey]]:
    """Port groups for ``key``, with checks upserted; returns (groups, the checks it removed).
    ``slices``: our EndpointSlices of ``key`` (other slices are skipped).

    A new check starts from the readiness our slices publish for it, else from ``reported``
    ((port label, address or "*" for any other address of the port) -> ready, e.g. what a
    ClusterEndpoint's own status says), so a restart flips nothing even for a target whose slices
    are not ours (yet).

    ``drained`` addresses are in maintenance: still probed, published ready=false, serving=<probe>,
    terminating=true. ``zones``: address -> zone, for ``endpoints[].zone``. ``keep``: group ids
    that exist even with no address listed (they hold leaving endpoints: the port's last host went,
    and its port is still there); an empty group publishes nothing."""
    target_name = f"{key[0]}/{key[1]}"
    published = {**(reported or {}),
                 **published_readiness(slices, key)}
    groups: dict[str, PortGroup] = {}
    wanted: set[CheckKey] = set()
    probed: list[tuple[PortGroup, str, CheckKey]] = []
    for port in ports:
        label = port.label
        for address in sorted(set(addresses(port))):
            ready = True
            if port.probe is not None:
                check_key = CheckKey(target_name, label, address)
                wanted.add(check_key)
                initial = published.get((label, address), published.get((label, "*")))
                if initial is False and on_adopted_unhealthy is not None:
                    on_adopted_unhealthy(check_key)
                scheduler.upsert(Check(check_key, port.probe, port.probe_port, port.timing), initial=initial)
                state = scheduler.state(check_key)
                ready = bool(state and state.healthy)
            group = groups.setdefault(f"{label}/{family(address)}", PortGroup(family(address), (SlicePort(
                port.name, port.target_port, port.protocol),), {}))
            group.endpoints[address] = _endpoint(address, ready, address in drained, (zones or {}).get(address))
            if port.probe is not None:
                probed.append((group, address, CheckKey(target_name, label, address)))
    for port in ports if keep else ():
        for address_family in ("IPv4", "IPv6"):
            if f"{port.label}/{address_family}" in keep:
                groups.setdefault(f"{port.label}/{address_family}", _skeleton(port, address_family))
    stale = [k for k in scheduler.keys_of(target_name) if k not in wanted]
    for check_key in stale:
        scheduler.remove(check_key)
    if stale:  # a removed check can change the others' readiness (a primary claimant left: roles.arbitrate)
        for group, address, check_key in probed:
            state = scheduler.state(check_key)
            group.endpoints[address] = _endpoint(address, bool(state and state.healthy), address in drained,
                                                 group.endpoints[address].zone)
    return groups, stale


def _endpoint(address: str, healthy: bool, drained: bool, zone: str | None) -> Endpoint:
    """A drained endpoint is published not ready, serving as its probe says, terminating."""
    if drained:
        return Endpoint(address, False, healthy, True, zone=zone)
    return Endpoint(address, healthy, healthy, zone=zone)
