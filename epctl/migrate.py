"""Converting what the tools epctl replaces left in a cluster into epctl ClusterEndpoints. Pure.

Two inputs (``epctl import`` reads them from files or a cluster):

- an endpoints-operator / kube-endpoints ClusterEndpoint (``sealos.io``, ``khulnasoft-lab.github.io``
  or the older ``sealyun.com``, all ``v1beta1``): epctl's spec is a superset of theirs, so the spec
  is kept as it is; only the apiVersion changes, and ``epctl.io/adopt: "true"`` is added so epctl
  takes over the Service and Endpoints the old operator created;
- a selector-less Service with a hand-written Endpoints object: one ClusterEndpoint port per Service
  port, its hosts the Endpoints addresses (ready and not ready) for that port, a TCP probe on TCP
  ports. UDP and SCTP ports get no probe: what a healthy UDP service answers is not knowable from
  here, so they stay always-ready, as before, with a note saying so.

Every result is validated with the parser the controller uses; what cannot be converted is listed
with the reason and never half-converted.

A Service + Endpoints pair that another controller maintains is skipped with a note, not converted:
taking it over would freeze its endpoints and then fight that controller. "Another controller" is
read from the objects: an ``app.kubernetes.io/managed-by`` label other than epctl's, a controller
ownerReference that is not one of the old tools' ClusterEndpoints, or the kube-system namespace
(unless it was asked for). ``include`` names the pairs to convert anyway.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from epctl.api import parse_cluster_endpoint
from epctl.api.spec import API_VERSION, KIND

Obj = dict[str, Any]

OLD_API_VERSIONS = ("sealos.io/v1beta1", "khulnasoft-lab.github.io/v1beta1", "sealyun.com/v1beta1")
OLD_FINALIZER_HINT = "endpoints-operator put a finalizer on its ClusterEndpoints"
ADOPT = "epctl.io/adopt"
DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)
# endpoints-operator's finalizer: sealos.io/cluster-endpoints.finalizers (sealyun.com/... before the
# rename); only these are ever removed from an old object, whatever else it carries stays
OLD_FINALIZER_SUFFIX = "/cluster-endpoints.finalizers"
MANAGED_BY = "app.kubernetes.io/managed-by"
OURS = "epctl"
SYSTEM_NAMESPACE = "kube-system"


@dataclass
class Conversion:
    """One source object: the ClusterEndpoint made from it, or why none could be."""

    source: str  # kind namespace/name, for messages
    result: Obj | None = None
    problems: list[str] = field(default_factory=list)  # why it could not be converted
    notes: list[str] = field(default_factory=list)  # converted, but worth knowing
    origin: Obj | None = None  # the object it was made from (an old ClusterEndpoint, or the Service)
    skipped: str | None = None  # not attempted on purpose (another controller manages it): why


def old_finalizers(meta: Obj) -> list[str]:
    """The old operator's finalizers on an object (the ones ``import --apply`` may remove)."""
    return [f for f in meta.get("finalizers") or [] if isinstance(f, str) and f.endswith(OLD_FINALIZER_SUFFIX)]


def is_old_owner(ref: Obj) -> bool:
    return ref.get("kind") == KIND and ref.get("apiVersion") in OLD_API_VERSIONS


def managed_elsewhere(obj: Obj, system_ok: bool = False) -> str | None:
    """Why another controller maintains this Service or Endpoints object, or None if none does."""
    meta = obj.get("metadata") or {}
    manager = (meta.get("labels") or {}).get(MANAGED_BY)
    if manager and manager != OURS:
        return f"{obj.get('kind')} labelled {MANAGED_BY}: {manager}"
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") is True and not is_old_owner(ref) and not (
                ref.get("kind") == KIND and ref.get("apiVersion") == API_VERSION):
            return f"{obj.get('kind')} controlled by {ref.get('apiVersion')} {ref.get('kind')} {ref.get('name')}"
    if meta.get("namespace") == SYSTEM_NAMESPACE and not system_ok:
        return f"in {SYSTEM_NAMESPACE}, where the cluster's own controllers keep their Endpoints"
    return None


def _identity(meta: Obj) -> str:
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name')}" if namespace else str(meta.get("name"))


def _metadata(meta: Obj) -> Obj:
    out: Obj = {"name": meta.get("name")}
    if meta.get("namespace"):
        out["namespace"] = meta["namespace"]
    if meta.get("labels"):
        out["labels"] = dict(meta["labels"])
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in DROPPED_ANNOTATIONS}
    out["annotations"] = {**annotations, ADOPT: "true"}
    return out


def _validated(conversion: Conversion, doc: Obj, allow_loopback: bool) -> Conversion:
    spec, errors = parse_cluster_endpoint(doc, allow_loopback=allow_loopback)
    if spec is None:
        conversion.problems += [str(e) for e in errors]
    else:
        conversion.result = doc
    return conversion


