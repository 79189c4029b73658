from __future__ import annotations

import pytest

from epctl.testing.apierrors import StatusError
from epctl.testing.selectors import make_filter, parse_label_selector

FIELDS = frozenset({"metadata.name", "metadata.namespace"})


def obj(name: str = "x", **labels: str) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "ns", "labels": labels}}


@pytest.mark.parametrize("selector,labels,expected", [
    ("a=b", {"a": "b"}, True),
    ("a==b", {"a": "c"}, False),
    ("a!=b", {}, True),  # != matches objects without the key, like Kubernetes
    ("a in (b, c)", {"a": "c"}, True),
    ("a notin (b,c)", {"a": "d"}, True),
    ("a notin (b,c)", {}, True),
    ("a", {"a": ""}, True),
    ("!a", {"a": "x"}, False),
    ("a,b=c", {"a": "1", "b": "c"}, True),
    ("kubernetes.io/service-name=db", {"kubernetes.io/service-name": "db"}, True),
    ("", {}, True),
])
def test_label_selector_semantics(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert make_filter(selector, None, FIELDS)(obj(**labels)) is expected


def test_field_selectors_and_errors() -> None:
    assert make_filter(None, "metadata.name=x,metadata.namespace==ns", FIELDS)(obj("x"))
    assert not make_filter(None, "metadata.name!=x", FIELDS)(obj("x"))
    with pytest.raises(StatusError) as err:
        make_filter(None, "spec.x=1", FIELDS)
    assert err.value.code == 400
    with pytest.raises(StatusError):
        parse_label_selector("a in (b")
