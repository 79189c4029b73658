"""The four PATCH flavours of kube-apiserver: JSON merge, JSON patch, strategic merge, apply.

Strategic merge knows the merge keys of the built-in fields epctl and its manifests touch (see
``MERGE_KEYS``); other lists are replaced, as they are for fields without a patch strategy.
``$setElementOrder`` directives are accepted and ignored (list order is then the server's: kept
elements stay in place, new ones are appended).

Server-side apply is an approximation of structured-merge-diff, documented in the README: field
ownership is tracked per manager at the granularity of leaf fields, maps merge recursively, and
*every list is atomic* (the real server merges associative lists such as Service ports by key).
"""

from __future__ import annotations

import copy
from typing import Any

from epctl.testing.apierrors import StatusError, bad_request

JSON = Any
Path = tuple[str, ...]

# (kind or "*", path without list indices) -> merge key; "" marks a merged list of primitives.
MERGE_KEYS: dict[tuple[str, Path], str] = {
    ("*", ("metadata", "ownerReferences")): "uid",
    ("*", ("metadata", "finalizers")): "",
    ("*", ("status", "conditions")): "type",
    ("Service", ("spec", "ports")): "port",
    ("Deployment", ("spec", "template", "spec", "containers")): "name",
    ("Deployment", ("spec", "template", "spec", "initContainers")): "name",
    ("Deployment", ("spec", "template", "spec", "volumes")): "name",
    ("Deployment", ("spec", "template", "spec", "containers", "env")): "name",
    ("Deployment", ("spec", "template", "spec", "containers", "ports")): "containerPort",
    ("Deployment", ("spec", "template", "spec", "containers", "volumeMounts")): "mountPath",
    ("Deployment", ("spec", "template", "spec", "topologySpreadConstraints")): "topologyKey",
}


def _merge_key(kind: str, path: Path) -> str | None:
    return MERGE_KEYS.get((kind, path), MERGE_KEYS.get(("*", path)))


