"""Second review of issue 25 (routing first, the v1 Endpoints hold): one reproduction per problem found.

F1: the Endpoints copy holds a host not ready until a probe of ours passes. A probe that passes while
its check already counts healthy (adopted healthy from the slices at a start or takeover; or one failure
under the threshold) is no transition, so nothing planned the target again and the hold stayed for good.
F2: under contention a removed target's Endpoints delete waits behind the others' slices; it was then
skipped as "removed meanwhile" and never retried, leaving an Endpoints object nobody publishes.
A review of the F1 recheck (helper reproductions, 2026-12-05) found three more: a change that came while
a held target was written was taken for a recheck (flush() returned with it unwritten); a change to a
held target waited for the recheck's time instead of the debounce; and held targets waiting to be
planned again counted as an API backlog (the probe scheduler yields to one)."""

from __future__ import annotations

import time

from epctl.app import Controller
from epctl.kube.client import ENDPOINTS, MERGE_PATCH, SERVICES, KubeClient
from epctl.testing.backends import TCPBackend
from epctl.testing.kubeapi import FaultRule, KubeAPIServer
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import (
    CLUSTERENDPOINTS,
    cep,
    endpoints_of,
    install_crd,
    running_controller,
    service_of,
    source_service,
    v1_addresses,
    v1_endpoints,
)

KEY = ("default", "db")


async def _copies_left_behind(api: KubeAPIServer, client: KubeClient, names: list[str], port: int,
                              first_probe_after: int | None = 30, service_port: int = 5432) -> None:
    """ClusterEndpoints published ready by one controller; then, while none runs, each Endpoints copy
    left not ready behind its slice, as a process killed between its slice write and its deferred
    Endpoints write leaves it. ``first_probe_after`` (initialDelaySeconds; None: unchanged): 30 s
    keeps the next controller holding the copies (no passing probe of its own) as long as a test
    runs. ``service_port``: the port the Services must have from then on (another one: the next
    controller's first write is a Service update)."""
    for name in names:
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep(name, [
            {"name": "pg", "port": 5432, "targetPort": port, "hosts": ["127.0.0.1"], "tcpSocket": {},
             "periodSeconds": 1, "failureThreshold": 3}]))
    async with running_controller(api, client) as first:
        await eventually(lambda: all(endpoints_of(api, n) == v1_addresses(api, n) == {("pg", "127.0.0.1"): True}
                                     for n in names), timeout=30, message="published ready")
        await first.writer.wait_idle(10)
    for name in names:
        stale = dict(v1_endpoints(api, name) or {})
        stale["subsets"] = [{"notReadyAddresses": s["addresses"], "ports": s["ports"]} for s in stale["subsets"]]
        await client.request("PUT", ENDPOINTS.path("default", name), body=stale)
        if first_probe_after is None and service_port == 5432:
            continue
        obj = await client.request("GET", CLUSTERENDPOINTS.path("default", name))
        if first_probe_after is not None:
            obj["spec"]["ports"][0]["initialDelaySeconds"] = first_probe_after
        obj["spec"]["ports"][0]["port"] = service_port
        await client.request("PUT", CLUSTERENDPOINTS.path("default", name), body=obj)


async def test_a_hold_on_the_endpoints_copy_lifts_after_a_passing_probe_that_is_no_transition(
        api: KubeAPIServer, client: KubeClient) -> None:
    """A process is killed after writing a host's slice ready and before its deferred Endpoints write
    (routing first: the copy goes after the slices): the copy still says not ready while no controller
    runs. The next one adopts the host healthy from the slice; its Endpoints plan holds the copy's not
    ready until a probe of its own passes. That probe passes, but the check is healthy already: no
    transition. The copy must still follow within a few periods; before the fix it never did."""
    await install_crd(client)
    async with TCPBackend() as db:
        await _copies_left_behind(api, client, ["db"], db.port, first_probe_after=None)
        assert v1_addresses(api, "db") == {("pg", "127.0.0.1"): False}
        async with running_controller(api, client):
            await eventually(lambda: v1_addresses(api, "db") == {("pg", "127.0.0.1"): True}, timeout=10,
                             message="the copy follows the passing probes")
            assert endpoints_of(api, "db") == {("pg", "127.0.0.1"): True}


