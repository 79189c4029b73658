"""epctl owns the v1 Endpoints of the Services it manages; switching from the old tools is safe.

The test API server runs the EndpointSliceMirroring controller (epctl.testing.kcm), as every cluster
does: an Endpoints object left by endpoints-operator or kube-endpoint-manager is mirrored into slices
that kube-proxy merges with ours. These tests check that after epctl takes a Service over, exactly
one set of slices remains (epctl's), and the Endpoints object says the same as the slices.
"""

from __future__ import annotations

from typing import Any

from epctl.endpoints import OVER_CAPACITY, SKIP_MIRROR_LABEL
from epctl.kube.client import ENDPOINTS, MERGE_PATCH, KubeClient
from epctl.testing.backends import TCPBackend, free_port
from epctl.testing.kcm import MIRRORING
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import (
    CLUSTERENDPOINTS,
    ENDPOINTSLICES,
    SERVICES,
    cep,
    endpoints_of,
    install_crd,
    running_controller,
    slices_of,
    source_service,
    v1_addresses,
    v1_endpoints,
)

Obj = dict[str, Any]


def managers(api: KubeAPIServer, name: str) -> set[str]:
    return {s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] for s in slices_of(api, name)}


async def legacy_service(client: KubeClient, name: str, ips: list[str], port: int, **meta: Any) -> None:
    """What endpoints-operator / kube-endpoint-manager leave behind: a selector-less Service and an
    Endpoints object they wrote by hand (no skip-mirror label)."""
    await client.request("POST", SERVICES.path("default"), body={
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, **meta},
        "spec": {"ports": [{"name": "wp", "port": 80, "targetPort": port}]}})
    await client.request("POST", ENDPOINTS.path("default"), body={
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name},
        "subsets": [{"addresses": [{"ip": ip} for ip in ips], "ports": [{"name": "wp", "port": port}]}]})


async def test_the_test_server_mirrors_a_legacy_endpoints_object_as_kubernetes_does(
        api: KubeAPIServer, client: KubeClient) -> None:
    await legacy_service(client, "old", ["10.0.0.2", "10.0.0.9"], 8080)
    await eventually(lambda: managers(api, "old") == {MIRRORING}, message="mirrored")
    mirrored = slices_of(api, "old")[0]
    endpoints = v1_endpoints(api, "old")
    assert endpoints is not None
    assert mirrored["metadata"]["ownerReferences"][0]["uid"] == endpoints["metadata"]["uid"]
    assert mirrored["metadata"]["name"].startswith("old-")
    assert endpoints_of(api, "old") == {("wp", "10.0.0.2"): True, ("wp", "10.0.0.9"): True}
    edited = await client.request("GET", ENDPOINTS.path("default", "old"))
    edited["metadata"].setdefault("labels", {})[SKIP_MIRROR_LABEL] = "true"
    await client.request("PUT", ENDPOINTS.path("default", "old"), body=edited)
    await eventually(lambda: not slices_of(api, "old"), message="skip-mirror removes what was mirrored")


