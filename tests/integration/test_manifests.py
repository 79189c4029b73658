"""The install manifests: they build, they apply, and the ClusterRole grants exactly what is used."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from epctl.kube.client import ENDPOINTSLICES, LEASES, MERGE_PATCH, SECRETS, SERVICES, ApiError, KubeClient
from epctl.shard.member import GROUP_LABEL, RELEASED_ANNOTATION
from epctl.testing.backends import TCPBackend
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.kubectl import Kubectl
from epctl.testing.openstack import FakeOpenStack
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import (
    CLUSTERENDPOINTS,
    cep,
    endpoints_of,
    install_crd,
    running_controller,
    service_of,
    slices_of,
)

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "manifests" / "base"


async def test_base_and_examples_build_and_the_base_applies(kubectl: Kubectl) -> None:
    built = (await kubectl("kustomize", str(BASE))).stdout
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(built))
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment", "Namespace",
                     "PodDisruptionBudget", "Role", "RoleBinding", "Service", "ServiceAccount"]
    deployment = next(d for d in yaml.safe_load_all(built) if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert container["image"] == "ghcr.io/epctl/epctl:0.1.0"
    await kubectl("apply", "-k", str(BASE))
    await kubectl("wait", "--for=condition=established", "crd/clusterendpoints.epctl.io", "--timeout=10s")
    names = (await kubectl("get", "deployment,serviceaccount,service,poddisruptionbudget", "-n", "epctl-system",
                           "-o", "name")).stdout.split()
    assert "deployment.apps/epctl-controller" in names and "serviceaccount/epctl" in names
    sidecar = (await kubectl("kustomize", str(ROOT / "manifests" / "examples" / "sidecar"))).stdout
    assert {d["kind"] for d in yaml.safe_load_all(sidecar)} >= {"Deployment", "Role", "RoleBinding"}
    manager = list(yaml.safe_load_all((await kubectl("kustomize", str(ROOT / "manifests/examples/manager"))).stdout))
    assert {d["kind"] for d in manager} >= {"Deployment", "Role", "RoleBinding", "Secret", "ServiceAccount"}
    container = next(d for d in manager if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in container["env"]} >= {"ENDPOINT_TYPE", "K8S_NAMESPACE", "K8S_ENDPOINT"}
    openstack_cep = yaml.safe_load((ROOT / "manifests/examples/openstack/clusterendpoint.yaml").read_text())
    from epctl.api import parse_cluster_endpoint

    assert parse_cluster_endpoint(openstack_cep)[1] == []
    databases = list(yaml.safe_load_all((ROOT / "manifests/examples/database/clusterendpoint.yaml").read_text()))
    assert [parse_cluster_endpoint(d)[1] for d in databases] == [[], []]


async def test_every_overlay_builds(kubectl: Kubectl) -> None:
    overlays = ROOT / "manifests" / "overlays"
    credentials = overlays / "openstack" / "openstack.env"  # git-ignored: made from the example, as a user does
    made = not credentials.exists()
    if made:
        credentials.write_text((overlays / "openstack" / "openstack.env.example").read_text())
    try:
        built = {o.name: list(yaml.safe_load_all((await kubectl("kustomize", str(o))).stdout))
                 for o in sorted(overlays.iterdir())}
    finally:
        if made:
            credentials.unlink()
    assert sorted(built) == ["database-secrets", "dev", "egress-policy", "monitoring", "namespaced", "openstack"]
    policy = next(d for d in built["egress-policy"] if d["kind"] == "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    controller = next(d for d in built["egress-policy"] if d["kind"] == "Deployment")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= controller["spec"]["template"]["metadata"][
        "labels"].items(), "the policy selects the controller's pods"
    role = next(d for d in built["namespaced"] if d["kind"] == "Role")
    assert role["metadata"]["namespace"] == "epctl-system"
    assert not any(d["kind"].startswith("Cluster") and d["kind"] != "CustomResourceDefinition"
                   for d in built["namespaced"])
    assert {d["kind"] for d in built["monitoring"]} >= {"ServiceMonitor", "PrometheusRule"}
    assert next(d for d in built["dev"] if d["kind"] == "Deployment")["spec"]["replicas"] == 1
    secret = next(d for d in built["openstack"] if d["kind"] == "Secret")
    assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == ("openstack-credentials", "default")
    readers = [d for d in built["openstack"] if d["kind"] in ("Role", "ClusterRole")
               and any("secrets" in r["resources"] for r in d["rules"])]
    assert [(d["kind"], d["metadata"]["namespace"]) for d in readers] == [("Role", "default")]
    db_readers = [d for d in built["database-secrets"] if d["kind"] in ("Role", "ClusterRole")
                  and any("secrets" in r["resources"] for r in d["rules"])]
    assert [(d["kind"], d["metadata"]["namespace"], d["rules"]) for d in db_readers] == [
        ("Role", "default", [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}])]
    assert not any("secrets" in r["resources"] for d in built["monitoring"] if d["kind"] == "ClusterRole"
                   for r in d["rules"]), "the base grants no Secrets"
    dev = next(d for d in built["dev"] if d["kind"] == "Deployment")
    assert "--log-level=debug" in dev["spec"]["template"]["spec"]["containers"][0]["args"]


def granted(*files: Path) -> set[tuple[str, str, str]]:
    roles = [d for f in (BASE / "rbac.yaml", *files) for d in yaml.safe_load_all(f.read_text())
             if d["kind"] in ("ClusterRole", "Role")]
    return {(group, resource, verb) for role in roles for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


async def test_cluster_role_grants_exactly_what_the_controller_uses(api: KubeAPIServer, tmp_path: Any) -> None:
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="rbac-test-setup")
    controller_client = await KubeClient.connect(api.kubeconfig_path)
    try:
        await install_crd(setup)
        await setup.request("POST", "/api/v1/namespaces", body={"metadata": {"name": "epctl-system"}})
        # left behind while no controller ran (the garbage collector down): a deleted ClusterEndpoint's
        # slice and a mirror's whose annotation went; the sweep reads their owners again, then deletes
        api.store.gc_paused = True
        await setup.request("POST", SERVICES.path("default"), body={
            "metadata": {"name": "was-mirror"}, "spec": {"ports": [{"name": "p", "port": 1}]}})
        for name, extra in (("ghost", {"ownerReferences": [{
                "apiVersion": "epctl.io/v1beta1", "kind": "ClusterEndpoint", "name": "ghost", "uid": "gone-uid",
                "controller": True}]}), ("was-mirror", {})):
            labels = {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by":
                      "controller.epctl.io", **({} if extra else {"epctl.io/mirrored": "true"})}
            await setup.request("POST", ENDPOINTSLICES.path("default"), body={
                "metadata": {"name": f"{name}-1", "labels": labels, **extra}, "addressType": "IPv4",
                "ports": [{"name": "p", "port": 1}], "endpoints": [{"addresses": ["10.0.0.9"]}]})
        async with TCPBackend() as db, running_controller(
                api, controller_client, shard=True, leader_election_namespace="epctl-system",
                lease_duration=3.0, renew_deadline=2.0, retry_period=0.3) as controller:
            await eventually(lambda: controller.leading, message="a member of the ring")
            await eventually(lambda: not slices_of(api, "ghost") and not slices_of(api, "was-mirror"),
                             message="what nobody claims is swept")
            api.store.resume_gc()
            # a member that left (released its Lease after its last write): the others delete its Lease
            await setup.request("POST", LEASES.path("epctl-system"), body={
                "metadata": {"name": "epctl-member-gone", "labels": {GROUP_LABEL: "epctl-controller"},
                             "annotations": {RELEASED_ANNOTATION: "gone"}},
                "spec": {"holderIdentity": "", "leaseDurationSeconds": 3}})
            await eventually(lambda: ("epctl-system", "epctl-member-gone") not in api.store.objects[
                ("coordination.k8s.io", "leases")], message="a released member Lease deleted")
            await setup.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("pg", [
                {"name": "pg", "port": 5432, "targetPort": db.port, "hosts": ["127.0.0.1"], "tcpSocket": {},
                 "periodSeconds": 1, "failureThreshold": 1}]))
            await eventually(lambda: endpoints_of(api, "pg") == {("pg", "127.0.0.1"): True}, message="ready")
            for mode, ready in (("closed", False), ("accepting", True), ("closed", False)):  # 2nd Event: a patch
                await db.set_mode(mode)
                await eventually(lambda r=ready: endpoints_of(api, "pg") == {("pg", "127.0.0.1"): r},  # type: ignore[misc]
                                 message=f"{mode}")

            async def edit(change: Any) -> None:
                for _attempt in range(5):  # again on a conflict: the controller writes the status
                    current = await setup.request("GET", CLUSTERENDPOINTS.path("default", "pg"))
                    change(current["spec"])
                    try:
                        await setup.request("PUT", CLUSTERENDPOINTS.path("default", "pg"), body=current)
                        return
                    except ApiError as err:
                        if err.code != 409:
                            raise
                raise AssertionError("five conflicting writes in a row")

            await edit(lambda spec: spec["ports"][0].update({"port": 5433, "targetPort": db.port + 0}))
            await eventually(lambda: service_of(api, "pg")["spec"]["ports"][0]["port"] == 5433,  # type: ignore[index]
                             message="service patched")
            await edit(lambda spec: spec.update({"clusterIP": "None"}))
            await eventually(lambda: service_of(api, "pg")["spec"].get("clusterIP") == "None",  # type: ignore[index]
                             message="headless: service replaced")
            await edit(lambda spec: spec["ports"][0].update({"name": "postgres"}))
            await eventually(lambda: [s["ports"][0]["name"] for s in slices_of(api, "pg")] == ["postgres"],
                             message="slice replaced (create + delete)")
            await setup.request("POST", SERVICES.path("default"), body={
                "metadata": {"name": "src"}, "spec": {"ports": [{"name": "https", "port": 443}]}})
            await setup.request("POST", ENDPOINTSLICES.path("default"), body={
                "metadata": {"name": "src", "labels": {"kubernetes.io/service-name": "src"}}, "addressType": "IPv4",
                "ports": [{"name": "https", "port": 6443}], "endpoints": [{"addresses": ["10.0.0.1"]}]})
            await setup.request("POST", SERVICES.path("default"), body={
                "metadata": {"name": "dst", "annotations": {"epctl.io/mirror-from": "default/src"}},
                "spec": {"ports": [{"name": "api", "port": 443, "targetPort": "https"}]}})
            await eventually(lambda: slices_of(api, "dst"), message="mirrored")
            await setup.request("PATCH", SERVICES.path("default", "dst"), content_type=MERGE_PATCH,
                                body={"metadata": {"annotations": {"epctl.io/mirror-from": None}}})
            await eventually(lambda: not slices_of(api, "dst"), message="mirror removed")
            await setup.request("POST", SERVICES.path("default"), body={  # a seed tool's leftovers...
                "metadata": {"name": "legacy"}, "spec": {"ports": [{"name": "pg", "port": 5432}]}})
            await setup.request("POST", "/api/v1/namespaces/default/endpoints", body={
                "metadata": {"name": "legacy"}, "subsets": [{"addresses": [{"ip": "127.0.0.9"}],
                                                             "ports": [{"name": "pg", "port": db.port}]}]})
            adopting = cep("legacy", [{"name": "pg", "port": 5432, "targetPort": db.port, "hosts": ["127.0.0.1"]}])
            adopting["metadata"]["annotations"] = {"epctl.io/adopt": "true"}
            await setup.request("POST", CLUSTERENDPOINTS.path("default"), body=adopting)  # ...taken over
            await eventually(lambda: endpoints_of(api, "legacy") == {("pg", "127.0.0.1"): True},
                             message="legacy Endpoints taken over")
            async with FakeOpenStack() as cloud:  # spec.discovery.openstack reads its Secret
                cloud.add_server("vm-1", fixed=["10.0.0.7"])
                await setup.request("POST", SECRETS.path("default"), body={
                    "metadata": {"name": "os"}, "stringData": {
                        "OS_AUTH_URL": cloud.auth_url,
                        "OS_APPLICATION_CREDENTIAL_ID": cloud.credentials.app_credential_id,
                        "OS_APPLICATION_CREDENTIAL_SECRET": cloud.credentials.app_credential_secret}})
                await setup.request("POST", CLUSTERENDPOINTS.path("default"), body=cep(
                    "vms", [{"name": "ssh", "port": 22}], discovery={"openstack": {"secretRef": {"name": "os"},
                                                                                   "pollSeconds": 1}}))
                await eventually(lambda: slices_of(api, "vms"), message="discovered")
    finally:
        await setup.close()
        await controller_client.close()
    used = {(r.group, r.resource + (f"/{r.subresource}" if r.subresource else ""), r.verb)
            for r in api.request_log if r.user_agent.startswith("epctl/") and r.resource}
    with_openstack = granted(ROOT / "manifests/overlays/openstack/secrets-rbac.yaml")  # this test uses discovery
    assert used - with_openstack == set(), "the ClusterRole misses grants the controller needs"
    assert with_openstack - used == set(), "the ClusterRole grants something the controller never uses"
    assert ("", "secrets", "list") not in granted(), "Secrets are the openstack overlay's grant, not the base's"


def test_dockerfile_is_multi_stage_non_root_with_entrypoint() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim@sha256:[0-9a-f]{64}$", text, re.M), "base pinned by digest"
    assert text.count("FROM ${BASE}") == 2 and "USER 65532:65532" in text
    assert "-c constraints.txt" in text
    pinned = {line.split("==")[0].lower().replace("_", "-") for line in (ROOT / "constraints.txt").read_text()
              .splitlines() if "==" in line and not line.startswith("#")}
    assert {"aiohttp", "grpcio", "openstacksdk", "kubernetes-asyncio", "uvloop", "prometheus-client"} <= pinned
    assert 'ENTRYPOINT ["epctl"]' in text and 'CMD ["controller"]' in text  # no Docker engine here to build it


def test_every_crd_field_has_a_description() -> None:
    """`kubectl explain clusterendpoint.spec...` must answer for every field: a field without a description
    fails here, naming its path."""
    crd = yaml.safe_load((ROOT / "manifests/base/crd.yaml").read_text())
    missing: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        if not node.get("description"):
            missing.append(path)
        if node.get("type") == "array":
            walk_children(node["items"], f"{path}[]")
        walk_children(node, path)

    def walk_children(node: dict[str, Any], path: str) -> None:
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{path}.{name}")

    for version in crd["spec"]["versions"]:
        walk_children(version["schema"]["openAPIV3Schema"], "clusterendpoint")
        missing += [f"column {c['name']}" for c in version["additionalPrinterColumns"] if not c.get("description")]
    assert missing == []


async def test_kubectl_explain_describes_the_probe_fields(kubectl: Kubectl) -> None:
    await kubectl("apply", "-f", str(ROOT / "manifests/base/crd.yaml"))
    await kubectl("wait", "--for=condition=established", "crd/clusterendpoints.epctl.io", "--timeout=10s")
    explained = (await kubectl("explain", "clusterendpoint.spec.ports.failureThreshold")).stdout
    assert "Consecutive failures after which a host is marked not ready." in explained
    explained = (await kubectl("explain", "clusterendpoint.spec")).stdout
    assert "The Service's ports" in explained and "periodSeconds" in explained
    explained = (await kubectl("explain", "clusterendpoint.spec.zones")).stdout
    assert "Zone -> the hosts" in explained
    explained = (await kubectl("explain", "clusterendpoint")).stdout
    assert "epctl.io/drain" in explained  # the maintenance annotation is described where kubectl users look


async def test_the_dashboard_queries_only_metrics_the_controller_exports(
        api: KubeAPIServer, client: KubeClient, kubectl: Kubectl) -> None:
    """Every metric a Grafana panel (or an alert) queries exists in a running controller's /metrics: a renamed
    metric would otherwise leave an empty panel nobody notices until the outage."""
    import json
    import re

    from prometheus_client import REGISTRY, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    built = list(yaml.safe_load_all((await kubectl("kustomize", str(ROOT / "manifests/overlays/monitoring"))).stdout))
    config_map = next(d for d in built if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("dashboard"))
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["epctl-dashboard.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(dashboard["templating"]["list"][1]["query"]["query"])
    rules = next(d for d in built if d["kind"] == "PrometheusRule")
    exprs += [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    selected = [d for d in built if d["kind"] in ("ServiceMonitor", "PrometheusRule")]
    assert all(d["metadata"]["labels"].get("release") for d in selected), "kube-prometheus-stack selects on it"
    queried = {re.sub(r"_(bucket|total|count|sum)$", "", m) for e in exprs for m in re.findall(r"epctl_[a-z_]+", e)}
    await install_crd(client)
    async with TCPBackend() as db, running_controller(api, client) as controller:
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("pg", [
            {"name": "pg", "port": 5432, "targetPort": db.port, "hosts": ["127.0.0.1"], "tcpSocket": {}}]))
        await eventually(lambda: endpoints_of(api, "pg") == {("pg", "127.0.0.1"): True}, message="ready")
        controller._refresh_gauges()
        exported = {f.name for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())}
        samples = generate_latest(REGISTRY).decode()
    assert queried - exported == set(), "queried but not exported"
    assert 'epctl_service_endpoints{namespace="default",service="pg",state="ready"} 1.0' in samples
