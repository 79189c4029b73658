"""Regression tests for interleavings the happy-path suite did not cover (each failed before its fix)."""

from __future__ import annotations

from typing import Any

from epctl.kube.client import KubeClient
from epctl.testing.backends import HTTPBackend, TCPBackend
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import (
    CLUSTERENDPOINTS,
    ENDPOINTSLICES,
    SERVICES,
    cep,
    cep_of,
    endpoints_of,
    install_crd,
    running_controller,
    service_of,
    slices_of,
    source_service,
)


def _tcp_port(backend: TCPBackend, **extra: Any) -> dict[str, Any]:
    return {"name": "db", "port": 5432, "targetPort": backend.port, "hosts": ["127.0.0.1"], "tcpSocket": {},
            "periodSeconds": 1, **extra}


async def test_delete_and_recreate_while_the_watch_is_down_is_a_delete_and_an_add(
        api: KubeAPIServer, client: KubeClient) -> None:
    """After a 410 relist, a ClusterEndpoint recreated under the same name (same generation, new uid)
    must be treated as a new object: its Service, slices and status follow the new uid."""
    await install_crd(client)
    async with TCPBackend() as db, running_controller(api, client):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("db", [_tcp_port(db)]))
        await eventually(lambda: endpoints_of(api, "db") == {("db", "127.0.0.1"): True}, message="first incarnation")
        api.stall_watches()  # the controller sees nothing from here on...
        await client.request("DELETE", CLUSTERENDPOINTS.path("default", "db"))
        await eventually(lambda: service_of(api, "db") is None, message="GC removed the old Service")
        created = await client.request("POST", CLUSTERENDPOINTS.path("default"),
                                       body=cep("db", [_tcp_port(db, port=6432)]))
        uid = created["metadata"]["uid"]
        api.compact()
        api.drop_watches()  # ...until it reconnects, gets 410 and relists: one MODIFIED for "db"
        mark = len(api.request_log)

        def owned_by_new() -> bool:
            svc = service_of(api, "db")
            slices = slices_of(api, "db")
            return (svc is not None and svc["metadata"]["ownerReferences"][0]["uid"] == uid
                    and [p["port"] for p in svc["spec"]["ports"]] == [6432]
                    and bool(slices) and all(s["metadata"]["ownerReferences"][0]["uid"] == uid for s in slices)
                    and endpoints_of(api, "db") == {("db", "127.0.0.1"): True})

        await eventually(owned_by_new, timeout=15, message="Service and slices of the new incarnation")
        await eventually(lambda: (cep_of(api, "db") or {}).get("status", {}).get("phase") == "Healthy",
                         message="status of the new incarnation")
        creates = [r for r in api.writes("services", mark) if r.verb == "create"]
        assert len(creates) == 1, f"the Service was created {len(creates)} times (hot loop)"


async def test_a_slice_deleted_by_someone_else_is_recreated(api: KubeAPIServer, client: KubeClient) -> None:
    """Right after our own write (its echo seen), an external deletion must be repaired."""
    await install_crd(client)
    async with TCPBackend() as db, running_controller(api, client) as controller:
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("db", [_tcp_port(db)]))
        await eventually(lambda: endpoints_of(api, "db") == {("db", "127.0.0.1"): True}, message="published")
        await db.stop()  # a health flip: our own update of the slice, and its echo
        await eventually(lambda: endpoints_of(api, "db") == {("db", "127.0.0.1"): False}, message="flip written")
        name = slices_of(api, "db")[0]["metadata"]["name"]
        await eventually(lambda: controller.slices.get("default", name) is not None and
                         controller.slices.get("default", name)["endpoints"][0]["conditions"]["ready"] is False,
                         message="echo of the flip seen by the informer")
        await controller.writer.wait_idle(5)
        await client.request("DELETE", ENDPOINTSLICES.path("default", name))
        await eventually(lambda: endpoints_of(api, "db") == {("db", "127.0.0.1"): False},
                         message="the deleted slice is re-created")


