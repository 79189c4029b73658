"""Switching from endpoints-operator with ``epctl import --apply``, as a user would: the old CRD and
its objects in the cluster, the old operator stopped, the controller running; the command as a process."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from epctl.kube.client import CRDS, ENDPOINTS, SERVICES, KubeClient, Resource
from epctl.testing.backends import TCPBackend, free_port
from epctl.testing.kubeapi import FaultRule, KubeAPIServer
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import (
    CLUSTERENDPOINTS,
    endpoints_of,
    install_crd,
    running_controller,
    v1_addresses,
)
from tests.integration.test_endpoints_ownership import managers

OLD = Resource("sealos.io", "v1beta1", "clusterendpoints", "ClusterEndpoint")
OLD_CRD = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "clusterendpoints.sealos.io"},
           "spec": {"group": "sealos.io", "scope": "Namespaced",
                    "names": {"plural": "clusterendpoints", "singular": "clusterendpoint", "kind": "ClusterEndpoint",
                              "shortNames": ["cep"]},
                    "versions": [{"name": "v1beta1", "served": True, "storage": True, "subresources": {"status": {}},
                                  "schema": {"openAPIV3Schema": {"type": "object",
                                                                 "x-kubernetes-preserve-unknown-fields": True}}}]}}


async def epctl(*args: str, kubeconfig: str) -> tuple[int, str, str]:
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "epctl.cli", *args, "--allow-loopback", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def old_operator_left(client: KubeClient, port: int) -> dict[str, Any]:
    """What endpoints-operator leaves: its ClusterEndpoint (with finalizer) and the Service + Endpoints
    it wrote, both controller-owned by it."""
    await client.request("POST", CRDS.path(), body=OLD_CRD)
    old = await eventually(lambda: client.request("POST", OLD.path("default"), body={
        "apiVersion": "sealos.io/v1beta1", "kind": "ClusterEndpoint",
        "metadata": {"name": "wp", "finalizers": ["sealos.io/cluster-endpoints.finalizers"]},
        "spec": {"periodSeconds": 1, "ports": [{"name": "wp", "port": 80, "targetPort": port, "protocol": "TCP",
                                                 "hosts": ["127.0.0.2", "127.0.0.9"], "tcpSocket": {"enable": True},
                                                 "failureThreshold": 1}]}}), message="old CRD served")
    owner = {"apiVersion": "sealos.io/v1beta1", "kind": "ClusterEndpoint", "name": "wp",
             "uid": old["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    await client.request("POST", SERVICES.path("default"), body={
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "wp", "ownerReferences": [owner]},
        "spec": {"ports": [{"name": "wp", "port": 80, "targetPort": port}]}})
    await client.request("POST", ENDPOINTS.path("default"), body={
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "wp", "ownerReferences": [owner]},
        "subsets": [{"addresses": [{"ip": "127.0.0.2"}, {"ip": "127.0.0.9"}],
                     "ports": [{"name": "wp", "port": port}]}]})
    return old


async def test_import_apply_switches_from_endpoints_operator_without_losing_traffic(
        api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    port = free_port()
    async with TCPBackend(port, host="127.0.0.2"), running_controller(api, client):
        await old_operator_left(client, port)
        await eventually(lambda: endpoints_of(api, "wp") == {("wp", "127.0.0.2"): True, ("wp", "127.0.0.9"): True},
                         message="the cluster mirrors the old Endpoints (both hosts routable, one dead)")
        routable: list[set[str]] = []
        api.store.listeners.append(lambda _rt, _obj: routable.append(
            {a for (_, a), ready in endpoints_of(api, "wp").items() if ready}))

        code, out, err = await epctl("import", kubeconfig=api.kubeconfig_path)  # dry run: prints, writes nothing
        assert code == 0, err
        assert "apiVersion: epctl.io/v1beta1" in out and "epctl.io/adopt: 'true'" in out
        assert api.store.objects[("epctl.io", "clusterendpoints")] == {}

        code, out, err = await epctl("import", "--apply", kubeconfig=api.kubeconfig_path)
        assert code == 0, err
        assert "created ClusterEndpoint default/wp" in err and "removed the finalizer" in err
        truth = {("wp", "127.0.0.2"): True, ("wp", "127.0.0.9"): False}
        await eventually(lambda: endpoints_of(api, "wp") == truth and managers(api, "wp") == {"controller.epctl.io"}
                         and v1_addresses(api, "wp") == truth, timeout=15,
                         message="same routing as before, plus health checks: the dead host not ready")
        assert all("127.0.0.2" in ready for ready in routable), "the healthy host was unroutable for a moment"

        old = await client.request("GET", OLD.path("default", "wp"))
        assert not old["metadata"].get("finalizers")
        await client.request("DELETE", OLD.path("default", "wp"))  # the user cleans up the old object
        await eventually(lambda: api.store.objects[("sealos.io", "clusterendpoints")] == {}, message="deleted")
        service = await client.request("GET", SERVICES.path("default", "wp"))  # not garbage-collected with it
        assert [r["kind"] for r in service["metadata"]["ownerReferences"]] == ["ClusterEndpoint"]
        assert service["metadata"]["ownerReferences"][0]["apiVersion"] == "epctl.io/v1beta1"
        assert endpoints_of(api, "wp") == truth


async def test_import_converts_a_hand_made_service_and_endpoints_pair(api: KubeAPIServer, client: KubeClient,
                                                                     tmp_path: Any) -> None:
    await install_crd(client)
    port = free_port()
    async with TCPBackend(port, host="127.0.0.3"), running_controller(api, client):
        await client.request("POST", SERVICES.path("default"), body={
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
            "spec": {"ports": [{"name": "pg", "port": 5432, "targetPort": port}]}})
        await client.request("POST", ENDPOINTS.path("default"), body={
            "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "db"},
            "subsets": [{"addresses": [{"ip": "127.0.0.3"}, {"ip": "127.0.0.4"}], "ports": [{"name": "pg",
                                                                                          "port": port}]}]})
        code, out, err = await epctl("import", "-n", "default", "--apply", kubeconfig=api.kubeconfig_path)
        assert code == 0, err
        created = await client.request("GET", CLUSTERENDPOINTS.path("default", "db"))
        assert created["spec"]["ports"][0]["tcpSocket"] == {"enable": True}
        await eventually(lambda: endpoints_of(api, "db") == {("pg", "127.0.0.3"): True, ("pg", "127.0.0.4"): False},
                         timeout=15, message="health-checked")
        (tmp_path / "left.yaml").write_text(out)
        code, _, err = await epctl("import", "-f", str(tmp_path / "left.yaml"), kubeconfig=api.kubeconfig_path)
        assert code == 0 and "nothing to convert" in err  # the output is epctl's own kind: nothing left to do


OLD_FINALIZER = "sealos.io/cluster-endpoints.finalizers"


async def old_object(client: KubeClient, name: str, spec: dict[str, Any], namespace: str = "default",
                     finalizers: tuple[str, ...] = (OLD_FINALIZER,)) -> dict[str, Any]:
    """An old ClusterEndpoint and the Service it controls (as endpoints-operator leaves them)."""
    old = await client.request("POST", OLD.path(namespace), body={
        "apiVersion": "sealos.io/v1beta1", "kind": "ClusterEndpoint",
        "metadata": {"name": name, "finalizers": list(finalizers)}, "spec": spec})
    owner = {"apiVersion": "sealos.io/v1beta1", "kind": "ClusterEndpoint", "name": name,
             "uid": old["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    await client.request("POST", SERVICES.path(namespace), body={
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "ownerReferences": [owner]},
        "spec": {"ports": [{"name": "p", "port": 80}]}})
    return old


async def test_import_apply_releases_an_old_object_only_once_its_replacement_will_own_the_service(
        api: KubeAPIServer, client: KubeClient) -> None:
    """The finalizer protects the Service from garbage collection when the old object is deleted: it
    goes only from an old object whose replacement exists and owns (or adopts) that Service. Strict-parse
    refusals, failed creations (CRD missing, 5xx, 403) and taken names keep theirs, exactly as they
    were; running the command again finishes the rest."""
    await client.request("POST", CRDS.path(), body=OLD_CRD)
    spec = {"ports": [{"name": "p", "port": 80, "hosts": ["127.0.0.2"], "tcpSocket": {"enable": True}}]}
    typo = {"ports": [{"name": "p", "port": 80, "hosts": ["127.0.0.2"], "tcpsocket": {"enable": True}}]}
    await eventually(lambda: client.request("GET", OLD.path("default")), message="old CRD served")
    for namespace in ("flaky", "locked"):
        await client.request("POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace",
                                                                 "metadata": {"name": namespace}})
    await old_object(client, "good", spec, finalizers=("example.com/keep", OLD_FINALIZER))
    await old_object(client, "cut", spec)  # its finalizer removal is interrupted
    await old_object(client, "typo", typo)
    await old_object(client, "taken", spec)
    await old_object(client, "flaky", spec, namespace="flaky")
    await old_object(client, "locked", spec, namespace="locked")

    async def olds() -> dict[str, dict[str, Any]]:
        listed = await client.request("GET", OLD.path(None))
        return {o["metadata"]["name"]: o for o in listed["items"]}

    before = await olds()
    code, _, err = await epctl("import", "--apply", kubeconfig=api.kubeconfig_path)  # epctl's CRD not installed
    assert code == 1, err
    assert await olds() == before, "an old object was changed although nothing replaced it"
    assert err.count("NOT released") == 6, err

    await install_crd(client)
    await client.request("POST", CLUSTERENDPOINTS.path("default"), body={  # someone else's, same name
        "apiVersion": "epctl.io/v1beta1", "kind": "ClusterEndpoint", "metadata": {"name": "taken"}, "spec": spec})
    api.inject_fault(FaultRule(verb="create", resource="clusterendpoints", namespace="flaky", code=503))
    api.inject_fault(FaultRule(verb="create", resource="clusterendpoints", namespace="locked", code=403, count=10))
    api.inject_fault(FaultRule(verb="patch", resource="clusterendpoints", name="cut", code=500))
    code, _, err = await epctl("import", "--apply", kubeconfig=api.kubeconfig_path)
    assert code == 1, err
    after = await olds()
    assert after["good"]["metadata"]["finalizers"] == ["example.com/keep"]  # only the old operator's goes
    for name in ("cut", "typo", "taken", "flaky", "locked"):
        assert after[name] == before[name], f"{name} changed although it was not released"
    for name, why in (("cut", "500"), ("typo", "not converted"), ("taken", "name taken"), ("flaky", "503"),
                      ("locked", "403")):
        assert any(f"/{name}" in line and why in line for line in err.splitlines() if "NOT released" in line
                   or "could not" in line), (name, err)

    code, _, err = await epctl("import", "--apply", kubeconfig=api.kubeconfig_path)  # the same command again
    assert code == 1, err  # typo, taken and locked still need the user
    after = await olds()
    assert not after["cut"]["metadata"].get("finalizers") and not after["flaky"]["metadata"].get("finalizers")
    assert after["good"]["metadata"]["finalizers"] == ["example.com/keep"]
    for name in ("typo", "taken", "locked"):
        assert after[name] == before[name]
    created = await client.request("GET", CLUSTERENDPOINTS.path("flaky", "flaky"))
    assert created["metadata"]["annotations"]["epctl.io/adopt"] == "true"
    assert "epctl.io/adopt" not in ((await client.request("GET", CLUSTERENDPOINTS.path("default", "taken")))
                                    ["metadata"].get("annotations") or {})


async def test_import_skips_what_another_controller_manages_unless_included(api: KubeAPIServer, client: KubeClient,
                                                                            ) -> None:
    for namespace, name, labels in (("kube-system", "kubelet", {"app.kubernetes.io/managed-by": "prometheus-operator"}),
                                    ("default", "db", {})):
        await client.request("POST", SERVICES.path(namespace), body={
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
            "spec": {"ports": [{"port": 10250}]}})
        await client.request("POST", ENDPOINTS.path(namespace), body={
            "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "labels": labels},
            "subsets": [{"addresses": [{"ip": "127.0.0.5"}], "ports": [{"port": 10250}]}]})
    code, out, err = await epctl("import", kubeconfig=api.kubeconfig_path)
    assert code == 0, err
    assert "name: db" in out and "name: kubelet" not in out
    assert "skipped: Service kube-system/kubelet" in err and "--include kube-system/kubelet" in err
    code, out, err = await epctl("import", "--include", "kube-system/kubelet", kubeconfig=api.kubeconfig_path)
    assert code == 0 and "name: kubelet" in out, err