async def test_adopting_clusterendpoint_replaces_the_legacy_endpoints_and_its_mirrored_slice(
        api: KubeAPIServer, client: KubeClient) -> None:
    """The migration scenario from the field: the dead host must not stay routable anywhere."""
    await install_crd(client)
    port = free_port()
    async with TCPBackend(port, host="127.0.0.2"), running_controller(api, client) as controller:
        await legacy_service(client, "wp", ["127.0.0.2", "127.0.0.9"], port)
        await eventually(lambda: managers(api, "wp") == {MIRRORING}, message="the cluster mirrors the old object")
        routable: list[set[str]] = []  # after every committed change: the ready addresses of all wp slices

        def observe(_rt: Any, _obj: Obj) -> None:
            routable.append({a for (_, a), ready in endpoints_of(api, "wp").items() if ready})

        api.store.listeners.append(observe)
        body = cep("wp", [{"name": "wp", "port": 80, "targetPort": port, "hosts": ["127.0.0.2", "127.0.0.9"],
                           "tcpSocket": {}, "periodSeconds": 1, "failureThreshold": 1}])
        body["metadata"]["annotations"] = {"epctl.io/adopt": "true"}
        created = await client.request("POST", CLUSTERENDPOINTS.path("default"), body=body)
        truth = {("wp", "127.0.0.2"): True, ("wp", "127.0.0.9"): False}
        await eventually(lambda: endpoints_of(api, "wp") == truth and managers(api, "wp") == {"controller.epctl.io"},
                         timeout=15, message="one set of slices, epctl's, with the dead host not ready")
        await eventually(lambda: v1_addresses(api, "wp") == truth, message="Endpoints agree")
        assert routable and all("127.0.0.2" in ready for ready in routable), \
            "there was a moment when the healthy host was not routable"
        endpoints = v1_endpoints(api, "wp")
        assert endpoints is not None
        assert endpoints["metadata"]["labels"][SKIP_MIRROR_LABEL] == "true"
        assert endpoints["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]

        mark = len(api.request_log)  # steady state: nothing written
        await controller.writer.flush()
        await controller.writer.wait_idle(5)
        assert [r for r in api.writes(since=mark) if r.resource in ("endpoints", "endpointslices")] == []

        await client.request("DELETE", CLUSTERENDPOINTS.path("default", "wp"))
        await eventually(lambda: v1_endpoints(api, "wp") is None and not slices_of(api, "wp"),
                         message="garbage-collected with the ClusterEndpoint")


async def test_endpoints_written_once_per_flip_and_not_on_restart(api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    async with TCPBackend() as db:
        async with running_controller(api, client):
            await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("db", [
                {"name": "pg", "port": 5432, "targetPort": db.port, "hosts": ["127.0.0.1"], "tcpSocket": {},
                 "periodSeconds": 1, "failureThreshold": 1}]))
            await eventually(lambda: v1_addresses(api, "db") == {("pg", "127.0.0.1"): True}, message="ready")
            mark = len(api.request_log)
            await db.set_mode("closed")
            await eventually(lambda: v1_addresses(api, "db") == {("pg", "127.0.0.1"): False}, message="flip")
            await eventually(lambda: endpoints_of(api, "db") == {("pg", "127.0.0.1"): False}, message="slice flip")
            assert [r.verb for r in api.writes("endpoints", mark)] == ["update"]
        mark = len(api.request_log)
        async with running_controller(api, client) as again:
            await again.writer.flush()
            await again.writer.wait_idle(5)
        assert [r for r in api.writes(since=mark) if r.resource in ("endpoints", "endpointslices")] == []


async def test_mirror_target_with_a_hand_made_endpoints_object(api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    await source_service(client, "src", ("https", 443, 6443), {"10.0.0.1": True, "10.0.0.2": False})
    await legacy_service(client, "vip", ["10.0.0.66"], 6443, annotations={"epctl.io/mirror-from": "default/src"})
    async with running_controller(api, client):
        truth = {("https", "10.0.0.1"): True, ("https", "10.0.0.2"): False}
        await eventually(lambda: managers(api, "vip") == {"controller.epctl.io"} and endpoints_of(api, "vip") == {
            ("wp", "10.0.0.1"): True, ("wp", "10.0.0.2"): False}, message="only the mirrored truth")
        assert v1_addresses(api, "vip") == {("wp", ip): ready for (_, ip), ready in truth.items()}


async def test_over_a_thousand_addresses_are_truncated_as_kubernetes_does(api: KubeAPIServer,
                                                                          client: KubeClient) -> None:
    await install_crd(client)
    await client.request("POST", SERVICES.path("default"), body={
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "big"}, "spec": {"ports": [{"port": 80}]}})
    for n in range(11):
        await client.request("POST", ENDPOINTSLICES.path("default"), body={
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"big-{n}", "labels": {"kubernetes.io/service-name": "big"}}, "addressType": "IPv4",
            "ports": [{"port": 80}], "endpoints": [
                {"addresses": [f"10.1.{n}.{i + 1}"], "conditions": {"ready": i % 10 != 0}} for i in range(100)]})
    await client.request("POST", SERVICES.path("default"), body={
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "copy", "annotations": {"epctl.io/mirror-from": "default/big"}},
        "spec": {"ports": [{"port": 80}]}})
    async with running_controller(api, client):
        await eventually(lambda: len(endpoints_of(api, "copy")) == 1100, message="slices carry all 1,100")
        await eventually(lambda: len(v1_addresses(api, "copy")) == 1000, message="Endpoints truncated")
        endpoints = v1_endpoints(api, "copy")
        assert endpoints is not None and endpoints["metadata"]["annotations"][OVER_CAPACITY] == "truncated"
        assert sum(v1_addresses(api, "copy").values()) == 990, "every ready address kept, not-ready ones cut"


def _flat(endpoints: Obj) -> dict[tuple[str, int, str], bool]:
    return {(port.get("name", ""), port["port"], address["ip"]): ready
            for subset in endpoints.get("subsets") or [] for port in subset.get("ports") or []
            for field, ready in (("addresses", True), ("notReadyAddresses", False))
            for address in subset.get(field) or []}