def is_old_clusterendpoint(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("kind") == KIND and doc.get("apiVersion") in OLD_API_VERSIONS


def convert_clusterendpoint(old: Obj, allow_loopback: bool = False) -> Conversion:
    """An endpoints-operator ClusterEndpoint -> an epctl one that adopts what the old one created."""
    meta = old.get("metadata") or {}
    conversion = Conversion(f"{old.get('apiVersion')} ClusterEndpoint {_identity(meta)}", origin=old)
    if old_finalizers(meta):
        conversion.notes.append(f"{OLD_FINALIZER_HINT} ({', '.join(meta['finalizers'])}); remove it before you "
                                "delete the old object (epctl import --apply does)")
    doc = {"apiVersion": API_VERSION, "kind": KIND, "metadata": _metadata(meta),
           "spec": copy.deepcopy(old.get("spec") or {})}
    return _validated(conversion, doc, allow_loopback)


def convert_service(service: Obj, endpoints: Obj | None, allow_loopback: bool = False) -> Conversion:
    """A selector-less Service and its hand-written Endpoints -> a ClusterEndpoint (TCP probes)."""
    meta = service.get("metadata") or {}
    conversion = Conversion(f"Service {_identity(meta)}", origin=service)
    spec = service.get("spec") or {}
    if spec.get("selector"):
        conversion.problems.append("the Service has a selector: Kubernetes manages its endpoints")
        return conversion
    if spec.get("type") == "ExternalName":
        conversion.problems.append("an ExternalName Service has no endpoints to check")
        return conversion
    if endpoints is None:
        conversion.problems.append("no Endpoints object of the same name: no hosts to take over")
        return conversion
    labels = (endpoints.get("metadata") or {}).get("labels") or {}
    if labels.get("app.kubernetes.io/managed-by") == "epctl":
        conversion.problems.append("already managed by epctl")
        return conversion
    ports = []
    for service_port in spec.get("ports") or []:
        name = service_port.get("name", "")
        protocol = service_port.get("protocol", "TCP")
        hosts: list[str] = []
        target = None
        for subset in endpoints.get("subsets") or []:
            for port in subset.get("ports") or []:
                if (port.get("name") or "") == name and port.get("protocol", "TCP") == protocol:
                    target = port.get("port")
                    for field_name in ("addresses", "notReadyAddresses"):
                        hosts += [a["ip"] for a in subset.get(field_name) or [] if a.get("ip") not in hosts]
        label = name or str(service_port.get("port"))
        if target is None or not hosts:
            conversion.notes.append(f"port {label}: no addresses in the Endpoints object; left out")
            continue
        converted: Obj = {"port": service_port.get("port"), "targetPort": target, "protocol": protocol,
                          "hosts": hosts}
        if name:
            converted["name"] = name
        if protocol == "TCP":
            converted["tcpSocket"] = {"enable": True}
        else:
            conversion.notes.append(f"port {label} ({protocol}): no probe added (always ready, as before); add "
                                    "udpSocket with the data your service answers to check it")
        ports.append(converted)
    if not ports:
        conversion.problems.append("no port of the Service has addresses in its Endpoints object")
        return conversion
    doc: Obj = {"apiVersion": API_VERSION, "kind": KIND, "metadata": _metadata(meta), "spec": {"ports": ports}}
    if spec.get("clusterIP") == "None":
        doc["spec"]["clusterIP"] = "None"
    return _validated(conversion, doc, allow_loopback)


def convert_documents(documents: list[Any], allow_loopback: bool = False, include: Collection[str] = (),
                      system_ok: bool = False) -> list[Conversion]:
    """Everything convertible in a list of manifests: old ClusterEndpoints, and Service + Endpoints
    pairs (matched by namespace and name) not already covered by an old ClusterEndpoint. A pair
    another controller maintains is skipped (see :func:`managed_elsewhere`) unless ``include`` names
    it (``namespace/name``); ``system_ok`` lets kube-system in (it was asked for)."""
    conversions: list[Conversion] = []
    covered: set[tuple[str, str]] = set()
    endpoints: dict[tuple[str, str], Obj] = {}
    services: list[Obj] = []
    for doc in documents:
        if not isinstance(doc, dict):
            continue
        meta = doc.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        if is_old_clusterendpoint(doc):
            conversions.append(convert_clusterendpoint(doc, allow_loopback))
            covered.add(key)
        elif doc.get("kind") == "Endpoints" and doc.get("apiVersion") == "v1":
            endpoints[key] = doc
        elif doc.get("kind") == "Service" and doc.get("apiVersion") == "v1":
            services.append(doc)
    for service in services:
        meta = service.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        if key in covered or (service.get("spec") or {}).get("selector"):
            continue
        pair = [service] + ([endpoints[key]] if key in endpoints else [])
        why = next((w for w in (managed_elsewhere(o, system_ok) for o in pair) if w), None)
        if why is not None and f"{key[0]}/{key[1]}" not in include:
            conversions.append(Conversion(f"Service {_identity(meta)}", origin=service, skipped=why))
            continue
        conversions.append(convert_service(service, endpoints.get(key), allow_loopback))
    return conversions
