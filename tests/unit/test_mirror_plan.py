from __future__ import annotations

from typing import Any

from epctl.sources.mirror import mirror_source, plan_mirror


def svc(name: str, ports: list[dict[str, Any]], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "annotations": annotations or {}},
            "spec": {"ports": ports}}


def slice_(name: str, family: str, ports: list[dict[str, Any]], endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "addressType": family, "ports": ports, "endpoints": endpoints}


def test_annotations_and_flags_name_the_source() -> None:
    assert mirror_source(svc("vip", [], {"epctl.io/mirror-from": "default/kubernetes"})) == ("default", "kubernetes")
    assert mirror_source(svc("vip", [], {"epctl.io/mirror-from": "kubernetes"})) == ("default", "kubernetes")
    seed = {"endpoint-copier/enabled": "true", "endpoint-copier/default-service-name": "api",
            "endpoint-copier/default-service-namespace": "infra"}
    assert mirror_source(svc("vip", [], seed)) == ("infra", "api")
    assert mirror_source(svc("vip", [], {"endpoint-copier/enabled": "false"})) is None
    assert mirror_source(svc("vip", []), {("default", "vip"): ("default", "kubernetes")}) == ("default", "kubernetes")


def test_ports_resolve_numeric_named_and_default_and_families_stay_apart() -> None:
    target = svc("vip", [{"name": "k8s", "port": 443, "targetPort": 6443, "protocol": "TCP"},
                         {"name": "named", "port": 80, "targetPort": "https"},
                         {"name": "plain", "port": 9345},
                         {"name": "nowhere", "port": 1, "targetPort": "missing"}])
    source = [
        slice_("a", "IPv4", [{"name": "https", "port": 6443}], [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": True, "serving": True, "terminating": False},
             "nodeName": "cp-1", "zone": "z1", "hints": {"forZones": [{"name": "z1"}]}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": False, "serving": True, "terminating": True}}]),
        slice_("b", "IPv6", [{"name": "https", "port": 6443}], [{"addresses": ["fd00::1"], "conditions": {}}]),
    ]
    plan = plan_mirror(target, source)
    assert plan.unresolved == ["nowhere"]
    assert sorted(g.address_type for g in plan.groups.values()) == ["IPv4", "IPv6"]
    v4 = next(g for g in plan.groups.values() if g.address_type == "IPv4")
    assert [(p.name, p.port) for p in v4.ports] == [("k8s", 6443), ("named", 6443), ("plain", 9345)]
    first, second = v4.endpoints["10.0.0.1"], v4.endpoints["10.0.0.2"]
    assert (first.ready, first.node_name, first.zone) == (True, "cp-1", "z1") and first.hints
    assert (second.ready, second.serving, second.terminating) == (False, True, True)
    v6 = next(g for g in plan.groups.values() if g.address_type == "IPv6")
    assert v6.endpoints["fd00::1"].ready is True  # unset ready means ready
    assert plan_mirror(target, []).groups == {} and plan_mirror(target, []).unresolved == []