async def test_the_sidecar_and_the_real_endpoints_object_agree(api: KubeAPIServer, client: KubeClient) -> None:
    import json

    from epctl.sidecar import Sidecar
    await install_crd(client)
    port = free_port()
    async with TCPBackend(port, host="127.0.0.2"), running_controller(api, client):
        probe = {"tcpSocket": {}, "periodSeconds": 1, "failureThreshold": 1}
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("db", [
            {"name": "a", "port": 80, "targetPort": port, "hosts": ["127.0.0.2", "127.0.0.3"], **probe},
            {"name": "b", "port": 81, "targetPort": port, "hosts": ["127.0.0.2"], **probe}]))
        want = {("a", port, "127.0.0.2"): True, ("a", port, "127.0.0.3"): False, ("b", port, "127.0.0.2"): True}
        await eventually(lambda: _flat(v1_endpoints(api, "db") or {}) == want, message="Endpoints written")
        side = Sidecar(client, "default", "db")
        await side.start("127.0.0.1", 0)
        try:
            await eventually(lambda: side.body and _flat(json.loads(side.body)) == want, message="sidecar agrees")
        finally:
            await side.stop()


async def test_what_another_manager_set_on_our_objects_survives_our_writes(api: KubeAPIServer,
                                                                         client: KubeClient) -> None:
    """The writer builds its updates from the informer caches (compacted, docs/design.md section 7): a
    label and an annotation another field manager put on our Endpoints and slice are still there after
    a flip made us write both."""
    await install_crd(client)
    others = {"metadata": {"labels": {"team.example/owner": "dba"}, "annotations": {"team.example/note": "keep"}}}
    async with TCPBackend() as db, running_controller(api, client):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("db", [
            {"name": "pg", "port": 5432, "targetPort": db.port, "hosts": ["127.0.0.1"], "tcpSocket": {},
             "periodSeconds": 1, "failureThreshold": 1}]))
        await eventually(lambda: v1_addresses(api, "db") == {("pg", "127.0.0.1"): True}, message="ready")
        (slice_name,) = [s["metadata"]["name"] for s in slices_of(api, "db")]
        await client.request("PATCH", ENDPOINTS.path("default", "db"), body=others, content_type=MERGE_PATCH,
                             query={"fieldManager": "team-tool"})
        await client.request("PATCH", ENDPOINTSLICES.path("default", slice_name), body=others,
                             content_type=MERGE_PATCH, query={"fieldManager": "team-tool"})
        mark = len(api.request_log)
        await db.set_mode("closed")
        await eventually(lambda: v1_addresses(api, "db") == {("pg", "127.0.0.1"): False}
                         and endpoints_of(api, "db") == {("pg", "127.0.0.1"): False}, message="flip written")
        assert [r.verb for r in api.writes("endpoints", mark)] == ["update"]
        assert [r.verb for r in api.writes("endpointslices", mark)] == ["update"]
        for obj in (v1_endpoints(api, "db"), *slices_of(api, "db")):
            assert obj is not None
            assert obj["metadata"]["labels"]["team.example/owner"] == "dba"
            assert obj["metadata"]["annotations"]["team.example/note"] == "keep"


async def test_the_test_server_remirrors_a_service_whose_slice_was_relabelled_to_another_service(
        api: KubeAPIServer, client: KubeClient) -> None:
    """EndpointSliceMirroring's onEndpointSliceUpdate queues the Service a slice's
    kubernetes.io/service-name label names *and* the one it named before: the old Service gets its
    mirrored slice back, the relabelled one (its new Service mirrors nothing) is deleted."""
    await legacy_service(client, "relabelled", ["10.0.0.3"], 8080)
    await eventually(lambda: managers(api, "relabelled") == {MIRRORING}, message="mirrored")
    first = slices_of(api, "relabelled")[0]["metadata"]["name"]
    await client.request("PATCH", ENDPOINTSLICES.path("default", first),
                         body={"metadata": {"labels": {"kubernetes.io/service-name": "nobody"}}},
                         content_type="application/merge-patch+json")
    await eventually(lambda: not slices_of(api, "nobody"), message="the relabelled slice is deleted")
    await eventually(lambda: [s["metadata"]["name"] for s in slices_of(api, "relabelled")
                              if s["metadata"]["name"] != first],
                     timeout=5.0, message="the Service it was taken from is mirrored again")
    assert endpoints_of(api, "relabelled") == {("wp", "10.0.0.3"): True}
