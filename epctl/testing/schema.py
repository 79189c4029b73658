"""Structural-schema handling for custom resources: defaulting, pruning and validation.

Follows what apiextensions-apiserver does with a CRD's ``openAPIV3Schema``, in the same order:
drop nulls of non-nullable fields, prune unknown fields (reporting them so ``fieldValidation``
Strict/Warn can act), apply defaults, validate. Messages copy the real server's wording, so a test
reading ``kubectl``'s error sees what it would see against a cluster. Not covered: CEL rules
(``x-kubernetes-validations``), ``oneOf``/``anyOf``/``not``, formats other than int-or-string.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from epctl.testing.apierrors import FieldCause

Schema = dict[str, Any]

_ROOT_KEYS = {"apiVersion", "kind", "metadata"}


def _fmt(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else json.dumps(value, default=str)


def _type_ok(value: Any, expected: str) -> bool:
    if expected == "object":
        return isinstance(value, dict)
    if expected == "array":
        return isinstance(value, list)
    if expected == "string":
        return isinstance(value, str)
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def prune_and_default(obj: Any, schema: Schema, path: str = "", root: bool = True) -> tuple[Any, list[str]]:
    """Return (pruned and defaulted copy of ``obj``, paths of unknown fields removed)."""
    unknown: list[str] = []
    result = _prune_default(copy.deepcopy(obj), schema, path, unknown, root)
    return result, unknown


def _prune_default(value: Any, schema: Schema, path: str, unknown: list[str], root: bool) -> Any:
    if isinstance(value, dict) and (schema.get("type") == "object" or "properties" in schema):
        props: dict[str, Schema] = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields", False)
        for key in list(value):
            child = value[key]
            if root and key in _ROOT_KEYS:
                continue
            sub = props.get(key) if key in props else (additional if isinstance(additional, dict) else None)
            if sub is None:
                if not preserve and additional is not True:
                    unknown.append(_join(path, key))
                    del value[key]
                continue
            if child is None and not sub.get("nullable", False):
                del value[key]
                continue
            value[key] = _prune_default(child, sub, _join(path, key), unknown, False)
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = _prune_default(copy.deepcopy(sub["default"]), sub, _join(path, key),
                                            unknown, False)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = schema["items"]
        return [_prune_default(v, items, f"{path}[{i}]", unknown, False) for i, v in enumerate(value)]
    return value


def validate(value: Any, schema: Schema, path: str = "", root: bool = True) -> list[FieldCause]:
    """Validate a pruned, defaulted object; return every violation (not just the first)."""
    causes: list[FieldCause] = []
    _validate(value, schema, path, causes, root)
    return causes


def _validate(value: Any, schema: Schema, path: str, causes: list[FieldCause], root: bool) -> None:
    if value is None:
        if not schema.get("nullable", False) and not root:
            causes.append(FieldCause(path, "Invalid value: \"null\": " + f"{path} in body must be of type "
                                     f"{schema.get('type', 'object')}: \"null\"", "FieldValueTypeInvalid"))
        return
    expected = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or _type_ok(value, "integer")):
            causes.append(FieldCause(path, f"Invalid value: {_fmt(value)}: {path} in body must be of "
                                     f"type integer,string: {_fmt(type(value).__name__)}",
                                     "FieldValueTypeInvalid"))
            return
    elif expected and not _type_ok(value, expected):
        actual = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
                  float: "number"}.get(type(value), type(value).__name__)
        causes.append(FieldCause(path, f"Invalid value: {_fmt(actual)}: {path} in body must be of type "
                                 f"{expected}: {_fmt(actual)}", "FieldValueTypeInvalid"))
        return
    for sub in schema.get("allOf", []):
        _validate(value, sub, path, causes, root)
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_fmt(v) for v in schema["enum"])
        causes.append(FieldCause(path, f"Unsupported value: {_fmt(value)}: supported values: {supported}",
                                 "FieldValueNotSupported"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and (value < schema["minimum"] or
                                    (schema.get("exclusiveMinimum") and value == schema["minimum"])):
            causes.append(FieldCause(path, f"Invalid value: {value}: {path} in body should be greater than "
                                     f"or equal to {schema['minimum']}"))
        if "maximum" in schema and (value > schema["maximum"] or
                                    (schema.get("exclusiveMaximum") and value == schema["maximum"])):
            causes.append(FieldCause(path, f"Invalid value: {value}: {path} in body should be less than "
                                     f"or equal to {schema['maximum']}"))
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            causes.append(FieldCause(path, f"Invalid value: {_fmt(value)}: {path} in body should match "
                                     f"'{schema['pattern']}'"))
        if "minLength" in schema and len(value) < schema["minLength"]:
            causes.append(FieldCause(path, f"Invalid value: {_fmt(value)}: {path} in body should be at "
                                     f"least {schema['minLength']} chars long"))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            causes.append(FieldCause(path, f"Too long: may not be more than {schema['maxLength']} bytes",
                                     "FieldValueTooLong"))
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            causes.append(FieldCause(path, f"Invalid value: {len(value)}: {path} in body should have at "
                                     f"least {schema['minItems']} items"))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            causes.append(FieldCause(path, f"Too many: {len(value)}: must have at most "
                                     f"{schema['maxItems']} items", "FieldValueTooMany"))
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                _validate(item, items, f"{path}[{i}]", causes, False)
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                causes.append(FieldCause(_join(path, key), "Required value", "FieldValueRequired"))
        props = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        for key, child in value.items():
            if root and key in _ROOT_KEYS:
                continue
            if key in props:
                _validate(child, props[key], _join(path, key), causes, False)
            elif isinstance(additional, dict):
                _validate(child, additional, _join(path, key), causes, False)
