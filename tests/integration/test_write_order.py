"""When much changes at once: routing writes first, then status, then Events; Events correlated and
summarised as client-go's EventCorrelator does (epctl.kube.priority, epctl.kube.events)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

from epctl.app import Controller
from epctl.kube.client import KubeClient
from epctl.testing.backends import TCPBackend, free_port
from epctl.testing.kubeapi import FaultRule, KubeAPIServer, RequestRecord
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import (
    CLUSTERENDPOINTS,
    cep,
    cep_of,
    endpoints_of,
    install_crd,
    running_controller,
)


def _kind(record: RequestRecord) -> str | None:
    if record.resource == "endpointslices" and record.verb == "update":
        return "slice"
    if record.resource == "endpoints" and record.verb == "update":
        return "endpoints"
    if record.resource == "clusterendpoints" and record.subresource == "status":
        return "status"
    if record.resource == "events":
        return "event"
    return None


def _events_about(api: KubeAPIServer, name: str) -> list[dict[str, Any]]:
    return [e for e in api.store.objects[("", "events")].values() if e["involvedObject"]["name"] == name]


async def _settled(controller: Controller) -> None:
    await controller.writer.wait_idle(30)
    await controller.status.flush(30)
    await controller.events.drain(30)


async def test_a_mass_flip_writes_slices_then_endpoints_then_status_then_events(
        api: KubeAPIServer, client: KubeClient) -> None:
    """A host shared by many ClusterEndpoints fails: the slices (what kube-proxy reads) go before the
    v1 Endpoints copies, every routing write before the first status patch, and every status patch
    before the first Event. The debounce (30 s) holds every write until all targets know, then a
    flush makes them due at once, as in a flip of 1,000 (the probes' phases spread over a period would
    otherwise make the first target due alone); the bound is lifted so a loaded machine cannot turn
    the assertion into a race. One target at a time (2 write slots): an
    Endpoints update is sent only once no slice waits for a slot, so at most one slice update (in
    flight beside it) can reach the server after the first Endpoints update. Before the slots, a
    target's slice and Endpoints went side by side: 15 of 16 slices came after the first Endpoints."""
    await install_crd(client)
    count = 16
    async with TCPBackend() as db, running_controller(api, client, routing_first_bound=60.0,
                                                      write_concurrency=1) as controller:
        for i in range(count):
            await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep(f"db{i}", [
                {"name": "pg", "port": 5432, "targetPort": db.port, "hosts": ["127.0.0.1"], "tcpSocket": {},
                 "periodSeconds": 1, "failureThreshold": 1}]))
        await eventually(lambda: all(endpoints_of(api, f"db{i}") == {("pg", "127.0.0.1"): True}
                                     for i in range(count)), timeout=60, message="all ready")
        await _settled(controller)
        controller.writer.batch_delay = controller.writer.max_batch_delay = 30.0
        mark = len(api.request_log)
        await db.set_mode("closed")

        def known() -> bool:
            return all(not e.ready for t in controller.state.targets.values() for g in t.groups.values()
                       for e in g.endpoints.values()) and len(controller.state.targets) == count

        await eventually(known, timeout=30, message="every target's host not ready in the desired state")
        assert not [r for r in api.request_log[mark:] if _kind(r) in ("slice", "endpoints")]
        assert await controller.writer.flush(30)
        await eventually(lambda: sum(_kind(r) == "event" for r in api.request_log[mark:]) >= count, timeout=60,
                         message="an Event per ClusterEndpoint")
        await _settled(controller)
        kinds = [k for r in api.request_log[mark:] if r.is_write and r.code < 400 and (k := _kind(r))]
        assert all(endpoints_of(api, f"db{i}") == {("pg", "127.0.0.1"): False} for i in range(count))
        assert kinds.count("slice") == kinds.count("endpoints") == count  # one update of each per target
        assert kinds.count("status") == count
        first_endpoints = kinds.index("endpoints")
        assert kinds[first_endpoints:].count("slice") <= 1, kinds
        order = {"slice": 0, "endpoints": 0, "status": 1, "event": 2}
        ranks = [order[k] for k in kinds]
        assert ranks == sorted(ranks), kinds


