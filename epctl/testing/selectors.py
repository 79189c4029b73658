"""Label and field selectors with kube-apiserver's grammar and matching rules.

Label selectors support ``=``, ``==``, ``!=``, ``in``, ``notin``, ``key`` (exists) and ``!key``.
Field selectors support ``=``, ``==`` and ``!=`` on the fields a resource declares selectable;
anything else is a 400, as on a real server.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from epctl.testing.apierrors import bad_request

_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(notin|in)\s*\(([^)]*)\)\s*)?$")
_CMP_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_.-]*)\s*$")


@dataclass(frozen=True)
class Requirement:
    """One clause of a selector. ``op`` is one of in, notin, exists, !exists (= and != map to in/notin)."""

    key: str
    op: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op == "in":
            return present and labels[self.key] in self.values
        # notin / != also match objects without the key, as in Kubernetes.
        return not present or labels[self.key] not in self.values


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside a parenthesised value set."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in (s.strip() for s in parts) if p]


def parse_label_selector(text: str | None) -> list[Requirement]:
    if not text:
        return []
    reqs: list[Requirement] = []
    for clause in _split_top_level(text):
        cmp_match = _CMP_RE.match(clause)
        if cmp_match:
            key, op, value = cmp_match.groups()
            reqs.append(Requirement(key, "notin" if op == "!=" else "in", frozenset([value])))
            continue
        set_match = _SET_RE.match(clause)
        if not set_match:
            raise bad_request(f"unable to parse requirement: {clause!r}")
        negate, key, set_op, values = set_match.groups()
        if set_op:
            if negate:
                raise bad_request(f"unable to parse requirement: {clause!r}")
            vals = frozenset(v.strip() for v in values.split(",") if v.strip())
            reqs.append(Requirement(key, set_op, vals))
        else:
            reqs.append(Requirement(key, "!exists" if negate else "exists"))
    return reqs


def labels_match(reqs: list[Requirement], obj: dict[str, Any]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(r.matches(labels) for r in reqs)


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    equal: bool
    value: str


def parse_field_selector(text: str | None, allowed: frozenset[str]) -> list[FieldRequirement]:
    if not text:
        return []
    reqs = []
    for clause in _split_top_level(text):
        for op in ("==", "!=", "="):
            if op in clause:
                path, value = clause.split(op, 1)
                path = path.strip()
                if path not in allowed:
                    raise bad_request(f'"{path}" is not a known field selector: only '
                                      f'"{", ".join(sorted(allowed))}"')
                reqs.append(FieldRequirement(path, op != "!=", value.strip()))
                break
        else:
            raise bad_request(f"invalid selector: '{clause}'; can't understand '{clause}'")
    return reqs


def field_value(obj: dict[str, Any], path: str) -> str:
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, dict):
            return ""
        current = current.get(part)
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)


def fields_match(reqs: list[FieldRequirement], obj: dict[str, Any]) -> bool:
    return all((field_value(obj, r.path) == r.value) == r.equal for r in reqs)


def make_filter(label_selector: str | None, field_selector: str | None,
                allowed_fields: frozenset[str]) -> Callable[[dict[str, Any]], bool]:
    """Parse both selectors once; return a predicate over objects."""
    lreqs = parse_label_selector(label_selector)
    freqs = parse_field_selector(field_selector, allowed_fields)
    if not lreqs and not freqs:
        return lambda _obj: True
    return lambda obj: labels_match(lreqs, obj) and fields_match(freqs, obj)