async def test_a_clusterendpoint_cannot_take_a_mirrored_service_silently(api: KubeAPIServer,
                                                                        client: KubeClient) -> None:
    """A mirror target claimed by a ClusterEndpoint: the second claimant is refused with an Event and
    the mirror keeps its endpoints; removing the mirror annotation hands the Service over."""
    await install_crd(client)
    async with TCPBackend() as db, running_controller(api, client):
        await source_service(client, "origin", ("db", 5432, db.port), {"127.0.0.2": True})
        await client.request("POST", SERVICES.path("default"), body={
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "db", "annotations": {"epctl.io/mirror-from": "default/origin"}},
            "spec": {"ports": [{"name": "db", "port": 5432}]}})
        await eventually(lambda: endpoints_of(api, "db") == {("db", "127.0.0.2"): True}, message="mirrored")
        claim = cep("db", [_tcp_port(db)])
        claim["metadata"]["annotations"] = {"epctl.io/adopt": "true"}
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=claim)

        def refused() -> bool:
            conditions = {c["type"]: c for c in (cep_of(api, "db") or {}).get("status", {}).get("conditions", [])}
            return conditions.get("Synced", {}).get("reason") == "ServiceConflict"

        await eventually(refused, message="the ClusterEndpoint is told the Service is mirrored")
        # the Event goes after the status it explains (routing first, then status, then Events): wait on it
        await eventually(lambda: any(e["reason"] == "ServiceConflict"
                                     and e["involvedObject"]["kind"] == "ClusterEndpoint"
                                     for e in api.store.objects[("", "events")].values()),
                         message="a ServiceConflict Event about the ClusterEndpoint")
        assert endpoints_of(api, "db") == {("db", "127.0.0.2"): True}, "the mirror keeps its endpoints"
        svc = await client.request("GET", SERVICES.path("default", "db"))
        del svc["metadata"]["annotations"]["epctl.io/mirror-from"]
        await client.request("PUT", SERVICES.path("default", "db"), body=svc)  # hand-over, explicit
        await eventually(lambda: endpoints_of(api, "db") == {("db", "127.0.0.1"): True}, timeout=15,
                         message="the ClusterEndpoint took the Service over")
        await eventually(lambda: not refused(), message="conflict cleared")


async def test_names_and_mapped_addresses_do_not_bypass_the_address_guard(api: KubeAPIServer,
                                                                         client: KubeClient) -> None:
    """``localhost`` (a name) and ``::ffff:127.0.0.1`` (IPv4-mapped) reach loopback: neither is probed,
    published or echoed back; the user is told why."""
    await install_crd(client)
    async with HTTPBackend() as web, running_controller(api, client, allow_loopback_hosts=False):
        http = {"name": "meta", "port": 80, "targetPort": web.port, "periodSeconds": 1,
                "httpGet": {"path": "/latest/meta-data/iam/", "httpHeaders": [{"name": "Host", "value": "x"}]}}
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("named", [
            {**http, "hosts": ["localhost"]}]))
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("mapped", [
            {**http, "hosts": ["::ffff:127.0.0.1"]}]))

        def reasons(name: str) -> set[str]:
            return {e["reason"] for e in api.store.objects[("", "events")].values()
                    if e["involvedObject"]["name"] == name}

        await eventually(lambda: "HostNotResolved" in reasons("named"), message="refusal of the name's address")
        await eventually(lambda: "InvalidSpec" in reasons("mapped"), message="refusal of the mapped address")
        await eventually(lambda: (cep_of(api, "named") or {}).get("status", {}).get("total") == 0,
                         message="status written, with no endpoint")
        message = next(e["message"] for e in api.store.objects[("", "events")].values()
                       if e["reason"] == "HostNotResolved")
        assert "loopback" in message
        assert web.requests == [], "nothing was sent to the refused address"
        assert endpoints_of(api, "named") == {} and endpoints_of(api, "mapped") == {}


async def test_status_keys_we_stop_writing_disappear(api: KubeAPIServer, client: KubeClient) -> None:
    """Status is ours: a key the controller no longer computes (``discovery`` after discovery was
    removed from the spec, here planted) is gone after the next status write."""
    await install_crd(client)
    async with TCPBackend() as db, running_controller(api, client):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("db", [_tcp_port(db)]))
        await eventually(lambda: (cep_of(api, "db") or {}).get("status", {}).get("phase") == "Healthy",
                         message="status written")
        await client.request("PATCH", CLUSTERENDPOINTS.path("default", "db", "status"),
                             body={"status": {"discovery": {"servers": 3, "addresses": 3, "poller": "gone"}}},
                             content_type="application/merge-patch+json")
        await db.stop()
        await eventually(lambda: (cep_of(api, "db") or {}).get("status", {}).get("phase") == "Unhealthy",
                         message="next status write")
        assert "discovery" not in cep_of(api, "db")["status"]  # type: ignore[index]


