from __future__ import annotations

import pytest

from epctl.testing.apierrors import StatusError
from epctl.testing.patching import (
    fields_from_v1,
    fields_to_v1,
    json_merge_patch,
    json_patch,
    record_update,
    server_side_apply,
    strategic_merge_patch,
)


def test_json_merge_patch_rfc7386() -> None:
    assert json_merge_patch({"a": "b", "c": {"d": "e", "f": "g"}}, {"a": "z", "c": {"f": None}}) == {
        "a": "z", "c": {"d": "e"}}
    assert json_merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}
    assert json_merge_patch({"a": 1}, {"b": {"c": None}}) == {"a": 1, "b": {}}


def test_json_patch_operations() -> None:
    doc = {"a": {"b": [1, 2]}, "c/d": 1, "e~f": 2}
    out = json_patch(doc, [
        {"op": "add", "path": "/a/b/-", "value": 3},
        {"op": "add", "path": "/a/b/0", "value": 0},
        {"op": "remove", "path": "/c~1d"},
        {"op": "replace", "path": "/e~0f", "value": 3},
        {"op": "copy", "from": "/a/b", "path": "/copy"},
        {"op": "move", "from": "/copy", "path": "/moved"},
        {"op": "test", "path": "/moved/3", "value": 3},
    ])
    assert out == {"a": {"b": [0, 1, 2, 3]}, "e~f": 3, "moved": [0, 1, 2, 3]}
    assert doc == {"a": {"b": [1, 2]}, "c/d": 1, "e~f": 2}  # input untouched
    with pytest.raises(StatusError) as err:
        json_patch(doc, [{"op": "test", "path": "/e~0f", "value": 9}])
    assert err.value.code == 422
    with pytest.raises(StatusError):
        json_patch(doc, [{"op": "remove", "path": "/nope"}])


def test_strategic_merge_by_merge_key_directives_and_finalizers() -> None:
    svc = {"metadata": {"finalizers": ["a"]}, "spec": {"ports": [{"port": 80, "name": "x"}, {"port": 81}]}}
    out = strategic_merge_patch(svc, {"metadata": {"finalizers": ["b", "a"]},
                                      "spec": {"ports": [{"port": 81, "name": "y"}, {"port": 80, "$patch": "delete"},
                                                         {"port": 82}],
                                               "$setElementOrder/ports": [{"port": 81}, {"port": 82}]}}, "Service")
    assert out == {"metadata": {"finalizers": ["a", "b"]}, "spec": {"ports": [{"port": 81, "name": "y"}, {"port": 82}]}}
    eps = {"endpoints": [{"addresses": ["1.1.1.1"]}]}
    assert strategic_merge_patch(eps, {"endpoints": [{"addresses": ["2.2.2.2"]}]}, "EndpointSlice") == {
        "endpoints": [{"addresses": ["2.2.2.2"]}]}  # no merge key: list replaced
    replaced = strategic_merge_patch({"spec": {"a": 1, "b": 2}}, {"spec": {"$patch": "replace", "c": 3}}, "X")
    assert replaced == {"spec": {"c": 3}}
    deleted = strategic_merge_patch({"metadata": {"finalizers": ["a", "b"]}},
                                    {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}, "X")
    assert deleted == {"metadata": {"finalizers": ["b"]}}


def test_server_side_apply_ownership_conflicts_force_and_removal() -> None:
    managers: dict[tuple[str, str], set[tuple[str, ...]]] = {}
    live = server_side_apply({}, {"spec": {"a": 1, "b": 2}}, "alice", False, managers)
    assert live == {"spec": {"a": 1, "b": 2}}
    live = server_side_apply(live, {"spec": {"c": 3}}, "bob", False, managers)
    with pytest.raises(StatusError) as err:
        server_side_apply(live, {"spec": {"a": 9}}, "bob", False, managers)
    assert err.value.code == 409 and 'conflict with "alice": .spec.a' in err.value.message
    same = server_side_apply(live, {"spec": {"a": 1, "c": 3}}, "bob", False, managers)  # same value: shared
    assert same["spec"]["a"] == 1
    live = server_side_apply(live, {"spec": {"a": 9, "c": 3}}, "bob", True, managers)
    assert live["spec"]["a"] == 9 and ("spec", "a") not in managers[("alice", "Apply")]
    live = server_side_apply(live, {"spec": {"a": 9}}, "bob", False, managers)  # bob drops c
    assert live == {"spec": {"a": 9, "b": 2}}
    record_update(live, {"spec": {"a": 9, "b": 5}}, "editor", managers)
    assert managers[("editor", "Update")] == {("spec", "b")}
    assert fields_from_v1(fields_to_v1({("spec", "a"), ("metadata", "labels", "x")})) == {
        ("spec", "a"), ("metadata", "labels", "x")}


def test_status_merge_patch_removes_the_keys_we_no_longer_write() -> None:
    from epctl.kube.status import merge_patch
    from epctl.testing.patching import json_merge_patch as apply_merge_patch
    current = {"phase": "Healthy", "discovery": {"servers": 2, "poller": "p"}, "ports": [{"name": "a"}],
               "conditions": [{"type": "Ready"}]}
    desired = {"phase": "Degraded", "ports": [{"name": "a", "unhealthy": []}], "conditions": [{"type": "Ready"}]}
    patch = merge_patch(current, desired)
    assert patch == {"phase": "Degraded", "discovery": None, "ports": [{"name": "a", "unhealthy": []}]}
    assert apply_merge_patch(current, patch) == desired
