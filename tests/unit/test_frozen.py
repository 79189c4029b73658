"""FrozenCache (epctl.kube.frozen): what goes in comes out, whatever it holds; reads are independent."""

from __future__ import annotations

from typing import Any

import pytest

from epctl.kube.frozen import RECENT, FrozenCache


@pytest.mark.parametrize("first", [{}, {"metadata": {"name": "typical"}, "data": {"k": "v"}},
                                   {"blob": "x" * 100_000}], ids=["empty-first", "typical-first", "huge-first"])
def test_every_object_round_trips_whatever_came_first(first: dict[str, Any]) -> None:
    cache = FrozenCache()
    cache["first"] = first  # becomes the preset dictionary
    objects: dict[str, dict[str, Any]] = {
        "unicode": {"a": "ü€😀", "lone": "x\ud800y", "ctrl": "\x00\n\t\"\\"},
        "numbers": {"int": 2**70, "neg": -1, "float": 0.1, "flags": [True, False, None]},
        "big": {"items": [{"addresses": [f"10.0.{i // 256}.{i % 256}"], "n": i} for i in range(5000)]},
        "nested": {"a": {"b": {"c": [[], {}, [{}]]}}},
    }
    for key, obj in objects.items():
        cache[key] = obj
    assert cache["first"] == first
    for key, obj in objects.items():
        assert cache[key] == obj, key
    assert len(cache) == 1 + len(objects) and "big" in cache and "nope" not in cache


def test_a_read_is_a_new_object_and_a_peek_is_shared_until_the_record_changes() -> None:
    cache = FrozenCache()
    cache["a"] = {"spec": {"v": 1}}
    read = cache["a"]
    read["spec"]["v"] = 2
    assert cache["a"] == {"spec": {"v": 1}} and cache["a"] is not cache["a"]
    peeked = cache.peek("a")
    assert peeked is cache.peek("a") and peeked == {"spec": {"v": 1}}
    old = cache.raw("a")
    cache["a"] = {"spec": {"v": 3}}
    assert cache.peek("a") == {"spec": {"v": 3}} and cache.peek_raw(old) == {"spec": {"v": 1}}
    assert cache.peek("missing") is None and cache.get("missing") is None


def test_peeked_objects_are_bounded() -> None:
    cache = FrozenCache()
    for i in range(RECENT * 3):
        cache[str(i)] = {"i": i}
        assert cache.peek(str(i)) == {"i": i}
    assert len(cache._recent) == RECENT  # what peek keeps does not grow with the cache
    assert cache.pop("0") == {"i": 0} and "0" not in cache and len(cache) == RECENT * 3 - 1
