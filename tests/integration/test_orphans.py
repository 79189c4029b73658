"""Edits made while no controller ran: what epctl published and no front-end claims any more is
deleted at the next start (and on every shard acquisition), and nothing else is (issue 22, case 5)."""

from __future__ import annotations

from typing import Any

from epctl.kube.client import MERGE_PATCH, SERVICES, KubeClient, Resource
from epctl.state import MIRRORED_LABEL
from epctl.testing.backends import TCPBackend
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import (
    CLUSTERENDPOINTS,
    cep,
    install_crd,
    running_controller,
    slices_of,
    source_service,
)

Obj = dict[str, Any]
MIRROR = "epctl.io/mirror-from"
PODS = Resource("", "v1", "pods", "Pod")


def ours(api: KubeAPIServer, name: str) -> list[Obj]:
    slices = [s for s in slices_of(api, name)
              if (s["metadata"].get("labels") or {}).get("endpointslice.kubernetes.io/managed-by")
              == "controller.epctl.io"]
    endpoints = api.store.objects[("", "endpoints")].get(("default", name))
    return slices + ([endpoints] if endpoints is not None else [])


async def test_what_nobody_claims_after_edits_without_a_controller_is_swept(api: KubeAPIServer) -> None:
    client = await KubeClient.connect(api.kubeconfig_path)
    await install_crd(client)
    async with TCPBackend() as up:
        await source_service(client, "origin", ("db", 5432, 5432), {"10.1.0.1": True})
        for name in ("copy", "kept-copy"):
            await client.request("POST", SERVICES.path("default"), body={
                "metadata": {"name": name, "annotations": {MIRROR: "default/origin"}},
                "spec": {"ports": [{"name": "db", "port": 5432}]}})
        for name in ("gone", "kept"):
            await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep(name, [
                {"name": "p", "port": 80, "targetPort": up.port, "hosts": ["127.0.0.1"], "tcpSocket": {}}]))
        async with running_controller(api, client):
            await eventually(lambda: all(len(ours(api, n)) == 2 for n in ("copy", "kept-copy", "gone", "kept")),
                             timeout=20, message="everything published (a slice and the Endpoints each)")
            assert all((o["metadata"].get("labels") or {}).get(MIRRORED_LABEL) == "true" for o in ours(api, "copy"))
        # no controller runs now: the mirror annotation goes, a ClusterEndpoint is deleted while the
        # garbage collector is down, another one is edited (it keeps what it published)
        api.store.gc_paused = True
        copy = await client.request("GET", SERVICES.path("default", "copy"))
        del copy["metadata"]["annotations"][MIRROR]
        await client.request("PUT", SERVICES.path("default", "copy"), body=copy)
        await client.request("DELETE", CLUSTERENDPOINTS.path("default", "gone"))
        kept = await client.request("GET", CLUSTERENDPOINTS.path("default", "kept"))
        kept["metadata"].setdefault("annotations", {})["note"] = "x"
        await client.request("PUT", CLUSTERENDPOINTS.path("default", "kept"), body=kept)
        assert len(ours(api, "copy")) == 2 and len(ours(api, "gone")) == 2
        mark = len(api.request_log)
        async with running_controller(api, client):
            await eventually(lambda: not ours(api, "copy") and not ours(api, "gone"), timeout=20,
                             message="the unclaimed mirror and the deleted ClusterEndpoint's objects are swept")
            assert len(ours(api, "kept-copy")) == 2 and len(ours(api, "kept")) == 2
            assert len(slices_of(api, "origin")) == 1  # not ours: never touched
        deletes = {(r.resource, r.name) for r in api.writes(since=mark) if r.verb == "delete"}
        assert {r for r in deletes if r[0] == "endpoints"} == {("endpoints", "copy"), ("endpoints", "gone")}
        api.store.resume_gc()
    await client.close()


def controller_slices(api: KubeAPIServer, name: str) -> list[Obj]:
    return [s for s in slices_of(api, name) if (s["metadata"].get("labels") or {}).get(
        "endpointslice.kubernetes.io/managed-by") == "endpointslice-controller.k8s.io"]


async def test_adopting_a_service_with_a_selector_removes_the_pod_slices_once_ours_are_up(
        api: KubeAPIServer) -> None:
    """Issue 22, case 6: kube-controller-manager's EndpointSlice controller does not delete its slices
    when a Service loses its selector (the test server does the same), so the Pod IPs would stay
    routable beside our hosts. epctl deletes them once its own slices are published."""
    client = await KubeClient.connect(api.kubeconfig_path)
    await install_crd(client)
    await client.request("POST", SERVICES.path("default"), body={
        "metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"name": "p", "port": 80}]}})
    pod = await client.request("POST", PODS.path("default"), body={
        "metadata": {"name": "web-0", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}})
    pod["status"] = {"podIP": "10.244.0.5", "conditions": [{"type": "Ready", "status": "True"}]}
    await client.request("PUT", PODS.path("default", "web-0", "status"), body=pod)
    await eventually(lambda: len(controller_slices(api, "web")) == 1, message="the Pod slice exists")
    # without epctl: a Service that loses its selector keeps the controller's slice
    await client.request("PATCH", SERVICES.path("default", "web"), body={"spec": {"selector": None}},
                         content_type=MERGE_PATCH)
    await eventually(lambda: (api.store.objects[("", "services")][("default", "web")]["spec"].get("selector")
                              is None), message="selector removed")
    assert len(controller_slices(api, "web")) == 1
    await client.request("PATCH", SERVICES.path("default", "web"), body={"spec": {"selector": {"app": "web"}}},
                         content_type=MERGE_PATCH)
    async with TCPBackend() as up:
        body = cep("web", [{"name": "p", "port": 80, "targetPort": up.port, "hosts": ["127.0.0.1"], "tcpSocket": {}}])
        body["metadata"]["annotations"] = {"epctl.io/adopt": "true"}
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=body)
        async with running_controller(api, client):
            await eventually(lambda: not controller_slices(api, "web") and ours(api, "web"), timeout=20,
                             message="our slices up, the Pod slice gone")
            service = api.store.objects[("", "services")][("default", "web")]
            assert not service["spec"].get("selector")
    await client.close()
