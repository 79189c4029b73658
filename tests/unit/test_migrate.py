"""Converting the old tools' objects into epctl ClusterEndpoints (pure)."""

from __future__ import annotations

from pathlib import Path

import yaml

from epctl.api import parse_cluster_endpoint
from epctl.migrate import convert_documents

SEED = Path(__file__).resolve().parents[1] / "data" / "seeds" / "kube-endpoints-example.yaml"


def test_the_seed_readme_example_converts_by_changing_only_the_api_version() -> None:
    old = yaml.safe_load(SEED.read_text())
    for api_version in ("khulnasoft-lab.github.io/v1beta1", "sealos.io/v1beta1"):
        [conversion] = convert_documents([{**old, "apiVersion": api_version}])
        assert conversion.problems == [] and conversion.result is not None
        assert conversion.result["apiVersion"] == "epctl.io/v1beta1"
        assert conversion.result["spec"] == old["spec"]
        assert conversion.result["metadata"]["annotations"]["epctl.io/adopt"] == "true"


def test_a_service_and_endpoints_pair_becomes_a_health_checked_clusterendpoint() -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "prod"},
               "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}, {"name": "stats", "port": 9000,
                                                                                        "protocol": "UDP"}]}}
    endpoints = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "db", "namespace": "prod"},
                 "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "notReadyAddresses": [{"ip": "10.0.0.2"}],
                              "ports": [{"name": "pg", "port": 6432}, {"name": "stats", "port": 9001,
                                                                       "protocol": "UDP"}]}]}
    [conversion] = convert_documents([service, endpoints])
    assert conversion.result is not None
    spec, errors = parse_cluster_endpoint(conversion.result)
    assert spec is not None and errors == []
    pg, stats = conversion.result["spec"]["ports"]
    assert (pg["port"], pg["targetPort"], pg["hosts"], pg["tcpSocket"]) == (5432, 6432, ["10.0.0.1", "10.0.0.2"],
                                                                           {"enable": True})
    assert "tcpSocket" not in stats and any("UDP" in note for note in conversion.notes)
    assert conversion.result["spec"]["clusterIP"] == "None"


def test_what_cannot_be_converted_is_listed_with_the_reason() -> None:
    selector = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
    alone = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lonely"}, "spec": {"ports": [{"port": 80}]}}
    bad = {"apiVersion": "sealos.io/v1beta1", "kind": "ClusterEndpoint", "metadata": {"name": "bad"},
           "spec": {"ports": [{"name": "x", "port": 80, "hosts": ["169.254.169.254"], "tcpSocket": {}}]}}
    conversions = {c.source: c for c in convert_documents([selector, alone, bad])}
    assert "Service web" not in conversions  # a selector Service is Kubernetes' own: not even a candidate
    assert "no Endpoints object" in conversions["Service lonely"].problems[0]
    assert "metadata service" in conversions["sealos.io/v1beta1 ClusterEndpoint bad"].problems[0]


def test_a_service_the_old_operator_created_is_not_converted_twice() -> None:
    old = {"apiVersion": "sealos.io/v1beta1", "kind": "ClusterEndpoint", "metadata": {"name": "wp"},
           "spec": {"ports": [{"name": "wp", "port": 80, "hosts": ["10.0.0.1"], "tcpSocket": {"enable": True}}]}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "wp"}, "spec": {"ports": [{"port": 80}]}}
    endpoints = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "wp"},
                 "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]}
    assert [c.source for c in convert_documents([service, endpoints, old])] == ["sealos.io/v1beta1 ClusterEndpoint wp"]


def _pair(name: str, namespace: str = "default", labels: dict[str, str] | None = None,
          owners: list[dict[str, object]] | None = None, on_endpoints: bool = False) -> list[dict[str, object]]:
    meta: dict[str, object] = {"name": name, "namespace": namespace}
    extra: dict[str, object] = {**({"labels": labels} if labels else {}),
                                **({"ownerReferences": owners} if owners else {})}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {**meta, **({} if on_endpoints else extra)},
               "spec": {"ports": [{"port": 80}]}}
    endpoints = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {**meta, **(extra if on_endpoints else {})},
                 "subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]}
    return [service, endpoints]


def test_pairs_another_controller_manages_are_skipped_with_the_reason_unless_included() -> None:
    controller = {"apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus", "name": "k8s", "uid": "u1",
                  "controller": True}
    old_owner = {"apiVersion": "sealos.io/v1beta1", "kind": "ClusterEndpoint", "name": "legacy", "uid": "u2",
                 "controller": True}
    documents = [*_pair("kubelet", "kube-system"), *_pair("prom", labels={"app.kubernetes.io/managed-by": "Helm2"}),
                 *_pair("scraped", labels={"app.kubernetes.io/managed-by": "prometheus-operator"}, on_endpoints=True),
                 *_pair("owned", owners=[controller]), *_pair("legacy", owners=[old_owner]),
                 *_pair("plain", labels={"app.kubernetes.io/managed-by": "epctl"})]
    conversions = {c.source: c for c in convert_documents(documents)}
    skipped = {source: c.skipped for source, c in conversions.items() if c.skipped}
    assert set(skipped) == {"Service kube-system/kubelet", "Service default/prom", "Service default/scraped",
                            "Service default/owned"}
    assert "kube-system" in str(skipped["Service kube-system/kubelet"])
    assert "prometheus-operator" in str(skipped["Service default/scraped"])  # the label on the Endpoints counts
    assert "Prometheus k8s" in str(skipped["Service default/owned"])
    assert all(c.result is None and not c.problems for c in conversions.values() if c.skipped)
    assert conversions["Service default/legacy"].result is not None  # the old operator's own leftovers
    assert conversions["Service default/plain"].result is not None

    included = {c.source: c for c in convert_documents(documents, include=["default/owned", "kube-system/kubelet"])}
    assert included["Service default/owned"].result is not None
    assert included["Service kube-system/kubelet"].result is not None
    asked = {c.source: c for c in convert_documents(_pair("kubelet", "kube-system"), system_ok=True)}
    assert asked["Service kube-system/kubelet"].result is not None