async def test_first_decisions_are_one_event_and_similar_ones_are_combined(
        api: KubeAPIServer, client: KubeClient) -> None:
    """A new ClusterEndpoint whose hosts fail from the start gets one Event naming them, not one per host.
    Later, 12 hosts failing together make 12 similar Events (same object, type, reason): with the first
    Event they are 13 different messages; the first 9 are written as they are, every one from the 10th
    on goes to one "(combined from similar events)" Event, counted up."""
    await install_crd(client)
    port = free_port()
    hosts = [f"127.0.0.{i}" for i in range(1, 13)]
    async with AsyncExitStack() as stack:
        backends = [await stack.enter_async_context(TCPBackend(port, host=h)) for h in hosts[:4]]
        controller = await stack.enter_async_context(running_controller(api, client))
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("farm", [
            {"name": "app", "port": 80, "targetPort": port, "hosts": hosts, "tcpSocket": {},
             "periodSeconds": 1, "failureThreshold": 1, "successThreshold": 1}]))
        await eventually(lambda: len(endpoints_of(api, "farm")) == 12, timeout=30, message="published")
        await _settled(controller)
        first = _events_about(api, "farm")
        assert len(first) == 1, first
        assert first[0]["reason"] == "EndpointUnhealthy" and first[0]["type"] == "Warning"
        assert first[0]["message"].startswith("first probes: 8 of 12 endpoints unhealthy: ")
        assert all(f"{h} port app: connection refused" in first[0]["message"] for h in hosts[4:])
        assert all(f"{h} port" not in first[0]["message"] for h in hosts[:4])

        # all 12 healthy, then all 12 fail at once
        backends += [await stack.enter_async_context(TCPBackend(port, host=h)) for h in hosts[4:]]
        await eventually(lambda: all(endpoints_of(api, "farm").values()), timeout=30, message="all healthy")
        await _settled(controller)
        before = {e["metadata"]["name"] for e in _events_about(api, "farm")}
        await asyncio.gather(*(b.set_mode("closed") for b in backends))
        await eventually(lambda: not any(endpoints_of(api, "farm").values()), timeout=30, message="all failed")

        def unhealthy() -> list[dict[str, Any]]:
            return [e for e in _events_about(api, "farm") if e["metadata"]["name"] not in before
                    and e["reason"] == "EndpointUnhealthy"]

        await eventually(lambda: sum(e["count"] for e in unhealthy()) == 12, timeout=30, message="12 counted")
        combined = [e for e in unhealthy() if e["message"].startswith("(combined from similar events): ")]
        assert len(unhealthy()) == 9 and len(combined) == 1, [e["message"] for e in unhealthy()]
        assert combined[0]["count"] == 4


async def test_status_and_events_wait_for_routing_writes_only_so_long(api: KubeAPIServer, client: KubeClient) -> None:
    """A slice write that hangs (a slow API server) holds status patches and Events back for the bound
    only (1 s here): they are not starved behind it."""
    await install_crd(client)
    async with TCPBackend() as db, running_controller(api, client, routing_first_bound=1.0) as controller:
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("slow", [
            {"name": "pg", "port": 5432, "targetPort": db.port, "hosts": ["127.0.0.1"], "tcpSocket": {},
             "periodSeconds": 1, "failureThreshold": 1}]))
        await eventually(lambda: endpoints_of(api, "slow") == {("pg", "127.0.0.1"): True}, timeout=30)
        await _settled(controller)
        api.faults.append(FaultRule(verb="update", resource="endpointslices", code=0, delay=20.0))
        await db.set_mode("closed")

        def reported() -> bool:
            ports = ((cep_of(api, "slow") or {}).get("status") or {}).get("ports") or []
            return bool(ports and ports[0].get("unhealthy")) and any(
                e["reason"] == "EndpointUnhealthy" for e in _events_about(api, "slow"))

        await eventually(reported, timeout=15, message="status and Event written while the slice write hangs")
        assert controller.writer.busy() and endpoints_of(api, "slow") == {("pg", "127.0.0.1"): True}
        assert controller.status.turn is not None and controller.status.turn.expired >= 1
