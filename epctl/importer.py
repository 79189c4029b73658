"""``epctl import``: switch from the old tools without a moment of stale or empty routing.

kubectl-style: reads manifests (``-f``) or a cluster, prints the epctl ClusterEndpoints it would
create as YAML on stdout (what could not be converted, and notes, go to stderr as ``#`` comments),
and writes nothing unless ``--apply``. With ``--apply`` it creates them (one that already exists is
left alone) and removes endpoints-operator's finalizer from the old objects so that they can be
deleted once the old operator is gone. The new ClusterEndpoints carry ``epctl.io/adopt: "true"``:
the controller takes the Service over and replaces the old Endpoints (see epctl.endpoints), only
after its probes have decided (see the ClusterEndpoint source), so traffic keeps flowing.

Exit codes: 0 everything converted (and applied), 1 something could not be converted or applied,
2 bad input or no cluster.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

import yaml

from epctl.check import CheckInputError, load_documents
from epctl.kube.client import ENDPOINTS, MERGE_PATCH, SERVICES, ApiError, KubeClient, Resource
from epctl.migrate import OLD_API_VERSIONS, Conversion, convert_documents, is_old_clusterendpoint
from epctl.sources.clusterendpoint import CLUSTERENDPOINTS

Obj = dict[str, Any]


def default_kubeconfig() -> str | None:
    """As kubectl: $KUBECONFIG (its first file), else ~/.kube/config if it exists, else in-cluster."""
    env = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    if env:
        return env
    home = os.path.expanduser("~/.kube/config")
    return home if os.path.exists(home) else None


def _old_resources() -> list[Resource]:
    out = []
    for api_version in OLD_API_VERSIONS:
        group, version = api_version.split("/")
        out.append(Resource(group, version, "clusterendpoints", "ClusterEndpoint"))
    return out


async def _list(client: KubeClient, resource: Resource, namespace: str | None) -> list[Obj]:
    try:
        result = await client.request("GET", resource.path(namespace))
    except ApiError as err:
        if err.code == 404:  # that API group is not installed
            return []
        raise
    items = result.get("items") or []
    for item in items:
        item.setdefault("apiVersion", resource.api_version)
        item.setdefault("kind", resource.kind)
    return list(items)


async def read_cluster(client: KubeClient, namespace: str | None) -> list[Any]:
    """The old ClusterEndpoints, and the selector-less Services with Endpoints that epctl does not
    manage yet (not the API server's own ``default/kubernetes``, nor one an epctl ClusterEndpoint has)."""
    documents: list[Any] = []
    for resource in _old_resources():
        documents += await _list(client, resource, namespace)
    ours = {(o["metadata"].get("namespace"), o["metadata"]["name"])
            for o in await _list(client, CLUSTERENDPOINTS, namespace)}
    endpoints = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o
                 for o in await _list(client, ENDPOINTS, namespace)}
    for service in await _list(client, SERVICES, namespace):
        key = (service["metadata"].get("namespace"), service["metadata"]["name"])
        if key == ("default", "kubernetes") or key in ours or key not in endpoints:
            continue
        documents += [service, endpoints[key]]
    return documents


def report(conversions: list[Conversion], out: TextIO, err: TextIO) -> None:
    converted = [c.result for c in conversions if c.result is not None]
    if converted:
        out.write(yaml.safe_dump_all(converted, sort_keys=False))
    for conversion in conversions:
        for note in conversion.notes:
            err.write(f"# {conversion.source}: {note}\n")
        for problem in conversion.problems:
            err.write(f"# not converted: {conversion.source}: {problem}\n")
    if not conversions:
        err.write("# nothing to convert: no endpoints-operator ClusterEndpoint, and no selector-less Service "
                  "with an Endpoints object\n")


async def apply(client: KubeClient, conversions: list[Conversion], documents: list[Any], default_namespace: str,
                err: TextIO) -> bool:
    """Create the converted ClusterEndpoints; clear the old ones' finalizers. True if all went well."""
    ok = True
    for conversion in conversions:
        if conversion.result is None:
            continue
        namespace = conversion.result["metadata"].get("namespace") or default_namespace
        try:
            await client.request("POST", CLUSTERENDPOINTS.path(namespace), body=conversion.result)
            err.write(f"# created ClusterEndpoint {namespace}/{conversion.result['metadata']['name']}\n")
        except ApiError as error:
            if error.code != 409:
                err.write(f"# could not create {namespace}/{conversion.result['metadata']['name']}: {error}\n")
                ok = False
                continue
            err.write(f"# ClusterEndpoint {namespace}/{conversion.result['metadata']['name']} exists; left as is\n")
    for doc in documents:
        if not is_old_clusterendpoint(doc) or not (doc.get("metadata") or {}).get("finalizers"):
            continue
        meta = doc["metadata"]
        group, version = doc["apiVersion"].split("/")
        resource = Resource(group, version, "clusterendpoints", "ClusterEndpoint")
        namespace = meta.get("namespace") or default_namespace
        try:
            await client.request("PATCH", resource.path(namespace, meta["name"]), content_type=MERGE_PATCH,
                                 body={"metadata": {"finalizers": None}})
            err.write(f"# removed the finalizer of {doc['apiVersion']} {namespace}/{meta['name']}: delete it once "
                      "the old operator is uninstalled\n")
        except ApiError as error:
            if error.code != 404:
                err.write(f"# could not remove the finalizer of {namespace}/{meta['name']}: {error}\n")
                ok = False
    return ok


async def run_import(files: list[str], *, kubeconfig: str | None, context: str | None, namespace: str | None,
                     apply_changes: bool, allow_loopback: bool = False, out: TextIO = sys.stdout,
                     err: TextIO = sys.stderr) -> int:
    try:
        documents = [doc for _, doc in load_documents(files)] if files else None
    except CheckInputError as error:
        err.write(f"epctl import: {error}\n")
        return 2
    client: KubeClient | None = None
    if documents is None or apply_changes:
        client = await KubeClient.connect(kubeconfig or default_kubeconfig(), context)
    try:
        if documents is None:
            assert client is not None
            documents = await read_cluster(client, namespace)
        conversions = convert_documents(documents, allow_loopback)
        report(conversions, out, err)
        ok = all(c.result is not None for c in conversions)
        if apply_changes:
            assert client is not None
            ok = await apply(client, conversions, documents, namespace or "default", err) and ok
        return 0 if ok else 1
    finally:
        if client is not None:
            await client.close()
