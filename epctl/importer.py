"""``epctl import``: switch from the old tools without a moment of stale or empty routing.

kubectl-style: reads manifests (``-f``) or a cluster, prints the epctl ClusterEndpoints it would
create as YAML on stdout (what could not be converted, and notes, go to stderr as ``#`` comments),
and writes nothing unless ``--apply``. With ``--apply`` it creates them (one that already exists is
left alone) and then, for each old ClusterEndpoint whose replacement exists, is valid and owns or
adopts its Service, removes endpoints-operator's finalizer (only that one) so that the old object
can be deleted once the old operator is gone. An old object without such a replacement (not
converted, creation refused, name taken by another ClusterEndpoint, Service held by another
controller) keeps its finalizer, so deleting it cannot garbage-collect a Service nobody took over;
a line per object says which. Every step is idempotent: the same command run again finishes what
an earlier (failed or interrupted) run could not. The new ClusterEndpoints carry ``epctl.io/adopt: "true"``:
the controller takes the Service over and replaces the old Endpoints (see epctl.endpoints), only
after its probes have decided (see the ClusterEndpoint source), so traffic keeps flowing.

Service + Endpoints pairs another controller manages are skipped with a note (see epctl.migrate);
``--include NAMESPACE/NAME`` converts one on purpose, ``-n kube-system`` lets that namespace in.

Exit codes: 0 everything converted (and applied; skipped pairs do not count), 1 something could not
be converted, applied or released (run the same command again once fixed), 2 bad input or no cluster.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection
from typing import Any, TextIO

import yaml

from epctl.api import parse_cluster_endpoint
from epctl.api.spec import API_VERSION, KIND
from epctl.check import CheckInputError, load_documents
from epctl.kube.client import ENDPOINTS, MERGE_PATCH, SERVICES, ApiError, KubeClient, Resource
from epctl.migrate import (
    ADOPT,
    OLD_API_VERSIONS,
    SYSTEM_NAMESPACE,
    Conversion,
    convert_documents,
    is_old_clusterendpoint,
    is_old_owner,
    old_finalizers,
)
from epctl.sources.clusterendpoint import CLUSTERENDPOINTS
from epctl.sources.mirror import mirror_source

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
        if conversion.skipped is not None:
            meta = (conversion.origin or {}).get("metadata") or {}
            err.write(f"# skipped: {conversion.source}: another controller manages it ({conversion.skipped}); "
                      f"--include {meta.get('namespace')}/{meta.get('name')} converts it anyway\n")
        for note in conversion.notes:
            err.write(f"# {conversion.source}: {note}\n")
        for problem in conversion.problems:
            err.write(f"# not converted: {conversion.source}: {problem}\n")
    if not conversions:
        err.write("# nothing to convert: no endpoints-operator ClusterEndpoint, and no selector-less Service "
                  "with an Endpoints object\n")


def _old_resource(doc: Obj) -> Resource:
    group, version = doc["apiVersion"].split("/")
    return Resource(group, version, "clusterendpoints", "ClusterEndpoint")


async def _get(client: KubeClient, path: str) -> Obj | None:
    try:
        return await client.request("GET", path)
    except ApiError as error:
        if error.code == 404:
            return None
        raise


async def _replacement_problem(client: KubeClient, namespace: str, name: str, allow_loopback: bool) -> str | None:
    """Why the epctl ClusterEndpoint ``namespace/name`` does not (and will not) own the Service the
    old object owns, or None when it does or will: it exists, the controller accepts its spec, and
    the Service is its, or it asks to adopt and the Service is nobody's, an old object's of that
    name or an earlier incarnation's (another controller's reference would be replaced: not ours
    to decide here, so that object is left alone)."""
    new = await _get(client, CLUSTERENDPOINTS.path(namespace, name))
    if new is None:
        return "its epctl ClusterEndpoint does not exist"
    new_uid = new["metadata"].get("uid")
    if new["metadata"].get("deletionTimestamp"):
        return f"the epctl ClusterEndpoint {namespace}/{name} is being deleted"
    _, errors = parse_cluster_endpoint(new, allow_loopback=allow_loopback)
    if errors:
        return f"the epctl ClusterEndpoint {namespace}/{name} is invalid ({errors[0]}): the controller leaves it"
    service = await _get(client, SERVICES.path(namespace, name))
    if service is None:
        return None  # nothing to lose: the controller creates it
    refs = service["metadata"].get("ownerReferences") or []
    if any(ref.get("uid") == new_uid for ref in refs):
        return None
    if (new["metadata"].get("annotations") or {}).get(ADOPT) != "true":
        return (f"the epctl ClusterEndpoint {namespace}/{name} was there before, without epctl.io/adopt: \"true\", "
                "and does not own the Service (name taken)")
    if mirror_source(service) is not None:
        return f"Service {namespace}/{name} is a mirror (epctl.io/mirror-from or endpoint-copier): not adopted"
    for ref in refs:
        ours = is_old_owner(ref) or (ref.get("kind") == KIND and ref.get("apiVersion") == API_VERSION)
        if ref.get("controller") is True and not (ours and ref.get("name") == name):
            return (f"Service {namespace}/{name} is controlled by {ref.get('apiVersion')} {ref.get('kind')} "
                    f"{ref.get('name')}, not by the old object")
    return None


async def _release_old(client: KubeClient, doc: Obj, namespace: str, err: TextIO) -> bool:
    """Remove the old operator's finalizers (and only those) from the live old object. True if done
    (or nothing was left to do)."""
    meta = doc["metadata"]
    resource = _old_resource(doc)
    label = f"{doc['apiVersion']} ClusterEndpoint {namespace}/{meta['name']}"
    for _ in range(5):  # a concurrent writer changed it: read again
        live = await _get(client, resource.path(namespace, meta["name"]))
        if live is None:
            err.write(f"# {label}: gone already\n")
            return True
        finalizers = live["metadata"].get("finalizers") or []
        ours = old_finalizers(live["metadata"])
        if not ours:
            err.write(f"# {label}: replaced; no old finalizer left: delete it once the old operator is "
                      "uninstalled\n")
            return True
        keep = [f for f in finalizers if f not in ours]
        try:
            await client.request("PATCH", resource.path(namespace, meta["name"]), content_type=MERGE_PATCH,
                                 body={"metadata": {"finalizers": keep or None,
                                                    "resourceVersion": live["metadata"]["resourceVersion"]}})
        except ApiError as error:
            if error.code == 409:
                continue
            if error.code == 404:
                return True
            err.write(f"# NOT released: {label}: could not remove its finalizer: {error}; run the same command "
                      "again\n")
            return False
        err.write(f"# {label}: replaced; removed the finalizer {', '.join(ours)}: delete it once the old "
                  "operator is uninstalled\n")
        return True
    err.write(f"# NOT released: {label}: it kept changing; run the same command again\n")
    return False


async def _create(client: KubeClient, conversion: Conversion, namespace: str, err: TextIO) -> bool:
    """POST the converted ClusterEndpoint. True if it was created or one of that name exists."""
    assert conversion.result is not None
    name = conversion.result["metadata"]["name"]
    try:
        await client.request("POST", CLUSTERENDPOINTS.path(namespace), body=conversion.result)
        err.write(f"# created ClusterEndpoint {namespace}/{name}\n")
        return True
    except ApiError as error:
        if error.code == 409:
            err.write(f"# ClusterEndpoint {namespace}/{name} exists; left as is\n")
            return True
        err.write(f"# could not create ClusterEndpoint {namespace}/{name}: {error}\n")
        return False


async def apply(client: KubeClient, conversions: list[Conversion], default_namespace: str, err: TextIO,
                allow_loopback: bool = False) -> bool:
    """Create the converted ClusterEndpoints; release each old object whose replacement owns (or will
    own) its Service by removing the old operator's finalizer. Every other old object stays exactly
    as it was, and says why; running the same command again finishes what this run could not (a
    creation that exists is fine, a finalizer already gone is fine). True if all went well."""
    ok = True
    for conversion in conversions:
        origin = conversion.origin or {}
        meta = origin.get("metadata") or {}
        namespace = meta.get("namespace") or default_namespace
        old = is_old_clusterendpoint(origin)
        if conversion.result is None:
            if old and old_finalizers(meta):
                err.write(f"# NOT released: {conversion.source}: not converted; left as it was (finalizer "
                          "kept)\n")
            continue
        if not await _create(client, conversion, namespace, err):
            ok = False
            if old:
                err.write(f"# NOT released: {conversion.source}: no replacement; left as it was (finalizer "
                          "kept); run the same command again\n")
            continue
        if not old:
            continue
        try:
            problem = await _replacement_problem(client, namespace, meta["name"], allow_loopback)
            if problem is not None:
                ok = False
                err.write(f"# NOT released: {conversion.source}: {problem}; left as it was (finalizer kept)\n")
                continue
            ok = await _release_old(client, origin, namespace, err) and ok
        except ApiError as error:
            ok = False
            err.write(f"# NOT released: {conversion.source}: {error}; left as it was; run the same command "
                      "again\n")
    return ok


async def run_import(files: list[str], *, kubeconfig: str | None, context: str | None, namespace: str | None,
                     apply_changes: bool, allow_loopback: bool = False, include: Collection[str] = (),
                     out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
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
        conversions = convert_documents(documents, allow_loopback, include, system_ok=namespace == SYSTEM_NAMESPACE)
        report(conversions, out, err)
        ok = all(c.result is not None or c.skipped is not None for c in conversions)
        if apply_changes:
            assert client is not None
            ok = await apply(client, conversions, namespace or "default", err, allow_loopback) and ok
        return 0 if ok else 1
    finally:
        if client is not None:
            await client.close()
