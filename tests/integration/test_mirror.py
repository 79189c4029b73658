"""Service mirroring through the real controller, on the test API server."""

from __future__ import annotations

import time
from typing import Any

from epctl.kube.client import ENDPOINTSLICES, MERGE_PATCH, SERVICES, KubeClient
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import install_crd, our_slices_of, running_controller, slices_of

SEED = {"endpoint-copier/enabled": "true", "endpoint-copier/default-service-name": "kubernetes",
        "endpoint-copier/default-service-namespace": "default"}


async def service(client: KubeClient, name: str, ports: list[dict[str, Any]], annotations: dict[str, str] | None = None,
                  **spec: Any) -> dict[str, Any]:
    return await client.request("POST", SERVICES.path("default"), body={
        "metadata": {"name": name, "annotations": annotations or {}}, "spec": {"ports": ports, **spec}})


async def source_slice(client: KubeClient, name: str, service: str, addresses: dict[str, bool],
                       family: str = "IPv4", port_name: str = "https", port: int = 6443) -> dict[str, Any]:
    return await client.request("POST", ENDPOINTSLICES.path("default"), body={
        "metadata": {"name": name, "labels": {
            "kubernetes.io/service-name": service,
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": family, "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": r, "serving": r, "terminating": False},
                       "nodeName": f"node-{a.replace(':', '-')}"} for a, r in addresses.items()]})


def mirrored(api: KubeAPIServer, name: str = "kubernetes-vip") -> dict[str, bool]:
    return {e["addresses"][0]: e["conditions"]["ready"] for s in slices_of(api, name) for e in s["endpoints"]}


def events_for(api: KubeAPIServer, name: str) -> set[str]:
    return {e["reason"] for e in api.store.objects[("", "events")].values() if e["involvedObject"]["name"] == name}


VIP_PORTS = [{"name": "rke2-api", "port": 9345, "targetPort": 9345}, {"name": "k8s-api", "port": 6443,
                                                                      "targetPort": 6443}]