async def test_a_waiting_clusterendpoint_and_a_mirror_hand_a_service_back_and_forth(
        api: KubeAPIServer, client: KubeClient) -> None:
    """Found by the fuzzer's soak: a ClusterEndpoint without ``adopt`` waits on a mirrored Service.
    Un-annotating must leave nobody publishing (the mirror's slices and Endpoints go; the Service is
    foreign to the ClusterEndpoint); annotating again gives it back to the mirror; a restart then flips
    nothing, not even the waiting ClusterEndpoint's status (it has no slices to adopt readiness from)."""
    await install_crd(client)
    await source_service(client, "origin", ("db", 5432, 5432), {"10.1.0.1": True})
    await client.request("POST", SERVICES.path("default"), body={
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "m", "annotations": {"epctl.io/mirror-from": "default/origin"}},
        "spec": {"ports": [{"name": "db", "port": 5432}]}})

    def synced_message() -> str:
        conditions = (cep_of(api, "m") or {}).get("status", {}).get("conditions", [])
        return next((c["message"] for c in conditions if c["type"] == "Synced"), "")

    async def set_annotation(value: str | None) -> None:
        await client.request("PATCH", SERVICES.path("default", "m"), content_type="application/merge-patch+json",
                             body={"metadata": {"annotations": {"epctl.io/mirror-from": value}}})

    async with TCPBackend() as db:
        async with running_controller(api, client):
            await eventually(lambda: endpoints_of(api, "m") == {("db", "10.1.0.1"): True}, message="mirrored")
            await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("m", [_tcp_port(db)]))
            await eventually(lambda: "mirrors default/origin" in synced_message(), message="waits on the mirror")
            await set_annotation(None)
            await eventually(lambda: endpoints_of(api, "m") == {} and "not managed by epctl" in synced_message(),
                             message="nobody publishes for a Service nobody in epctl may write")
            await set_annotation("default/origin")
            await eventually(lambda: endpoints_of(api, "m") == {("db", "10.1.0.1"): True}
                             and "mirrors default/origin" in synced_message(), message="back to the mirror")
            await eventually(lambda: (cep_of(api, "m") or {}).get("status", {}).get("phase") == "Healthy",
                             message="the waiting ClusterEndpoint's own health")
        mark = len(api.request_log)
        async with running_controller(api, client) as again:
            check = next(iter(again.scheduler.keys()))
            runs = again.scheduler.state(check).runs  # type: ignore[union-attr]
            await eventually(lambda: again.scheduler.state(check).runs >= runs + 2,  # type: ignore[union-attr]
                             message="probed twice after the restart")
            await again.status.flush()
        assert [r for r in api.writes("clusterendpoints", mark)] == [], "the restart flipped the status"


async def test_status_writer_survives_a_due_status_dropped_while_another_is_written(
        api: KubeAPIServer, client: KubeClient) -> None:
    """Found by the 1 s benchmark: two statuses due; while the first is being written, the second is
    dropped (its ClusterEndpoint deleted, or its object already says it). The writer must go on."""
    from epctl.kube.informer import Informer
    from epctl.kube.status import StatusWriter
    from epctl.testing.kubeapi import FaultRule
    await install_crd(client)
    for name in ("a", "b"):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep(name, [
            {"name": "p", "port": 80, "hosts": ["127.0.0.1"]}]))
    ceps = Informer(client, CLUSTERENDPOINTS, "default")
    ceps.start()
    await ceps.wait_synced(10)
    writer = StatusWriter(client, CLUSTERENDPOINTS, ceps.get, delay=0.0)
    task = writer.start()
    try:
        slow = api.inject_fault(FaultRule(verb="patch", name="a", subresource="status", code=0, delay=0.5))
        writer.set("default", "a", {"phase": "Healthy"})
        writer.set("default", "b", {"phase": "Healthy"})
        await eventually(lambda: slow.count == 0, message="the first write is in flight")
        writer.forget("default", "b")  # b was deleted meanwhile: its status is not to be written
        await writer.flush(5)
        assert not task.done(), f"the status writer died: {task.exception() if task.done() else ''}"
        assert (cep_of(api, "a") or {}).get("status") == {"phase": "Healthy"}
    finally:
        await writer.stop()
        await ceps.stop()


async def test_status_set_back_to_what_the_object_says_while_a_write_is_in_flight_is_written(
        api: KubeAPIServer, client: KubeClient) -> None:
    """A host flaps: status S1 is being written when the status goes back to S0, which is what the
    object (the informer) still says. The newest set() must win: skipping S0 as "already there" left
    the in-flight S1 on the object for good (our own status write brings no recompute)."""
    from epctl.kube.informer import Informer
    from epctl.kube.status import StatusWriter
    from epctl.testing.kubeapi import FaultRule
    await install_crd(client)
    await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("flap", [
        {"name": "p", "port": 80, "hosts": ["127.0.0.1"]}]))
    ceps = Informer(client, CLUSTERENDPOINTS, "default")
    ceps.start()
    await ceps.wait_synced(10)
    writer = StatusWriter(client, CLUSTERENDPOINTS, ceps.get, delay=0.0)
    ceps.subscribe(lambda event: writer.observed(event.obj))  # as the controller wires it
    writer.start()
    try:
        writer.set("default", "flap", {"phase": "Healthy"})
        await writer.flush(5)
        await eventually(lambda: (ceps.get("default", "flap") or {}).get("status") == {"phase": "Healthy"},
                         message="S0 written and seen")
        slow = api.inject_fault(FaultRule(verb="patch", name="flap", subresource="status", code=0, delay=0.5))
        writer.set("default", "flap", {"phase": "Degraded"})
        await eventually(lambda: slow.count == 0, message="S1 in flight")
        writer.set("default", "flap", {"phase": "Healthy"})  # back: what the object still says
        await writer.flush(5)
        await eventually(lambda: (cep_of(api, "flap") or {}).get("status") == {"phase": "Healthy"}, timeout=5.0,
                         message="the newest status is the one on the object")
        await eventually(lambda: writer.holding() == 0, message="no copy of a status kept once its echo came")
    finally:
        await writer.stop()
        await ceps.stop()