def json_merge_patch(original: JSON, patch: JSON) -> JSON:
    """RFC 7386: objects merge recursively, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve_parent(doc: JSON, parts: list[str]) -> tuple[JSON, str]:
    current = doc
    for part in parts[:-1]:
        if isinstance(current, list):
            try:
                current = current[int(part)]
            except (ValueError, IndexError):
                raise bad_request(f"JSON patch path segment {part!r} out of range") from None
        elif isinstance(current, dict) and part in current:
            current = current[part]
        else:
            raise bad_request(f"JSON patch path: missing key {part!r}")
    return current, parts[-1]


def _get(doc: JSON, parts: list[str]) -> JSON:
    if not parts:
        return doc
    parent, last = _resolve_parent(doc, parts)
    try:
        return parent[int(last)] if isinstance(parent, list) else parent[last]
    except (ValueError, IndexError, KeyError, TypeError):
        raise bad_request(f"JSON patch: no value at /{'/'.join(parts)}") from None


def _add(doc: JSON, parts: list[str], value: JSON) -> JSON:
    if not parts:
        return value
    parent, last = _resolve_parent(doc, parts)
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if index > len(parent):
            raise bad_request("JSON patch: add index out of range")
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise bad_request("JSON patch: parent is not a container")
    return doc


def _remove(doc: JSON, parts: list[str]) -> JSON:
    parent, last = _resolve_parent(doc, parts)
    try:
        if isinstance(parent, list):
            del parent[int(last)]
        else:
            del parent[last]
    except (ValueError, IndexError, KeyError, TypeError):
        raise bad_request(f"JSON patch: cannot remove /{'/'.join(parts)}: not found") from None
    return doc


def json_patch(original: JSON, operations: JSON) -> JSON:
    """RFC 6902 add/remove/replace/move/copy/test."""
    if not isinstance(operations, list):
        raise bad_request("JSON patch must be a list of operations")
    doc = copy.deepcopy(original)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request(f"invalid JSON patch operation: {op!r}")
        kind, parts = op["op"], _pointer(op["path"])
        if kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc = _remove(doc, parts)
        elif kind == "replace":
            _get(doc, parts)
            doc = _add(_remove(doc, parts), parts, copy.deepcopy(op.get("value"))) if parts else op.get("value")
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from", ""))
            value = copy.deepcopy(_get(doc, source))
            if kind == "move":
                doc = _remove(doc, source)
            doc = _add(doc, parts, value)
        elif kind == "test":
            if _get(doc, parts) != op.get("value"):
                raise StatusError(422, "Invalid", f"JSON patch test failed at {op['path']}")
        else:
            raise bad_request(f"unknown JSON patch op {kind!r}")
    return doc


_DELETE = object()


def strategic_merge_patch(original: JSON, patch: JSON, kind: str) -> JSON:
    """Apply a strategic merge patch for a built-in ``kind``."""
    result = _smp(original, patch, kind, ())
    return {} if result is _DELETE else result


def _smp(original: JSON, patch: JSON, kind: str, path: Path) -> JSON:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return _DELETE
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = copy.deepcopy(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            target = key.split("/", 1)[1]
            if isinstance(result.get(target), list):
                result[target] = [x for x in result[target] if x not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        sub = path + (key,)
        if isinstance(value, dict):
            merged = _smp(result.get(key), value, kind, sub)
            if merged is _DELETE:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _merge_list(result.get(key), value, kind, sub)
        else:
            result[key] = value
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(original: JSON, patch: list[JSON], kind: str, path: Path) -> list[JSON]:
    merge_key = _merge_key(kind, path)
    if merge_key is None or not isinstance(original, list):
        return [x for x in (copy.deepcopy(v) for v in patch)
                if not (isinstance(x, dict) and x.get("$patch") == "delete")]
    if merge_key == "":
        merged = list(original)
        merged.extend(v for v in patch if v not in merged)
        return merged
    merged = copy.deepcopy(original)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise bad_request(f"strategic merge patch: list item at {'.'.join(path)} lacks merge key "
                              f"{merge_key!r}")
        index = next((i for i, x in enumerate(merged)
                      if isinstance(x, dict) and x.get(merge_key) == item[merge_key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append({k: v for k, v in item.items() if not k.startswith("$")})
        else:
            merged[index] = _smp(merged[index], item, kind, path)
    return merged


# --- server-side apply (approximation) -------------------------------------------------------

IGNORED_ROOTS = {("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace"),
                 ("metadata", "resourceVersion"), ("metadata", "managedFields"),
                 ("metadata", "uid"), ("metadata", "creationTimestamp"), ("metadata", "generation")}


def leaf_paths(obj: JSON, prefix: Path = ()) -> dict[Path, JSON]:
    """Every leaf (scalar, list, or empty map) of ``obj`` with its value; lists are atomic."""
    out: dict[Path, JSON] = {}
    if isinstance(obj, dict) and obj:
        for key, value in obj.items():
            sub = prefix + (key,)
            if sub in IGNORED_ROOTS or (len(sub) == 1 and key == "status" and prefix == ()):
                continue
            out.update(leaf_paths(value, sub))
    elif prefix:
        out[prefix] = obj
    return out


def get_path(obj: JSON, path: Path) -> JSON:
    current = obj
    for part in path:
        if not isinstance(current, dict) or part not in current:
            return _DELETE
        current = current[part]
    return current


def set_path(obj: dict[str, JSON], path: Path, value: JSON) -> None:
    current = obj
    for part in path[:-1]:
        nxt = current.get(part)
        if not isinstance(nxt, dict):
            nxt = current[part] = {}
        current = nxt
    current[path[-1]] = copy.deepcopy(value)


def delete_path(obj: dict[str, JSON], path: Path) -> None:
    """Remove a leaf and then any maps left empty by its removal."""
    chain = [obj]
    current: JSON = obj
    for part in path[:-1]:
        if not isinstance(current, dict) or part not in current:
            return
        current = current[part]
        chain.append(current)
    if isinstance(current, dict):
        current.pop(path[-1], None)
    for depth in range(len(path) - 1, 0, -1):
        if chain[depth] == {}:
            chain[depth - 1].pop(path[depth - 1], None)
        else:
            break


def fields_to_v1(paths: set[Path]) -> dict[str, JSON]:
    """Render a set of owned leaf paths in the ``FieldsV1`` shape (``f:`` prefixed keys)."""
    root: dict[str, JSON] = {}
    for path in sorted(paths):
        node = root
        for part in path:
            node = node.setdefault(f"f:{part}", {})
    return root


def fields_from_v1(fields: JSON, prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    if not isinstance(fields, dict):
        return out
    children = {k: v for k, v in fields.items() if k.startswith("f:")}
    if not children and prefix:
        out.add(prefix)
    for key, value in children.items():
        out |= fields_from_v1(value, prefix + (key[2:],))
    return out


def _render(path: Path) -> str:
    return "." + ".".join(path)


def server_side_apply(live: dict[str, JSON], config: dict[str, JSON], manager: str, force: bool,
                      managers: dict[tuple[str, str], set[Path]]) -> dict[str, JSON]:
    """Merge ``config`` into ``live`` as field manager ``manager``.

    ``managers`` maps (manager, operation) to owned leaf paths and is updated in place. Raises a
    409 Conflict naming each conflicting field unless ``force``.
    """
    wanted = leaf_paths(config)
    conflicts = []
    for (other, op), owned in managers.items():
        if other == manager and op == "Apply":
            continue
        for path in owned & wanted.keys():
            if get_path(live, path) != wanted[path]:
                if force:
                    owned.discard(path)
                else:
                    conflicts.append(f'conflict with "{other}"'
                                     f'{" using " + op if op != "Apply" else ""}: {_render(path)}')
    if conflicts:
        raise StatusError(409, "Conflict",
                          f"Apply failed with {len(conflicts)} conflict{'s' if len(conflicts) > 1 else ''}: "
                          + "\n".join(conflicts),
                          {"causes": [{"reason": "FieldManagerConflict", "message": c} for c in conflicts]})
    result = copy.deepcopy(live)
    previous = managers.get((manager, "Apply"), set())
    others = set().union(*(p for (m, op), p in managers.items() if (m, op) != (manager, "Apply")))
    for path in previous - wanted.keys():
        if path not in others:
            delete_path(result, path)
    for path, value in wanted.items():
        set_path(result, path, value)
    for key in ("apiVersion", "kind"):
        if key in config:
            result[key] = config[key]
    managers[(manager, "Apply")] = set(wanted)
    for (other, op), owned in managers.items():
        if (other, op) != (manager, "Apply"):
            owned -= set(wanted)
    return result


def record_update(old: JSON, new: JSON, manager: str, managers: dict[tuple[str, str], set[Path]]) -> None:
    """Give ``manager`` (operation Update) ownership of every leaf a non-apply write changed."""
    before, after = leaf_paths(old or {}), leaf_paths(new)
    changed = {p for p, v in after.items() if before.get(p, _DELETE) != v}
    removed = set(before) - set(after)
    for owned in managers.values():
        owned -= changed | removed
    if changed:
        managers.setdefault((manager, "Update"), set()).update(changed)
    for key in [k for k, v in managers.items() if not v]:
        del managers[key]
