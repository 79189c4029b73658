"""Topology hints, pure: which Services ask, zone shares from Nodes, the allocation and its safeguards,
and kube-proxy's rule (the test helper) reading what we write."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from epctl.state import Endpoint, PortGroup, SlicePort
from epctl.testing.kubeproxy import routes
from epctl.topology import (
    AUTO,
    PREFER_CLOSE,
    auto_hints,
    cpu_millis,
    requested_mode,
    trim_node,
    with_hints,
    zone_ratios,
)


def service(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "db", "annotations": annotations or {}}, "spec": spec}


def node(zone: str | None, cpu: str | None, ready: str = "True", **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": f"n-{zone}", "labels": {**({"topology.kubernetes.io/zone": zone} if zone else {}),
                                                        **labels}},
            "status": {**({"allocatable": {"cpu": cpu}} if cpu else {}),
                       "conditions": [{"type": "Ready", "status": ready}]}}


def test_which_services_ask() -> None:
    assert requested_mode(service({"service.kubernetes.io/topology-mode": "Auto"})) == AUTO
    assert requested_mode(service({"service.kubernetes.io/topology-aware-hints": "auto"})) == AUTO
    # the deprecated annotation wins when both are set (hintsEnabled)
    assert requested_mode(service({"service.kubernetes.io/topology-aware-hints": "disabled",
                                   "service.kubernetes.io/topology-mode": "Auto"})) is None
    assert requested_mode(service({"service.kubernetes.io/topology-mode": "Disabled"},
                                  trafficDistribution="PreferClose")) is None
    assert requested_mode(service(trafficDistribution="PreferClose")) == PREFER_CLOSE
    assert requested_mode(service()) is None and requested_mode(None) is None


def test_cpu_quantities() -> None:
    assert [cpu_millis(q) for q in ("2", "1500m", "0.5", "1k", None, "lots")] == [2000, 1500, 500, 1_000_000, 0, 0]


def test_zone_shares_skip_control_plane_and_unready_nodes_and_need_two_zones() -> None:
    ratios, _ = zone_ratios([node("a", "1"), node("b", "3"), node("c", "8", ready="False"),
                             node("d", "8", **{"node-role.kubernetes.io/control-plane": ""})])
    assert ratios == {"a": 0.25, "b": 0.75}
    assert zone_ratios([node("a", "1"), node(None, "2")])[0] is None
    assert zone_ratios([node("a", "1"), node("b", None)])[0] is None
    assert zone_ratios([node("a", "1")]) == (None, "Nodes ready in one zone only (a)")


def eps(*zones: str | None, ready: bool = True) -> list[Endpoint]:
    return [Endpoint(f"10.0.0.{i}", ready, ready, zone=z) for i, z in enumerate(zones, 1)]


def test_allocation_hands_surplus_to_the_zone_short_of_its_share() -> None:
    hints, _, _ = auto_hints(eps("a", "a", "a", "b"), {"a": 0.5, "b": 0.5})
    assert hints is not None and sorted(hints.values()) == ["a", "a", "b", "b"]
    assert hints["10.0.0.4"] == "b"  # its own zone stays


def test_safeguards() -> None:
    ratios = {"a": 0.5, "b": 0.5}
    assert auto_hints(eps("a", None), ratios)[1] == "EndpointWithoutZone"
    assert auto_hints(eps("a", "a"), ratios)[1] == "ZoneWithoutEndpoints"
    assert auto_hints(eps("a", "b", "b"), {"a": 0.5, "b": 0.5})[1] == "InsufficientEndpoints"  # min 2 + 2 > 3
    assert auto_hints(eps("a", "b"), None, "Nodes ready in one zone only (a)")[1:] == (
        "InsufficientNodeInfo", "Nodes ready in one zone only (a)")
    # not-ready endpoints neither count nor get hints
    assert auto_hints([*eps("a", "b"), Endpoint("10.0.0.9", False, False, zone=None)], ratios)[0] == {
        "10.0.0.1": "a", "10.0.0.2": "b"}


def test_endpoints_in_zones_without_nodes_are_handed_out() -> None:
    hints, _, _ = auto_hints(eps("a", "b", "x", "x"), {"a": 0.5, "b": 0.5})
    assert hints is not None and sorted(hints.values()) == ["a", "a", "b", "b"]


def group(endpoints: list[Endpoint]) -> PortGroup:
    return PortGroup("IPv4", (SlicePort("pg", 5432),), {e.address: e for e in endpoints})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "x"]), st.booleans()), min_size=1, max_size=12),
       st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(1, 8), min_size=2))
def test_hints_never_send_a_zone_to_nothing_and_stay_within_the_overload_bound(
        endpoints: list[tuple[str, bool]], cpus: dict[str, int]) -> None:
    """Whatever the split, every zone's kube-proxy gets at least one ready endpoint, and no zone's share
    of hints exceeds its CPU share by more than the threshold allows (or hints are off altogether)."""
    total = sum(cpus.values())
    ratios = {z: c / total for z, c in cpus.items()}
    members = [Endpoint(f"10.0.0.{i}", ready, ready, zone=z) for i, (z, ready) in enumerate(endpoints, 1)]
    (hinted,), verdict = with_hints([group(members)], AUTO, ratios)
    slices = [{"ports": [{"name": "pg"}], "endpoints": [e.to_api() for e in hinted.endpoints.values()]}]
    ready = {e.address for e in members if e.ready}
    svc = service({"service.kubernetes.io/topology-mode": "Auto"})
    for zone in cpus:
        routed = routes(svc, slices, {"metadata": {"labels": {"topology.kubernetes.io/zone": zone}}}, "pg")
        assert routed <= ready and (routed or not ready)
        if not verdict.enabled:
            assert routed == ready
    if verdict.enabled:
        counts = {z: sum(1 for e in hinted.endpoints.values() if e.hints and json.loads(e.hints)["forZones"][0]
                         ["name"] == z) for z in cpus}
        for zone, ratio in ratios.items():
            assert counts[zone] >= -(-ratio * len(ready) // 1.2) - 1e-9  # at least ceil(desired / 1.2)


def test_prefer_close_hints_each_endpoint_for_its_zone_and_kube_proxy_falls_back() -> None:
    (hinted,), verdict = with_hints([group(eps("a", "b", None))], PREFER_CLOSE, None)
    assert verdict.enabled
    assert {a: e.hints for a, e in hinted.endpoints.items()} == {
        "10.0.0.1": '{"forZones": [{"name": "a"}]}', "10.0.0.2": '{"forZones": [{"name": "b"}]}', "10.0.0.3": None}
    slices = [{"ports": [{"name": "pg"}], "endpoints": [e.to_api() for e in hinted.endpoints.values()]}]
    # an endpoint without a hint: kube-proxy ignores topology for everyone
    zone_a = {"metadata": {"labels": {"topology.kubernetes.io/zone": "a"}}}
    assert routes(service(trafficDistribution="PreferClose"), slices, zone_a, "pg") == {
        "10.0.0.1", "10.0.0.2", "10.0.0.3"}


def test_kube_proxy_falls_back_to_serving_terminating_endpoints() -> None:
    slices = [{"ports": [{"name": "pg"}], "endpoints": [
        {"addresses": ["10.0.0.1"], "conditions": {"ready": False, "serving": True, "terminating": True}},
        {"addresses": ["10.0.0.2"], "conditions": {"ready": False, "serving": False, "terminating": True}}]}]
    assert routes(service(), slices, {"metadata": {}}, "pg") == {"10.0.0.1"}
    slices[0]["endpoints"].append({"addresses": ["10.0.0.3"], "conditions": {"ready": True}})
    assert routes(service(), slices, {"metadata": {}}, "pg") == {"10.0.0.3"}


def test_a_cached_node_keeps_only_what_the_shares_need() -> None:
    big = node("a", "4")
    big["status"].update({"images": [{"names": ["x" * 100]}] * 50, "capacity": {"cpu": "8"}})
    big["spec"] = {"podCIDR": "10.244.0.0/24"}
    trim_node(big)
    assert big == {"metadata": {"name": "n-a", "labels": {"topology.kubernetes.io/zone": "a"}},
                   "status": {"allocatable": {"cpu": "4"}, "conditions": [{"type": "Ready", "status": "True"}]}}
    assert zone_ratios([big, node("b", "4")])[0] == {"a": 0.5, "b": 0.5}
