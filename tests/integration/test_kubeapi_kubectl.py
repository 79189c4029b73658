"""Fidelity of the test API server, proven with the real kubectl as the client."""

from __future__ import annotations

import asyncio
import pathlib

from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.kubectl import Kubectl
from epctl.testing.waiting import eventually

DATA = pathlib.Path(__file__).parent.parent / "data"
WIDGET = """apiVersion: example.io/v1
kind: Widget
metadata: {name: %s}
spec: {size: %d}
"""


async def _install_crd(kubectl: Kubectl) -> None:
    await kubectl("apply", "-f", str(DATA / "widget-crd.yaml"))
    await kubectl("wait", "--for=condition=established", "crd/widgets.example.io", "--timeout=10s")


async def test_apply_crd_then_custom_resource_with_defaults_and_printer_columns(kubectl: Kubectl) -> None:
    await _install_crd(kubectl)
    await kubectl("apply", "-f", "-", stdin=WIDGET % ("w1", 3))
    obj = (await kubectl("get", "widget", "w1", "-o", "json")).json()
    assert obj["spec"] == {"size": 3, "color": "red"}  # schema default applied by the server
    assert obj["metadata"]["generation"] == 1
    assert obj["metadata"]["resourceVersion"].isdigit()
    table = (await kubectl("get", "wd")).stdout.splitlines()
    assert table[0].split() == ["NAME", "SIZE", "PHASE", "AGE"]
    assert table[1].split()[:2] == ["w1", "3"]


async def test_invalid_custom_resource_is_422_naming_every_field(kubectl: Kubectl) -> None:
    await _install_crd(kubectl)
    bad = "apiVersion: example.io/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {size: 30, color: green}\n"
    result = await kubectl("apply", "-f", "-", stdin=bad, check=False)
    assert result.code != 0
    assert "spec.size: Invalid value: 30" in result.stderr
    assert 'spec.color: Unsupported value: "green"' in result.stderr
    unknown = "apiVersion: example.io/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {size: 1, colour: red}\n"
    result = await kubectl("apply", "-f", "-", stdin=unknown, check=False)
    assert 'unknown field "spec.colour"' in result.stderr


async def test_conflicting_replace_is_409(kubectl: Kubectl) -> None:
    await _install_crd(kubectl)
    await kubectl("apply", "-f", "-", stdin=WIDGET % ("w1", 3))
    stale = (await kubectl("get", "widget", "w1", "-o", "json")).stdout
    await kubectl("patch", "widget", "w1", "--type=merge", "-p", '{"spec":{"size":4}}')
    result = await kubectl("replace", "-f", "-", stdin=stale, check=False)
    assert result.code != 0
    assert "Conflict" in result.stderr and "the object has been modified" in result.stderr


async def test_server_side_apply_tracks_managers_and_reports_conflicts(kubectl: Kubectl) -> None:
    await _install_crd(kubectl)
    await kubectl("apply", "--server-side", "--field-manager=alice", "-f", "-", stdin=WIDGET % ("w1", 3))
    result = await kubectl("apply", "--server-side", "--field-manager=bob", "-f", "-", stdin=WIDGET % ("w1", 5),
                           check=False)
    assert result.code != 0 and 'conflict with "alice"' in result.stderr and ".spec.size" in result.stderr
    await kubectl("apply", "--server-side", "--field-manager=bob", "--force-conflicts", "-f", "-",
                  stdin=WIDGET % ("w1", 5))
    obj = (await kubectl("get", "widget", "w1", "-o", "json", "--show-managed-fields")).json()
    assert obj["spec"]["size"] == 5
    owners = {m["manager"]: m["fieldsV1"] for m in obj["metadata"]["managedFields"]}
    assert "f:size" in owners["bob"]["f:spec"]
    assert "alice" not in owners or "f:size" not in owners["alice"].get("f:spec", {})


