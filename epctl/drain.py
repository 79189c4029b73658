"""``epctl drain`` / ``epctl undrain``: put hosts of a ClusterEndpoint into maintenance and back.

It writes what a kubectl user would write, the annotation ``epctl.io/drain`` (comma-separated hosts),
as ``kubectl annotate --overwrite --resource-version=<rv> cep NAME epctl.io/drain=...`` does: a JSON
merge patch of ``metadata.annotations`` carrying the resourceVersion it read, so two operators
draining at once never lose each other's host (a conflict re-reads and retries). The last host
undrained removes the annotation (``kubectl annotate cep NAME epctl.io/drain-``). The field manager
is ``epctl-drain``: the controller's Event names it as who asked.

The new value is validated with the controller's own parser first: a host that is not in the
ClusterEndpoint is refused here, not turned into an InvalidSpec condition there.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from typing import Any

from epctl.api import parse_cluster_endpoint
from epctl.api.parse import unknown_drained
from epctl.api.spec import DRAIN_ANNOTATION
from epctl.kube.client import MERGE_PATCH, ApiError, KubeClient
from epctl.sources.clusterendpoint import CLUSTERENDPOINTS

Obj = dict[str, Any]
FIELD_MANAGER = "epctl-drain"
ATTEMPTS = 5


def drained_hosts(value: str | None) -> list[str]:
    """The hosts an annotation value names, in order, once each."""
    out: list[str] = []
    for host in (h.strip() for h in (value or "").split(",")):
        if host and host not in out:
            out.append(host)
    return out


def new_value(current: str | None, hosts: Sequence[str], undrain: bool) -> str | None:
    """The annotation after draining (or undraining) ``hosts``; None: no annotation."""
    listed = drained_hosts(current)
    if undrain:
        listed = [h for h in listed if h not in hosts]
    else:
        listed += [h for h in hosts if h not in listed]
    return ",".join(listed) or None


async def drain(client: KubeClient, namespace: str, name: str, hosts: Sequence[str], undrain: bool,
                allow_loopback: bool = False) -> tuple[int, str]:
    """(exit code, message). 0: written or already so; 1: refused (not found, invalid host); 2: API error."""
    verb = "undrained" if undrain else "drained"
    for _ in range(ATTEMPTS):
        try:
            obj = await client.request("GET", CLUSTERENDPOINTS.path(namespace, name))
        except ApiError as err:
            return (1 if err.code == 404 else 2), f"clusterendpoint {namespace}/{name}: {err.message}"
        meta = obj.get("metadata") or {}
        current = (meta.get("annotations") or {}).get(DRAIN_ANNOTATION)
        value = new_value(current, hosts, undrain)
        if value == current or (value is None and current is None):
            return 0, f"clusterendpoint.epctl.io/{name} already {verb}: {', '.join(hosts)}"
        candidate = copy.deepcopy(obj)
        annotations = candidate["metadata"].setdefault("annotations", {})
        if value is None:
            annotations.pop(DRAIN_ANNOTATION, None)
        else:
            annotations[DRAIN_ANNOTATION] = value
        candidate.setdefault("apiVersion", CLUSTERENDPOINTS.api_version)
        candidate.setdefault("kind", CLUSTERENDPOINTS.kind)
        spec, errors = parse_cluster_endpoint(candidate, allow_loopback=allow_loopback)
        mine = [str(e) for e in errors if DRAIN_ANNOTATION in e.path]
        unknown = [h for h in unknown_drained(spec) if h in hosts] if spec is not None else []
        if unknown and not undrain:
            mine.append(f"{', '.join(unknown)}: not in any port's hosts of clusterendpoint {namespace}/{name}")
        if mine and not undrain:
            return 1, "; ".join(mine)
        patch = {"metadata": {"annotations": {DRAIN_ANNOTATION: value},
                              "resourceVersion": meta.get("resourceVersion")}}
        try:
            await client.request("PATCH", CLUSTERENDPOINTS.path(namespace, name), body=patch,
                                 content_type=MERGE_PATCH, query={"fieldManager": FIELD_MANAGER})
        except ApiError as err:
            if err.code == 409:
                continue  # someone else changed it meanwhile: read again
            return 2, f"clusterendpoint {namespace}/{name}: {err.message}"
        return 0, f"clusterendpoint.epctl.io/{name} {verb}: {', '.join(hosts)}"
    return 2, f"clusterendpoint {namespace}/{name}: kept changing; try again"


async def run_drain(name: str, hosts: Sequence[str], *, undrain: bool, namespace: str, kubeconfig: str | None,
                    context: str | None, allow_loopback: bool = False) -> int:
    from epctl.importer import default_kubeconfig

    async with await KubeClient.connect(kubeconfig or default_kubeconfig(), context) as client:
        code, message = await drain(client, namespace, name, hosts, undrain, allow_loopback)
    print(message, file=sys.stdout if code == 0 else sys.stderr)
    return code
