"""Maintenance and leaving endpoints, pure parts: the drain annotation and spec.zones as parsed, the
store's terminating semantics (a drained endpoint's probe moves serving only; a removed endpoint
stays terminating for its Target's grace)."""

from __future__ import annotations

from typing import Any

from epctl.api import parse_cluster_endpoint
from epctl.api.parse import unknown_drained
from epctl.drain import new_value
from epctl.state import DesiredState, Endpoint, PortGroup, SlicePort, Target


def document(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "epctl.io/v1beta1", "kind": "ClusterEndpoint",
            "metadata": {"name": "db", "annotations": annotations or {}},
            "spec": {"ports": [{"name": "pg", "port": 5432, "hosts": ["10.0.0.1", "10.0.0.2", "db.example.com"]}],
                     **spec}}


def test_drain_annotation_names_listed_hosts() -> None:
    spec, errors = parse_cluster_endpoint(document({"epctl.io/drain": " 10.0.0.2, db.example.com,10.0.0.2,"}))
    assert errors == [] and spec is not None and spec.drain == ("10.0.0.2", "db.example.com")
    # a host no longer listed is reported by the controller, not an error: "drain, then remove" must work
    spec, errors = parse_cluster_endpoint(document({"epctl.io/drain": "10.0.0.9,10.0.0.1"}))
    assert errors == [] and spec is not None and unknown_drained(spec) == ["10.0.0.9"]
    _, errors = parse_cluster_endpoint(document({"epctl.io/drain": "not a host"}))
    assert "must be an IP address or DNS name" in str(errors[0])


def test_zones_map_hosts_once_and_name_label_values() -> None:
    spec, errors = parse_cluster_endpoint(document(zones={"eu-1a": ["10.0.0.1"], "eu-1b": ["10.0.0.2"]}))
    assert errors == [] and spec is not None and spec.zone_of("10.0.0.2") == "eu-1b"
    _, errors = parse_cluster_endpoint(document(zones={"eu-1a": ["10.0.0.1"], "eu-1b": ["10.0.0.1", "10.0.0.7"],
                                                       "bad zone": ["10.0.0.2"]}))
    assert sorted(e.path for e in errors) == ["spec.zones[bad zone]", "spec.zones[eu-1b][0]", "spec.zones[eu-1b][1]"]
    _, errors = parse_cluster_endpoint(document(zones={"eu-1a": "10.0.0.1"}))
    assert [str(e) for e in errors] == ["spec.zones[eu-1a]: must be a list of hosts"]


def test_drain_command_value() -> None:
    assert new_value(None, ["a"], False) == "a"
    assert new_value("a,b", ["b", "c"], False) == "a,b,c"
    assert new_value("a,b", ["a"], True) == "b"
    assert new_value("a", ["a"], True) is None


def target(addresses: dict[str, Endpoint], grace: float = 0.0) -> Target:
    return Target("default", "db", {"pg/IPv4": PortGroup("IPv4", (SlicePort("pg", 5432),), addresses)},
                  source="ClusterEndpoint", grace=grace)


def endpoints(state: DesiredState) -> dict[str, tuple[bool, bool, bool]]:
    held = state.get(("default", "db"))
    assert held is not None
    return {a: (e.ready, e.serving, e.terminating) for a, e in held.groups["pg/IPv4"].endpoints.items()}


def test_a_drained_endpoint_follows_its_probe_in_serving_only() -> None:
    state = DesiredState()
    state.set_target(target({"10.0.0.1": Endpoint("10.0.0.1", False, True, True)}))
    assert state.set_ready(("default", "db"), "pg/IPv4", "10.0.0.1", False, "ClusterEndpoint")
    assert endpoints(state) == {"10.0.0.1": (False, False, True)}
    assert state.set_ready(("default", "db"), "pg/IPv4", "10.0.0.1", True, "ClusterEndpoint")
    assert endpoints(state) == {"10.0.0.1": (False, True, True)}