async def test_kubernetes_vip_follows_the_control_plane(api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    await service(client, "kubernetes", [{"name": "https", "port": 443, "targetPort": 6443}])
    await source_slice(client, "kubernetes", "kubernetes", {"10.0.0.1": True, "10.0.0.2": True, "10.0.0.3": True})
    vip = await service(client, "kubernetes-vip", VIP_PORTS, SEED, type="LoadBalancer")
    async with running_controller(api, client):
        await eventually(lambda: mirrored(api) == {"10.0.0.1": True, "10.0.0.2": True, "10.0.0.3": True},
                         message="mirrored")
        (obj,) = slices_of(api, "kubernetes-vip")
        assert obj["ports"] == [{"name": "rke2-api", "port": 9345, "protocol": "TCP"},
                                {"name": "k8s-api", "port": 6443, "protocol": "TCP"}]
        assert obj["endpoints"][0]["nodeName"] == "node-10.0.0.1"
        assert obj["metadata"]["ownerReferences"][0]["uid"] == vip["metadata"]["uid"]
        source = await client.request("GET", ENDPOINTSLICES.path("default", "kubernetes"))
        source["endpoints"][1]["conditions"] = {"ready": False, "serving": False, "terminating": False}
        mark = len(api.request_log)
        changed = time.monotonic()
        await client.request("PUT", ENDPOINTSLICES.path("default", "kubernetes"), body=source)
        await eventually(lambda: mirrored(api)["10.0.0.2"] is False, message="not-ready copied")
        assert time.monotonic() - changed < 2.0
        assert [r.verb for r in api.writes("endpointslices", mark)
                if r.name.startswith("kubernetes-vip")] == ["update"]  # one write of the target per change
        source = await client.request("GET", ENDPOINTSLICES.path("default", "kubernetes"))
        source["endpoints"].pop(1)
        await client.request("PUT", ENDPOINTSLICES.path("default", "kubernetes"), body=source)
        await eventually(lambda: mirrored(api) == {"10.0.0.1": True, "10.0.0.3": True}, message="removal copied")


async def test_dual_stack_and_250_endpoints_named_port(api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    await service(client, "kubernetes", [{"name": "https", "port": 443}])
    for n in range(3):
        count = 100 if n < 2 else 50
        await source_slice(client, f"kubernetes-{n}", "kubernetes",
                           {f"10.{n}.0.{i + 1}": True for i in range(count)})
    await source_slice(client, "kubernetes-v6", "kubernetes", {"fd00::1": True, "fd00::2": False}, family="IPv6")
    await service(client, "kubernetes-vip", [{"name": "api", "port": 443, "targetPort": "https"}],
                  {"epctl.io/mirror-from": "default/kubernetes"})
    async with running_controller(api, client):
        await eventually(lambda: len(mirrored(api)) == 252, message="all copied")
        families = sorted(s["addressType"] for s in slices_of(api, "kubernetes-vip"))
        assert families == ["IPv4", "IPv4", "IPv4", "IPv6"]
        assert all(len(s["endpoints"]) <= 100 for s in slices_of(api, "kubernetes-vip"))
        assert {s["ports"][0]["port"] for s in slices_of(api, "kubernetes-vip")} == {6443}


async def test_source_deleted_annotation_removed_and_refusals(api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    await service(client, "kubernetes", [{"name": "https", "port": 443}])
    await source_slice(client, "kubernetes", "kubernetes", {"10.0.0.1": True})
    await service(client, "kubernetes-vip", VIP_PORTS, SEED)
    await service(client, "other", VIP_PORTS, SEED)
    await service(client, "with-selector", VIP_PORTS, SEED, selector={"app": "x"})
    await service(client, "a", VIP_PORTS, {"epctl.io/mirror-from": "default/b"})
    await service(client, "b", VIP_PORTS, {"epctl.io/mirror-from": "default/a"})
    await service(client, "bad-port", [{"name": "x", "port": 1, "targetPort": "nope"}],
                  {"epctl.io/mirror-from": "default/kubernetes"})
    async with running_controller(api, client) as controller:
        await eventually(lambda: mirrored(api) and mirrored(api, "other"), message="mirrored")
        await eventually(lambda: "MirrorRefused" in events_for(api, "with-selector") and
                         "MirrorRefused" in events_for(api, "a") and "PortNotResolved" in events_for(api, "bad-port"),
                         message="refusals announced")
        assert not our_slices_of(api, "with-selector") and not slices_of(api, "a") and not slices_of(api, "b")
        assert not slices_of(api, "bad-port")
        await client.request("PATCH", SERVICES.path("default", "other"), content_type=MERGE_PATCH,
                             body={"metadata": {"annotations": {"endpoint-copier/enabled": None}}})
        await eventually(lambda: not slices_of(api, "other"), message="annotation removed: slices removed")
        await client.request("DELETE", SERVICES.path("default", "kubernetes"))
        await eventually(lambda: not slices_of(api, "kubernetes-vip"), message="source gone: target emptied")
        await eventually(lambda: "SourceNotFound" in events_for(api, "kubernetes-vip"), message="warned")
        await controller.events.drain()


async def test_restart_with_a_steady_source_writes_nothing(api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    await service(client, "kubernetes", [{"name": "https", "port": 443}])
    await source_slice(client, "kubernetes", "kubernetes", {"10.0.0.1": True, "10.0.0.2": False})
    await service(client, "kubernetes-vip", VIP_PORTS, SEED)
    async with running_controller(api, client):
        await eventually(lambda: mirrored(api) == {"10.0.0.1": True, "10.0.0.2": False}, message="mirrored")
    mark = len(api.request_log)
    async with running_controller(api, client) as controller:
        await eventually(lambda: controller.mirror._informers and all(
            i.synced.is_set() for _, i in controller.mirror._informers.values()), message="source watch synced")
        await controller.writer.wait_idle(5)
    assert [(r.verb, r.resource) for r in api.request_log[mark:] if r.is_write] == []


async def test_flag_mode_mirrors_one_pair_without_annotations(api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    await service(client, "kubernetes", [{"name": "https", "port": 443}])
    await source_slice(client, "kubernetes", "kubernetes", {"10.0.0.9": True})
    await service(client, "api-vip", [{"name": "https", "port": 443, "targetPort": 6443}])
    async with running_controller(api, client, mirror_pairs={("default", "api-vip"): ("default", "kubernetes")}):
        await eventually(lambda: mirrored(api, "api-vip") == {"10.0.0.9": True}, message="flag pair mirrored")
