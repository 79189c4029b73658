"""json_key: the sort key that replaced ``json.dumps(..., sort_keys=True)`` in the Endpoints and slice
comparisons. It must order any mix of JSON values without raising, and be equal exactly when the
values are (whatever their objects' key order), or a comparison would call equal objects different
(a write for nothing) or different ones equal (a write missed)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from epctl.endpoints import _normal_subsets, _same_subsets
from epctl.jsonkey import json_key


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["null", "bool", "int", "float", "str"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.randint(-3, 3)
    if kind == "float":
        return rng.choice((0.5, -1.5, 2.0))
    if kind == "str":
        return rng.choice(("", "a", "b", "10.0.0.1", "1"))
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice("abcd"): random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def shuffled_keys(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: shuffled_keys(v, rng) for k, v in items}
    if isinstance(value, list):
        return [shuffled_keys(v, rng) for v in value]
    return value


def test_equal_keys_exactly_for_equal_values_in_any_key_order() -> None:
    rng = random.Random(7)
    values = [random_json(rng) for _ in range(400)]
    for a in values:
        assert json_key(shuffled_keys(a, rng)) == json_key(a)
        for b in values[:40]:
            same = json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
            assert (json_key(a) == json_key(b)) == same or (a == b and not same)  # 2.0 == 2: equal either way


def test_any_mix_of_json_values_sorts_without_raising() -> None:
    rng = random.Random(11)
    values = [random_json(rng) for _ in range(300)]
    ordered = sorted(values, key=json_key)
    assert [json_key(v) for v in ordered] == sorted(json_key(v) for v in values)
    with pytest.raises(TypeError):
        json_key({"a": object()})


def test_normal_subsets_ignore_order_and_see_a_changed_condition() -> None:
    subsets = [{"addresses": [{"ip": "10.0.0.2", "targetRef": {"kind": "Pod", "name": "b"}}, {"ip": "10.0.0.1"}],
                "notReadyAddresses": [{"ip": "10.0.0.3"}],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "", "port": 81}]},
               {"addresses": [{"ip": "10.0.0.9"}], "ports": [{"port": 5432, "name": "db"}]}]
    rng = random.Random(3)
    permuted = shuffled_keys(list(reversed(subsets)), rng)
    for subset in permuted:
        for field in ("addresses", "ports"):
            subset[field].reverse()
    assert _normal_subsets(permuted) == _normal_subsets(subsets)
    flipped = json.loads(json.dumps(subsets))
    flipped[0]["notReadyAddresses"].append(flipped[0]["addresses"].pop())
    assert _normal_subsets(flipped) != _normal_subsets(subsets)


def test_the_readiness_shortcut_never_changes_the_comparison() -> None:
    """``_same_subsets`` compares the (field, ip) pairs first and normalises only when they agree: it
    must decide exactly as the normalised comparison alone."""
    rng = random.Random(5)

    def subsets() -> list[dict[str, Any]]:
        def addresses() -> list[dict[str, Any]]:
            return [{"ip": rng.choice(("10.0.0.1", "10.0.0.2", "10.0.0.3")),
                     **({"hostname": rng.choice(("a", "b"))} if rng.random() < 0.3 else {})}
                    for _ in range(rng.randint(0, 2))]
        return [{"addresses": addresses(), "notReadyAddresses": addresses(),
                 "ports": [{"name": rng.choice(("", "http")), "port": rng.choice((80, 81))}]}
                for _ in range(rng.randint(0, 2))]

    decisions = set()
    for _ in range(3000):
        a = subsets()
        b = shuffled_keys(a, rng) if rng.random() < 0.5 else subsets()
        same = _same_subsets(a, b)
        assert same == (_normal_subsets(a) == _normal_subsets(b))
        decisions.add(same)
    assert decisions == {True, False}
