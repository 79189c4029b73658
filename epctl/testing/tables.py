"""Server-side printing: ``meta.k8s.io/v1`` Table responses for ``kubectl get``.

kubectl asks for tables (``Accept: ...;as=Table;g=meta.k8s.io;v=v1``) and prints whatever columns
the server sends, so a CRD's ``additionalPrinterColumns`` are what users see in ``kubectl get cep``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from epctl.testing.builtins import ResourceType

Obj = dict[str, Any]


def human_age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    created = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    seconds = max(0, int((datetime.now(UTC) - created).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * 2 or (unit == "m" and seconds >= 120):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


_FILTER = re.compile(r"""^\?\(@\.([A-Za-z0-9_]+)\s*==\s*["']([^"']*)["']\)$""")


def json_path(obj: Any, path: str) -> Any:
    """The subset of JSONPath printer columns use: ``.a.b``, ``.a[0].b``, ``.a['x.y']``, ``.a[?(@.k=="v")]``."""
    current = obj
    token = ""
    parts: list[str | int] = []
    i = 0
    path = path.strip().lstrip("{").rstrip("}")
    while i < len(path):
        ch = path[i]
        if ch == ".":
            if token:
                parts.append(token)
            token = ""
        elif ch == "[":
            if token:
                parts.append(token)
            token = ""
            end = path.index("]", i)
            inner = path[i + 1:end].strip("'\"")
            parts.append(int(inner) if inner.isdigit() else inner)
            i = end
        else:
            token += ch
        i += 1
    if token:
        parts.append(token)
    for part in parts:
        match = _FILTER.match(part) if isinstance(part, str) else None
        if match:
            if not isinstance(current, list):
                return None
            current = next((x for x in current if isinstance(x, dict) and str(x.get(match.group(1))) == match.group(2)),
                           None)
            continue
        if isinstance(part, int):
            if not isinstance(current, list) or part >= len(current):
                return None
            current = current[part]
        elif isinstance(current, dict):
            current = current.get(part)
        else:
            return None
    return current


def _columns(rt: ResourceType) -> list[tuple[Obj, Any]]:
    """(column definition, cell function) for a resource."""
    name = ({"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0},
            lambda o: o["metadata"]["name"])
    age = ({"name": "Age", "type": "date", "format": "", "description": "Age", "priority": 0},
           lambda o: human_age(o["metadata"].get("creationTimestamp")))
    if rt.printer_columns:
        cols = [name]
        for col in rt.printer_columns:
            definition = {"name": col["name"], "type": col.get("type", "string"), "format": col.get("format", ""),
                          "description": col.get("description", ""), "priority": col.get("priority", 0)}
            if col.get("jsonPath") == ".metadata.creationTimestamp":
                cols.append((definition, age[1]))
            else:
                cols.append((definition, _path_cell(col["jsonPath"])))
        return cols  # exactly the declared columns: kube-apiserver adds Age only to a CRD that declares none
    extra = BUILTIN_COLUMNS.get(rt.kind, [])
    return [name] + [({"name": n, "type": "string", "format": "", "description": n, "priority": 0}, f)
                     for n, f in extra] + [age]


def _path_cell(path: str) -> Callable[[Obj], Any]:
    return lambda obj: _cell(json_path(obj, path))


def _cell(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (list, dict)):
        return str(value)
    return value


def _service_ports(obj: Obj) -> str:
    ports = obj.get("spec", {}).get("ports") or []
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


def _slice_ports(obj: Obj) -> str:
    ports = obj.get("ports") or []
    return ",".join(str(p.get("port")) for p in ports if p.get("port") is not None) or "<unset>"


def _slice_endpoints(obj: Obj) -> str:
    addresses = [a for e in obj.get("endpoints") or [] for a in e.get("addresses", [])]
    shown = ",".join(addresses[:3])
    return (shown + (f" + {len(addresses) - 3} more..." if len(addresses) > 3 else "")) or "<unset>"


BUILTIN_COLUMNS: dict[str, list[tuple[str, Any]]] = {
    "Service": [("Type", lambda o: o.get("spec", {}).get("type", "")),
                ("Cluster-IP", lambda o: o.get("spec", {}).get("clusterIP", "")),
                ("Ports", _service_ports)],
    "EndpointSlice": [("AddressType", lambda o: o.get("addressType", "")), ("Ports", _slice_ports),
                      ("Endpoints", _slice_endpoints)],
    "Namespace": [("Status", lambda o: o.get("status", {}).get("phase", ""))],
    "Lease": [("Holder", lambda o: o.get("spec", {}).get("holderIdentity", ""))],
    "Secret": [("Type", lambda o: o.get("type", "")), ("Data", lambda o: len(o.get("data") or {}))],
    "Event": [("Type", lambda o: o.get("type", "")), ("Reason", lambda o: o.get("reason", "")),
              ("Message", lambda o: o.get("message") or o.get("note", ""))],
}


def render_table(rt: ResourceType, objects: list[Obj], list_meta: Obj, include_object: str) -> Obj:
    columns = _columns(rt)
    rows = []
    for obj in objects:
        if include_object == "None":
            row_obj: Obj | None = None
        elif include_object == "Object":
            row_obj = obj
        else:
            row_obj = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}
        row: Obj = {"cells": [fn(obj) for _, fn in columns]}
        if row_obj is not None:
            row["object"] = row_obj
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta,
            "columnDefinitions": [c for c, _ in columns], "rows": rows}