async def test_watch_streams_changes(kubectl: Kubectl) -> None:
    await _install_crd(kubectl)
    await kubectl("apply", "-f", "-", stdin=WIDGET % ("w1", 3))
    proc = await asyncio.create_subprocess_exec(
        "kubectl", "get", "widgets", "-w", "--output-watch-events",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=kubectl.env)

    async def line() -> list[str]:
        assert proc.stdout is not None
        return (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().split()

    try:
        assert (await line())[:3] == ["EVENT", "NAME", "SIZE"]
        assert (await line())[:3] == ["ADDED", "w1", "3"]
        await kubectl("patch", "widget", "w1", "--type=merge", "-p", '{"spec":{"size":4}}')
        assert (await line())[:3] == ["MODIFIED", "w1", "4"]
        await kubectl("delete", "widget", "w1")
        assert (await line())[:3] == ["DELETED", "w1", "4"]
    finally:
        proc.kill()
        await proc.wait()


async def test_delete_with_finalizer_waits_for_finalizer_removal(kubectl: Kubectl) -> None:
    await _install_crd(kubectl)
    await kubectl("apply", "-f", "-", stdin=WIDGET % ("w1", 3))
    await kubectl("patch", "widget", "w1", "--type=merge", "-p", '{"metadata":{"finalizers":["example.io/hold"]}}')
    await kubectl("delete", "widget", "w1", "--wait=false")
    obj = (await kubectl("get", "widget", "w1", "-o", "json")).json()
    assert obj["metadata"]["deletionTimestamp"]
    waiter = asyncio.create_task(kubectl("wait", "--for=delete", "widget/w1", "--timeout=20s"))
    await kubectl("patch", "widget", "w1", "--type=json", "-p", '[{"op":"remove","path":"/metadata/finalizers"}]')
    await waiter
    result = await kubectl("get", "widget", "w1", check=False)
    assert "NotFound" in result.stderr


async def test_owner_reference_garbage_collection(kubectl: Kubectl, api: KubeAPIServer) -> None:
    await _install_crd(kubectl)
    await kubectl("apply", "-f", "-", stdin=WIDGET % ("owner", 1))
    uid = (await kubectl("get", "widget", "owner", "-o", "jsonpath={.metadata.uid}")).stdout
    dependent = f"""apiVersion: v1
kind: Service
metadata:
  name: dependent
  ownerReferences: [{{apiVersion: example.io/v1, kind: Widget, name: owner, uid: {uid}}}]
spec: {{ports: [{{port: 80}}]}}
"""
    await kubectl("apply", "-f", "-", stdin=dependent)
    await kubectl("delete", "widget", "owner")
    await eventually(lambda: api.store.objects[("", "services")].get(("default", "dependent")) is None,
                     message="dependent Service garbage collected")


async def test_apply_kustomize_directory_and_builtin_validation(kubectl: Kubectl) -> None:
    await kubectl("apply", "-k", str(DATA / "kustomize"))
    svc = (await kubectl("get", "svc", "db", "-n", "shop", "-o", "json")).json()
    assert svc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "shop"
    assert svc["spec"]["clusterIP"] and svc["spec"]["ports"][0]["protocol"] == "TCP"
    bad = "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {ports: [{port: 0, name: a}, {port: 80}]}\n"
    result = await kubectl("apply", "-f", "-", stdin=bad, check=False)
    assert "spec.ports[0].port: Invalid value: 0" in result.stderr
    assert "spec.ports[1].name: Required value" in result.stderr


async def test_printer_columns_are_exactly_what_the_crd_declares(kubectl: Kubectl) -> None:
    """As kube-apiserver: declared columns and nothing more (no AGE unless declared); none declared: NAME, AGE."""
    crd = (DATA / "widget-crd.yaml").read_text()
    without_age = crd.replace("    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}\n", "")
    assert without_age != crd
    await kubectl("apply", "-f", "-", stdin=without_age)
    await kubectl("wait", "--for=condition=established", "crd/widgets.example.io", "--timeout=10s")
    await kubectl("apply", "-f", "-", stdin=WIDGET % ("w1", 3))
    assert (await kubectl("get", "wd")).stdout.splitlines()[0].split() == ["NAME", "SIZE", "PHASE"]
    no_columns = "\n".join(line for line in without_age.splitlines()
                           if "additionalPrinterColumns" not in line and "{name: Size" not in line
                           and "{name: Phase" not in line) + "\n"
    await kubectl("apply", "-f", "-", stdin=no_columns)
    await eventually(lambda: _header(kubectl), message="default columns once the CRD has none")


async def _header(kubectl: Kubectl) -> bool:
    return (await kubectl("get", "wd")).stdout.splitlines()[0].split() == ["NAME", "AGE"]


async def test_kubectl_create_generators_send_protobuf_and_it_is_understood(kubectl: Kubectl,
                                                                            api: KubeAPIServer) -> None:
    """kubectl's typed generators always send protobuf bodies (and accept a JSON answer)."""
    await kubectl("create", "namespace", "team-a")
    await kubectl("create", "configmap", "settings", "-n", "team-a", "--from-literal=mode=fast",
                  "--from-literal=level=3")
    await kubectl("create", "secret", "generic", "creds", "-n", "team-a", "--from-literal=password=s3cret")
    await kubectl("create", "serviceaccount", "robot", "-n", "team-a")
    store = api.store.objects
    assert ("", "team-a") in store[("", "namespaces")]
    assert store[("", "configmaps")][("team-a", "settings")]["data"] == {"mode": "fast", "level": "3"}
    secret = store[("", "secrets")][("team-a", "creds")]
    assert secret["data"] == {"password": "czNjcmV0"} and secret["type"] == "Opaque"
    assert ("team-a", "robot") in store[("", "serviceaccounts")]
    got = (await kubectl("get", "configmap", "settings", "-n", "team-a", "-o", "json")).json()
    assert got["data"]["mode"] == "fast"
