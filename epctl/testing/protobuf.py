"""Decode the protobuf request bodies kubectl's typed generators send, into the JSON objects they mean.

``kubectl create namespace|configmap|secret|serviceaccount`` encode their object as protobuf
(``Content-Type: application/vnd.kubernetes.protobuf``) whatever the server is, and have no fallback
on 415 (they do accept a JSON answer). A body is ``k8s\\x00`` + a ``runtime.Unknown`` message whose
``raw`` field holds the typed message. Only the messages those generators produce are described
here, by their field numbers in k8s.io/api's generated.proto; anything else is refused with a
message that says so. Responses stay JSON.
"""

from __future__ import annotations

import base64
from typing import Any

Obj = dict[str, Any]
MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    """The body is not a protobuf object this server can read."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of one message: ints for varints, bytes for length-delimited."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            out.append((number, data[pos:pos + length]))
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
    return out


# A schema maps field number -> (json name, kind); kind is "string", "bytes" (base64 in JSON), "bool",
# "int", "map" (string -> string), "bytesmap" (string -> base64), "strings" (repeated), or a nested schema.
Schema = dict[int, tuple[str, Any]]

TIME: Schema = {}  # metav1.Time: set by the server anyway; ignored
OBJECT_META: Schema = {1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"),
                       11: ("labels", "map"), 12: ("annotations", "map"), 14: ("finalizers", "strings")}
LOCAL_REF: Schema = {1: ("name", "string")}
MESSAGES: dict[str, Schema] = {
    "Namespace": {1: ("metadata", OBJECT_META), 2: ("spec", {1: ("finalizers", "strings")})},
    "ConfigMap": {1: ("metadata", OBJECT_META), 2: ("data", "map"), 3: ("binaryData", "bytesmap"),
                  4: ("immutable", "bool")},
    "Secret": {1: ("metadata", OBJECT_META), 2: ("data", "bytesmap"), 3: ("type", "string"),
               4: ("stringData", "map"), 5: ("immutable", "bool")},
    "ServiceAccount": {1: ("metadata", OBJECT_META), 3: ("imagePullSecrets", [LOCAL_REF]),
                       4: ("automountServiceAccountToken", "bool")},
}


def _decode(data: bytes, schema: Schema) -> Obj:
    out: Obj = {}
    for number, value in fields(data):
        if number not in schema:
            continue
        name, kind = schema[number]
        if kind in ("map", "bytesmap"):
            entry = dict(fields(value)) if isinstance(value, bytes) else {}
            key, item = entry.get(1, b""), entry.get(2, b"")
            if isinstance(key, bytes) and isinstance(item, bytes):
                text = base64.b64encode(item).decode() if kind == "bytesmap" else item.decode()
                out.setdefault(name, {})[key.decode()] = text
        elif kind == "strings" and isinstance(value, bytes):
            out.setdefault(name, []).append(value.decode())
        elif kind == "string" and isinstance(value, bytes):
            if value:
                out[name] = value.decode()
        elif kind == "bool" and isinstance(value, int):
            out[name] = bool(value)
        elif isinstance(kind, list) and isinstance(value, bytes):
            out.setdefault(name, []).append(_decode(value, kind[0]))
        elif isinstance(kind, dict) and isinstance(value, bytes):
            out[name] = _decode(value, kind)
    return out


def decode_object(body: bytes) -> Obj:
    """The JSON object a kubectl protobuf request body carries; raises ProtobufError."""
    if not body.startswith(MAGIC):
        raise ProtobufError("not a Kubernetes protobuf body (no k8s magic prefix)")
    envelope = dict(fields(body[len(MAGIC):]))
    type_meta, raw = envelope.get(1, b""), envelope.get(2, b"")
    if not isinstance(type_meta, bytes) or not isinstance(raw, bytes):
        raise ProtobufError("malformed runtime.Unknown envelope")
    meta = {k: v.decode() for k, v in fields(type_meta) if isinstance(v, bytes)}
    api_version, kind = meta.get(1, ""), meta.get(2, "")
    schema = MESSAGES.get(kind) if api_version == "v1" else None
    if schema is None:
        raise ProtobufError(f"the test API server decodes protobuf only for v1 {', '.join(sorted(MESSAGES))} "
                            f"(kubectl create ...), not {api_version} {kind}: send JSON or YAML (kubectl apply)")
    return {"apiVersion": api_version, "kind": kind, **_decode(raw, schema)}