async def test_a_takeover_from_an_older_status_keeps_the_previous_owners_reasons(
        api: KubeAPIServer, client: KubeClient) -> None:
    """A replica takes a ClusterEndpoint over while its cache still holds an older status (a lagging
    watch): the host it adopts as not ready has no reason there. The previous owner's last status
    arrives while our status is still queued: what goes out must keep that status's reason and since,
    not "reason": "" (which stayed until the host changed again; the stateful fuzzer found it, shard
    mode, as a write in an idle system)."""
    from epctl.kube.client import MERGE_PATCH

    await install_crd(client)
    async with TCPBackend() as db:
        spec = cep("pg", [{**_tcp_port(db), "hosts": ["127.0.0.1", "127.0.0.2"]}])  # .2: refused
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=spec)

        def unhealthy() -> list[dict[str, Any]]:
            ports = ((cep_of(api, "pg") or {}).get("status") or {}).get("ports") or []
            return ports[0].get("unhealthy") or [] if ports else []

        async with running_controller(api, client):
            await eventually(lambda: [u.get("reason") for u in unhealthy()] == ["connection refused"],
                             message="the first owner's status")
        last_word = cep_of(api, "pg")["status"]
        assert unhealthy()[0].get("since")
        older = {**last_word, "ports": [{**last_word["ports"][0], "unhealthy": []}]}
        status_path = CLUSTERENDPOINTS.path("default", "pg") + "/status"
        await client.request("PATCH", status_path, content_type=MERGE_PATCH, body={"status": older})
        async with running_controller(api, client, batch_delay=3.0, max_batch_delay=3.0) as controller:
            await eventually(lambda: controller.status.waiting("default", "pg"), message="its status queued")
            await client.request("PATCH", status_path, content_type=MERGE_PATCH, body={"status": last_word})
            await eventually(lambda: not controller.status.waiting("default", "pg")
                             and controller.status.in_flight() == 0, timeout=15, message="status settled")
            assert await controller.writer.flush(10.0)
            await controller.status.flush()
            assert unhealthy() == last_word["ports"][0]["unhealthy"]


async def test_a_service_the_garbage_collector_deleted_is_not_recreated_for_an_owner_that_is_gone(
        api: KubeAPIServer) -> None:
    """A ClusterEndpoint is deleted; the garbage collector deletes its Service before our cache of
    ClusterEndpoints shows the deletion (here: that informer is stopped). The writer re-created the
    Service, the collector deleted it again, and so on until the cache caught up: six creates in
    0.3 s, found by the stateful fuzzer (seed 25402) as writes in an idle system. A fresh read of the
    owner now comes first, and only for a Service that went away while its target was held."""
    from epctl.kube.client import KubeClient
    from epctl.metrics import SYNCS
    from tests.integration.controller_helpers import named_replica

    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    try:
        await install_crd(setup)
        async with TCPBackend() as db, named_replica(api, "w") as controller:
            await setup.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("db", [_tcp_port(db)]))
            await eventually(lambda: service_of(api, "db") is not None and slices_of(api, "db"), message="written")
            await controller.ceps.stop()  # the deletion below never reaches this cache
            gone_before = SYNCS.labels("owner_gone")._value.get()
            mark = len(api.request_log)
            await setup.request("DELETE", CLUSTERENDPOINTS.path("default", "db"))
            await eventually(lambda: service_of(api, "db") is None, message="collected")
            await eventually(lambda: SYNCS.labels("owner_gone")._value.get() > gone_before, timeout=10,
                             message="the writer asked about the owner and held back")
            creates = [r for r in api.writes("services", since=mark) if r.verb == "create"
                       and r.user_agent == "epctl/w"]
            assert creates == []
            assert service_of(api, "db") is None
    finally:
        await setup.close()
