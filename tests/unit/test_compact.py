"""The informer caches' compact form: the same JSON, its strings shared between objects."""

from __future__ import annotations

import copy
import json

from epctl.kube.informer import compact


def _decoded(text: str) -> dict[str, object]:
    return json.loads(text)  # a fresh decode: its own string objects, as each watch event has


SLICE = json.dumps({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": "db-abc-0", "namespace": "prod", "uid": "u-1", "resourceVersion": "17",
                                 "labels": {"kubernetes.io/service-name": "db"},
                                 "annotations": {"note": "x" * 200}},
                    "addressType": "IPv4", "ports": [{"name": "tcp", "port": 5432, "protocol": "TCP"}],
                    "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True, "serving": True,
                                                                              "terminating": False}},
                                  {"addresses": ["10.0.0.2"], "conditions": {"ready": False}}]})


def test_compact_keeps_every_field_and_value() -> None:
    obj = _decoded(SLICE)
    assert compact(copy.deepcopy(obj)) == obj
    assert json.dumps(compact(_decoded(SLICE)), sort_keys=True) == json.dumps(obj, sort_keys=True)


def test_two_decodes_share_their_keys_and_short_values_after_compact() -> None:
    a, b = compact(_decoded(SLICE)), compact(_decoded(SLICE))
    assert a["metadata"]["namespace"] is b["metadata"]["namespace"]
    key_a = next(k for k in a["metadata"]["labels"])
    key_b = next(k for k in b["metadata"]["labels"])
    assert key_a is key_b
    assert a["endpoints"][0]["addresses"][0] is b["endpoints"][0]["addresses"][0]
    # unique per object (uid, resourceVersion) and long values (annotations) are left alone, not interned
    assert a["metadata"]["annotations"]["note"] is not b["metadata"]["annotations"]["note"]
    # still plain, mutable JSON: a read-modify-write may copy and change it as before
    assert type(a) is dict and type(a["endpoints"]) is list


def test_boolean_conditions_are_one_shared_object() -> None:
    a, b = compact(_decoded(SLICE)), compact(_decoded(SLICE))
    ready = a["endpoints"][0]["conditions"]
    assert ready == {"ready": True, "serving": True, "terminating": False}
    assert ready is b["endpoints"][0]["conditions"]
    assert a["endpoints"][1]["conditions"] == {"ready": False}
    assert a["endpoints"][1]["conditions"] is not ready


def test_a_shared_mapping_refuses_changes_in_place_and_copies_are_plain_dicts() -> None:
    """Changing a shared conditions mapping in place would change it on every cached slice that has
    it: it raises instead, and every way of copying it gives a plain dict to change."""
    import pytest

    a, b = compact(_decoded(SLICE)), compact(_decoded(SLICE))
    shared = a["endpoints"][0]["conditions"]
    for change in (lambda: shared.__setitem__("ready", False), lambda: shared.update(ready=False),
                   lambda: shared.pop("ready"), lambda: shared.setdefault("x", True), shared.clear,
                   lambda: shared.__delitem__("ready")):
        with pytest.raises(TypeError):
            change()
    assert b["endpoints"][0]["conditions"] == {"ready": True, "serving": True, "terminating": False}
    deep = copy.deepcopy(a)
    deep["endpoints"][0]["conditions"]["ready"] = False  # a read-modify-write's copy: its own dict
    for plain in (dict(shared), {**shared}, copy.copy(shared), deep["endpoints"][0]["conditions"]):
        assert type(plain) is dict
    assert shared["ready"] is True and json.loads(json.dumps(a)) == json.loads(SLICE)