def test_a_removed_endpoint_leaves_terminating_until_its_grace_ends() -> None:
    now = [100.0]
    deadlines: list[float] = []
    state = DesiredState(clock=lambda: now[0])
    state.on_deadline = deadlines.append
    over: list[tuple[str, str]] = []
    state.on_grace_over = over.append
    both = {a: Endpoint(a, ready, ready) for a, ready in (("10.0.0.1", True), ("10.0.0.2", False))}
    state.set_target(target(both, grace=30))
    state.take_dirty()
    assert state.set_target(target({"10.0.0.1": both["10.0.0.1"]}, grace=30))
    assert endpoints(state) == {"10.0.0.1": (True, True, False), "10.0.0.2": (False, False, True)}
    assert deadlines == [130.0]
    now[0] = 110.0  # the same desired state again changes nothing, and keeps the first deadline
    assert not state.set_target(target({"10.0.0.1": both["10.0.0.1"]}, grace=30))
    assert state.expire() == 130.0 and "10.0.0.2" in endpoints(state) and over == []
    now[0] = 130.0
    state.take_dirty()
    assert state.expire() is None
    assert endpoints(state) == {"10.0.0.1": (True, True, False)} and state.take_dirty() == {("default", "db")}
    assert over == [("default", "db")]  # told once, when the grace ended: the status recounts then


def test_a_host_listed_again_within_its_grace_is_back_and_no_grace_removes_at_once() -> None:
    state = DesiredState(clock=lambda: 0.0)
    one, two = Endpoint("10.0.0.1", True, True), Endpoint("10.0.0.2", True, True)
    state.set_target(target({"10.0.0.1": one, "10.0.0.2": two}, grace=5))
    state.set_target(target({"10.0.0.1": one}, grace=5))
    state.set_target(target({"10.0.0.1": one, "10.0.0.2": two}, grace=5))
    assert endpoints(state) == {"10.0.0.1": (True, True, False), "10.0.0.2": (True, True, False)}
    assert state.leaving == {}
    state.set_target(target({"10.0.0.1": one}))
    assert endpoints(state) == {"10.0.0.1": (True, True, False)}


def test_a_target_not_held_yet_gives_what_its_slices_published_and_it_no_longer_lists_a_whole_grace() -> None:
    """A restart or handover: the store has no memory of the grace under way, the slices do."""
    now = [500.0]
    deadlines: list[float] = []
    state = DesiredState(clock=lambda: now[0])
    state.on_deadline = deadlines.append
    one = Endpoint("10.0.0.1", True, True)
    published = {("pg/IPv4", "10.0.0.1"): one,
                 ("pg/IPv4", "10.0.0.2"): Endpoint("10.0.0.2", False, True, True),  # was leaving
                 ("pg/IPv4", "10.0.0.3"): Endpoint("10.0.0.3", True, True),  # removed while nobody ran
                 ("web/IPv4", "10.0.0.4"): Endpoint("10.0.0.4", True, True)}  # its port group is gone
    assert state.set_target(target({"10.0.0.1": one}, grace=20), published)
    assert endpoints(state) == {"10.0.0.1": (True, True, False), "10.0.0.2": (False, True, True),
                                "10.0.0.3": (False, True, True)}
    assert deadlines == [520.0]
    # once held, the slices are not asked again: the store's own memory decides
    now[0] = 510.0
    assert not state.set_target(target({"10.0.0.1": one}, grace=20), {("pg/IPv4", "10.0.0.5"): one})
    now[0] = 520.0
    state.expire()
    assert endpoints(state) == {"10.0.0.1": (True, True, False)}


def test_published_endpoints_without_a_grace_leave_at_once() -> None:
    state = DesiredState(clock=lambda: 0.0)
    one = Endpoint("10.0.0.1", True, True)
    state.set_target(target({"10.0.0.1": one}), {("pg/IPv4", "10.0.0.2"): Endpoint("10.0.0.2", True, True)})
    assert endpoints(state) == {"10.0.0.1": (True, True, False)} and state.leaving == {}
