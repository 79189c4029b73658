"""Just enough ``/openapi/v3`` for kubectl.

kubectl (1.27+) decides whether the server can validate fields itself by looking in the OpenAPI v3
document of the resource's group-version for a ``fieldValidation`` parameter on the PATCH operation
of that kind; when found it sends ``fieldValidation=Strict`` and leaves validation to the server
(which is what we want: the test server prunes and validates CRs against their schema). The
documents list every served path with its parameters and, for CRDs, the schema under
``components.schemas``.
"""

from __future__ import annotations

from typing import Any

from epctl.testing.builtins import ResourceType

Obj = dict[str, Any]

_QUERY_PARAMS = ["dryRun", "fieldManager", "fieldValidation", "force", "pretty"]


def openapi_v3_index(group_versions: list[str]) -> Obj:
    paths = {}
    for gv in group_versions:
        prefix = f"api/{gv}" if "/" not in gv else f"apis/{gv}"
        paths[prefix] = {"serverRelativeURL": f"/openapi/v3/{prefix}?hash=0"}
    return {"paths": paths}


def _schema_name(rt: ResourceType) -> str:
    group = ".".join(reversed(rt.group.split("."))) if rt.group else "io.k8s.api.core"
    return f"{group}.{rt.version}.{rt.kind}"


def _params() -> list[Obj]:
    return [{"name": p, "in": "query", "schema": {"type": "string"}, "uniqueItems": True} for p in _QUERY_PARAMS]


def _gvk(rt: ResourceType) -> Obj:
    return {"group": rt.group, "version": rt.version, "kind": rt.kind}


def openapi_v3_document(group_version_path: str, types: list[ResourceType]) -> Obj:
    """OpenAPI v3 for one ``api/v1`` or ``apis/<group>/<version>`` path."""
    paths: Obj = {}
    schemas: Obj = {}
    base = "/" + group_version_path
    for rt in types:
        name = _schema_name(rt)
        ref = {"$ref": f"#/components/schemas/{name}"}
        body = {"content": {"application/json": {"schema": ref}}}
        resp = {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}}
        collection = f"{base}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{base}/{rt.plural}"
        paths[collection] = {
            "get": {"x-kubernetes-action": "list", "x-kubernetes-group-version-kind": _gvk(rt), "responses": resp},
            "post": {"x-kubernetes-action": "post", "x-kubernetes-group-version-kind": _gvk(rt),
                     "requestBody": body, "parameters": _params(), "responses": resp},
            "parameters": _params(),
        }
        item = {
            "get": {"x-kubernetes-action": "get", "x-kubernetes-group-version-kind": _gvk(rt), "responses": resp},
            "put": {"x-kubernetes-action": "put", "x-kubernetes-group-version-kind": _gvk(rt),
                    "requestBody": body, "parameters": _params(), "responses": resp},
            "patch": {"x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": _gvk(rt),
                      "requestBody": {"content": {"application/merge-patch+json": {"schema": {"type": "object"}}}},
                      "parameters": _params(), "responses": resp},
            "delete": {"x-kubernetes-action": "delete", "x-kubernetes-group-version-kind": _gvk(rt),
                       "responses": resp},
            "parameters": _params() + [{"name": "name", "in": "path", "required": True,
                                        "schema": {"type": "string"}}],
        }
        paths[f"{collection}/{{name}}"] = item
        if rt.status_subresource:
            paths[f"{collection}/{{name}}/status"] = {k: v for k, v in item.items() if k != "delete"}
        schema: Obj = dict(rt.schema) if rt.schema else {"type": "object",
                                                          "x-kubernetes-preserve-unknown-fields": True}
        schema["x-kubernetes-group-version-kind"] = [_gvk(rt)]
        schemas[name] = schema
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths,
            "components": {"schemas": schemas}}