async def test_removed_targets_delete_their_endpoints_when_the_deletes_wait_behind_slices(
        api: KubeAPIServer, client: KubeClient) -> None:
    """Twelve mirrored Services stop asking to be mirrored at once, with one write slot pair: each
    deletes its slices, and its Endpoints delete waits for a slot behind the others' slices. Every
    epctl Endpoints object must be gone in the end; before the fix the waiting deletes were dropped."""
    await install_crd(client)
    count = 12
    await source_service(client, "origin", ("db", 5432, 5432), {"10.1.0.1": True})
    for i in range(count):
        await client.request("POST", SERVICES.path("default"), body={
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"m{i}", "annotations": {"epctl.io/mirror-from": "default/origin"}},
            "spec": {"ports": [{"name": "db", "port": 5432}]}})
    async with running_controller(api, client, write_concurrency=1, routing_first_bound=60.0) as controller:
        await eventually(lambda: all(v1_addresses(api, f"m{i}") == {("db", "10.1.0.1"): True} for i in range(count)),
                         timeout=30, message="every mirror's Endpoints written")
        await controller.writer.wait_idle(10)
        controller.writer.batch_delay = controller.writer.max_batch_delay = 30.0  # all due in one pass
        for i in range(count):
            await client.request("PATCH", SERVICES.path("default", f"m{i}"), content_type=MERGE_PATCH,
                                 body={"metadata": {"annotations": {"epctl.io/mirror-from": None}}})
        await eventually(lambda: all(controller.state.get(("default", f"m{i}")) is None for i in range(count)),
                         message="every target removed from the desired state")
        assert await controller.writer.flush(30)
        await eventually(lambda: not any(v1_endpoints(api, f"m{i}") for i in range(count)), timeout=20,
                         message="every removed target's Endpoints deleted")
        assert not any(endpoints_of(api, f"m{i}") for i in range(count))



async def _drain(client: KubeClient, api: KubeAPIServer, controller: Controller) -> None:
    await client.request("PATCH", CLUSTERENDPOINTS.path("default", "db"), content_type=MERGE_PATCH,
                         body={"metadata": {"annotations": {"epctl.io/drain": "127.0.0.1"}}})
    def drained() -> bool:
        target = controller.state.get(KEY)
        return target is not None and not any(e.ready for g in target.groups.values() for e in g.endpoints.values())

    await eventually(drained, message="the drain in the desired state")


async def test_a_change_during_a_held_targets_write_is_work_flush_waits_for(
        api: KubeAPIServer, client: KubeClient) -> None:
    """A held target's Service update is answered late (applied at once); meanwhile the host is drained.
    When the write ends, the drain is due: flush() must write it before it returns. Before the fix the
    end of the held write labelled the pending drain a recheck, 30 s away here, and flush() returned at
    once with the slice still ready."""
    await install_crd(client)
    async with TCPBackend() as db:
        await _copies_left_behind(api, client, ["db"], db.port, service_port=5433)
        api.inject_fault(FaultRule(verb="patch", resource="services", code=0, respond_after=1.5))
        async with running_controller(api, client) as controller:
            controller.writer.hold_recheck = 30.0
            await eventually(lambda: [p["port"] for p in (service_of(api, "db") or {"spec": {}})["spec"].get(
                "ports", [])] == [5433], message="the Service updated (its answer still on its way)")
            assert KEY in controller.writer._in_flight
            await _drain(client, api, controller)
            assert await controller.writer.flush(15)
            assert endpoints_of(api, "db") == {("pg", "127.0.0.1"): False}, "flush() returned before the drain"


async def test_a_change_to_a_held_target_is_due_on_the_debounce_not_at_the_recheck(
        api: KubeAPIServer, client: KubeClient) -> None:
    """A held target waits for its recheck (30 s away here); the host is drained: the drain goes out on
    the debounce. Before the fix it waited for the recheck's time."""
    await install_crd(client)
    async with TCPBackend() as db:
        await _copies_left_behind(api, client, ["db"], db.port)
        async with running_controller(api, client) as controller:
            controller.writer.hold_recheck = 30.0
            await eventually(lambda: KEY in controller.writer._rechecking
                             and controller.writer._retry_at.get(KEY, 0.0) > time.monotonic() + 10,
                             timeout=10, message="a recheck 30 s away")
            await _drain(client, api, controller)
            await eventually(lambda: endpoints_of(api, "db") == {("pg", "127.0.0.1"): False}, timeout=10,
                             message="the drain published")


async def test_held_targets_waiting_for_their_recheck_are_no_api_backlog(
        api: KubeAPIServer, client: KubeClient) -> None:
    """Twelve held targets, more than the write concurrency (8): an idle writer that only waits to plan
    them again reports no API backlog (the probe scheduler would throttle to a quarter of its demand).
    Before the fix the rechecks counted as due work."""
    await install_crd(client)
    names = [f"c{i}" for i in range(12)]
    async with TCPBackend() as db:
        await _copies_left_behind(api, client, names, db.port)
        async with running_controller(api, client) as controller:
            writer = controller.writer
            await eventually(lambda: len(writer._rechecking) == len(names), timeout=15, message="every target held")
            await writer.wait_idle(10)
            assert not writer.backlogged()
