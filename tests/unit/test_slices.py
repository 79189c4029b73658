from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from epctl.slices import GROUP_LABEL, MANAGED_BY_LABEL, SERVICE_NAME_LABEL, apply_plan, normalize_endpoint, plan_slices
from epctl.state import DesiredState, Endpoint, PortGroup, SlicePort, Target

PORT = (SlicePort("http", 8080, "TCP"),)
OWNER = [{"apiVersion": "epctl.io/v1beta1", "kind": "ClusterEndpoint", "name": "svc", "uid": "u-1",
          "controller": True, "blockOwnerDeletion": True}]


def group(addresses: dict[str, bool], ports: tuple[SlicePort, ...] = PORT, family: str = "IPv4") -> PortGroup:
    return PortGroup(family, ports, {a: Endpoint(a, r, r) for a, r in addresses.items()})


def ip(i: int) -> str:
    return f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"


def plan(groups: list[PortGroup], observed: list[dict[str, Any]], max_per_slice: int = 100) -> Any:
    return plan_slices("ns", "svc", groups, observed, max_per_slice=max_per_slice, owner_references=OWNER)


def endpoints_of(slices: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for obj in slices:
        for endpoint in obj["endpoints"]:
            address = endpoint["addresses"][0]
            assert address not in out, f"{address} appears twice"
            out[address] = normalize_endpoint(endpoint)
    return out


def test_create_splits_at_max_with_labels_owner_and_stable_names() -> None:
    g = group({ip(i): True for i in range(250)})
    p = plan([g], [])
    assert (len(p.creates), len(p.updates), len(p.deletes)) == (3, 0, 0)
    assert [len(s["endpoints"]) for s in p.creates] == [100, 100, 50]
    first = p.creates[0]
    assert first["metadata"]["name"].startswith("svc-") and first["metadata"]["name"].endswith("-0")
    assert first["metadata"]["labels"][SERVICE_NAME_LABEL] == "svc"
    assert first["metadata"]["labels"][MANAGED_BY_LABEL] == "controller.epctl.io"
    assert first["metadata"]["ownerReferences"] == OWNER
    assert first["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert first["endpoints"][0]["conditions"] == {"ready": True, "serving": True, "terminating": False}
    assert plan([g], []).creates == p.creates  # deterministic


def test_condition_flip_is_one_update_of_one_slice_and_noop_is_zero() -> None:
    addresses = {ip(i): True for i in range(250)}
    slices = apply_plan([], plan([group(addresses)], []))
    assert plan([group(addresses)], slices).empty
    addresses[ip(120)] = False
    p = plan([group(addresses)], slices)
    assert (len(p.creates), len(p.updates), len(p.deletes)) == (0, 1, 0)
    changed = p.updates[0]["endpoints"]
    assert any(e["addresses"] == [ip(120)] and e["conditions"]["ready"] is False for e in changed)


def test_removing_hosts_shrinks_without_churning_other_slices() -> None:
    addresses = {ip(i): True for i in range(250)}
    slices = apply_plan([], plan([group(addresses)], []))
    for endpoint in slices[-1]["endpoints"]:  # the whole last slice
        del addresses[endpoint["addresses"][0]]
    p = plan([group(addresses)], slices)
    assert (len(p.creates), len(p.updates), len(p.deletes)) == (0, 0, 1)
    del addresses[slices[0]["endpoints"][3]["addresses"][0]]
    slices = apply_plan(slices, p)
    p = plan([group(addresses)], slices)
    assert (len(p.creates), len(p.updates), len(p.deletes)) == (0, 1, 0)


def test_small_addition_goes_into_an_existing_slice_not_a_new_one() -> None:
    addresses = {ip(i): True for i in range(150)}
    slices = apply_plan([], plan([group(addresses)], []))
    addresses.update({ip(i): True for i in range(150, 160)})
    p = plan([group(addresses)], slices)
    assert (len(p.creates), len(p.updates)) == (0, 1)
    assert len(p.updates[0]["endpoints"]) == 60


def test_port_change_replaces_slices_and_foreign_shapes_are_deleted() -> None:
    addresses = {ip(i): True for i in range(3)}
    slices = apply_plan([], plan([group(addresses)], []))
    other = group(addresses, (SlicePort("http", 9090, "TCP"),))
    p = plan([other], slices)
    assert (len(p.creates), len(p.updates), len(p.deletes)) == (1, 0, 1)
    p = plan([], slices)
    assert len(p.deletes) == 1 and not p.creates


def test_label_or_owner_drift_is_repaired_by_an_update() -> None:
    slices = apply_plan([], plan([group({ip(1): True})], []))
    drifted = copy.deepcopy(slices)
    drifted[0]["metadata"]["labels"].pop(GROUP_LABEL)
    assert len(plan([group({ip(1): True})], drifted).deletes) == 1  # unknown group: replaced
    drifted = copy.deepcopy(slices)
    drifted[0]["metadata"]["ownerReferences"] = []
    assert len(plan([group({ip(1): True})], drifted).updates) == 1


def test_desired_state_marks_dirty_only_on_change() -> None:
    woke: list[tuple[str, str]] = []
    state = DesiredState(woke.append)
    target = Target("ns", "svc", {"http/IPv4": group({ip(1): False})})
    assert state.set_target(target) and woke == [("ns", "svc")]
    assert not state.set_target(Target("ns", "svc", {"http/IPv4": group({ip(1): False})}))
    assert state.set_ready(("ns", "svc"), "http/IPv4", ip(1), True)
    assert not state.set_ready(("ns", "svc"), "http/IPv4", ip(1), True)
    assert not state.set_ready(("ns", "svc"), "http/IPv4", ip(9), True)
    assert state.take_dirty() == {("ns", "svc")} and state.take_dirty() == set()
    assert len(woke) == 2


endpoint_sets = st.dictionaries(st.integers(0, 400).map(ip), st.booleans(), max_size=300)


@st.composite
def observed_slices(draw: st.DrawFn, max_per_slice: int) -> list[dict[str, Any]]:
    """Arbitrary starting points: earlier plans, partial garbage, duplicates, overfull slices."""
    base = draw(endpoint_sets)
    slices = apply_plan([], plan([group(base)], [], max_per_slice))
    for obj in slices:
        if draw(st.booleans()):
            extra = draw(st.lists(st.integers(0, 400).map(ip), max_size=5))
            obj["endpoints"] += [Endpoint(a, True, True).to_api() for a in extra]
    if draw(st.booleans()):
        slices += apply_plan([], plan([group(base, (SlicePort("old", 1, "TCP"),))], [], max_per_slice))
    return slices


@settings(max_examples=150, deadline=None)
@given(st.data(), endpoint_sets, endpoint_sets.map(lambda d: {k: v for k, v in list(d.items())[:50]}),
       st.sampled_from([1, 7, 100]))
def test_plan_converges_in_one_step_and_never_exceeds_max(data: st.DataObject, ipv4: dict[str, bool],
                                                         second: dict[str, bool], max_per_slice: int) -> None:
    groups = [group(ipv4), group(second, (SlicePort("grpc", 9000, "TCP"),))]
    observed = data.draw(observed_slices(max_per_slice))
    p = plan(groups, observed, max_per_slice)
    after = apply_plan(observed, p)
    for g in groups:
        mine = [s for s in after if s["ports"] == [port.to_api() for port in g.ports]]
        assert endpoints_of(mine) == {a: normalize_endpoint(e.to_api()) for a, e in g.endpoints.items()}
        assert all(0 < len(s["endpoints"]) <= max_per_slice for s in mine)
    assert len(after) == len({s["metadata"]["name"] for s in after})
    assert plan(groups, after, max_per_slice).empty
