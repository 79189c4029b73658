"""A sort key for decoded JSON values that ignores the order of object keys. Pure.

Comparing Kubernetes objects order-insensitively (the subsets of an Endpoints object, the ports of a
slice) needs the lists in one canonical order. Sorting by ``json.dumps(value, sort_keys=True)`` did
that at the cost of an encoder run per item, on every routing write: during a flip of 1,000
ClusterEndpoints it was about a twentieth of the controller's CPU. This key builds tuples instead.
"""

from __future__ import annotations

from typing import Any

# one rank per JSON type, so that values of different types compare (and never raise TypeError)
_NULL, _BOOL, _NUMBER, _STRING, _ARRAY, _OBJECT = range(6)


def json_key(value: Any) -> tuple[Any, ...]:
    """A total, order-insensitive (for object keys) sort key of a JSON value: equal for equal values."""
    if isinstance(value, str):
        return (_STRING, value)
    if isinstance(value, bool):  # before int: bool is an int
        return (_BOOL, value)
    if isinstance(value, (int, float)):
        return (_NUMBER, value)
    if value is None:
        return (_NULL,)
    if isinstance(value, dict):
        return (_OBJECT, tuple(sorted((key, json_key(item)) for key, item in value.items())))
    if isinstance(value, (list, tuple)):
        return (_ARRAY, tuple(json_key(item) for item in value))
    raise TypeError(f"not a JSON value: {type(value).__name__}")
