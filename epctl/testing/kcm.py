"""kube-controller-manager controllers that touch epctl's objects, emulated on the test API server.

A real cluster always runs them, so a test server without them hides real behaviour (an Endpoints
object left by an older tool is mirrored into slices that stay routable next to ours). The garbage
collector lives in :mod:`epctl.testing.apistore`; this module adds:

- **EndpointSliceMirroring** (pkg/controller/endpointslicemirroring): the Endpoints object of a
  selector-less Service is mirrored into EndpointSlices managed by
  ``endpointslicemirroring-controller.k8s.io``: owned by the Endpoints object (controller
  reference), its labels and annotations copied (but the last-change trigger time and
  last-applied-configuration), ``generateName: <service>-``, one slice per (address type, port
  list), ``ready`` from ``addresses`` vs ``notReadyAddresses``, addresses past 1,000 per subset
  dropped. The mirrored slices are deleted when the Endpoints object is gone, carries
  ``endpointslice.kubernetes.io/skip-mirror: "true"`` or a leader-election annotation, or when the
  Service is gone or has a selector. Slices someone else changed are put back.

- **EndpointSlice** (pkg/controller/endpointslice), where epctl meets it: a Service *with* a
  selector gets one slice per address family managed by ``endpointslice-controller.k8s.io`` (owned by
  the Service), from the Pods its selector matches (``status.podIP``, ``ready`` from the Pod's Ready
  condition). A Service *without* a selector is skipped outright, as upstream's ``syncService`` does:
  so when a Service loses its selector (epctl adopting it), the controller's slices stay, and
  kube-proxy keeps routing to those Pods, until someone deletes them (epctl does, once its own
  slices are published).

Not emulated: the Endpoints controller for Services with a selector (epctl takes their Endpoints
over by writing them).
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from epctl.testing.apistore import ObjectStore
    from epctl.testing.builtins import ResourceType

Obj = dict[str, Any]

MIRRORING = "endpointslicemirroring-controller.k8s.io"
SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
SKIP_MIRROR = "endpointslice.kubernetes.io/skip-mirror"
LEADER_ANNOTATION = "control-plane.alpha.kubernetes.io/leader"
NOT_COPIED = ("endpoints.kubernetes.io/last-change-trigger-time", "kubectl.kubernetes.io/last-applied-configuration")
MAX_PER_SUBSET = 1000


def mirrored_slices(endpoints: Obj) -> list[Obj]:
    """The slices the mirroring controller wants for an Endpoints object (without names). Pure."""
    meta = endpoints["metadata"]
    groups: dict[tuple[str, str], Obj] = {}
    for subset in endpoints.get("subsets") or []:
        ports = [{"name": p.get("name", ""), "port": p["port"], "protocol": p.get("protocol", "TCP")}
                 for p in subset.get("ports") or []]
        listed = [(a, True) for a in subset.get("addresses") or []]
        listed += [(a, False) for a in subset.get("notReadyAddresses") or []]
        for address, ready in listed[:MAX_PER_SUBSET]:
            ip = ipaddress.ip_address(address["ip"])
            family = "IPv4" if ip.version == 4 else "IPv6"
            group = groups.setdefault((family, json.dumps(ports, sort_keys=True)), {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"namespace": meta["namespace"],
                             "labels": {**(meta.get("labels") or {}), SERVICE_NAME: meta["name"],
                                        MANAGED_BY: MIRRORING},
                             "annotations": {k: v for k, v in (meta.get("annotations") or {}).items()
                                             if k not in NOT_COPIED},
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Endpoints", "name": meta["name"],
                                                  "uid": meta["uid"], "controller": True,
                                                  "blockOwnerDeletion": True}]},
                "addressType": family, "ports": ports, "endpoints": []})
            endpoint: Obj = {"addresses": [str(ip)], "conditions": {"ready": ready}}
            for field in ("hostname", "nodeName", "targetRef"):
                if address.get(field):
                    endpoint[field] = address[field]
            group["endpoints"].append(endpoint)
    return list(groups.values())


SLICE_CONTROLLER = "endpointslice-controller.k8s.io"


def _shape(obj: Obj) -> str:
    return json.dumps([obj.get("addressType"), obj.get("ports")], sort_keys=True)


def _content(obj: Obj) -> str:
    meta = obj["metadata"]
    return json.dumps([meta.get("labels") or {}, meta.get("annotations") or {}, meta.get("ownerReferences") or [],
                       obj.get("ports"), obj.get("endpoints")], sort_keys=True)


class EndpointSliceMirroring:
    """Reconciles (namespace, name) after any change to that Endpoints object, Service, or one of
    its mirrored slices; on the event loop after the write, like a controller's work queue."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._queue: set[tuple[str, str]] = set()
        self._scheduled = False
        # its informer's index: (namespace, Service) -> names of the slices it manages, and back, so a
        # reconcile reads its own slices rather than every slice in the store
        self._mirrored: dict[tuple[str, str], set[str]] = {}
        self._service_of: dict[tuple[str, str], tuple[str, str]] = {}
        store.listeners.append(self._on_change)

    def _type(self, group: str, plural: str) -> ResourceType:
        return next(rt for rt in self.store.types.values() if rt.group == group and rt.plural == plural)

    def _on_change(self, rt: ResourceType, obj: Obj) -> None:
        meta = obj["metadata"]
        if rt.plural in ("endpoints", "services") and rt.group == "":
            self._enqueue((meta.get("namespace", ""), meta["name"]))
        elif rt.plural == "endpointslices" and rt.group == "discovery.k8s.io":
            for service in self._index(rt, obj):
                self._enqueue(service)

    def _index(self, rt: ResourceType, obj: Obj) -> list[tuple[str, str]]:
        """Follow one slice change in the index; returns the Services whose mirrored slices changed (the
        one it named before too, when its service-name label was changed: onEndpointSliceUpdate)."""
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        before = self._service_of.pop(key, None)
        if before is not None:
            self._mirrored[before].discard(key[1])
            if not self._mirrored[before]:
                del self._mirrored[before]
        labels = meta.get("labels") or {}
        present = key in self.store.objects[rt.storage_key]  # a deletion hands us the object as it was
        if present and labels.get(MANAGED_BY) == MIRRORING:
            after = (key[0], labels.get(SERVICE_NAME, ""))
            self._service_of[key] = after
            self._mirrored.setdefault(after, set()).add(key[1])
            return [after] if before in (None, after) else [after, before]
        return [] if before is None else [before]

    def _enqueue(self, key: tuple[str, str]) -> None:
        self._queue.add(key)
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self._drain)
            except RuntimeError:  # no loop (a store used synchronously): reconcile now
                self._drain()

    def _drain(self) -> None:
        self._scheduled = False
        while self._queue:
            self.reconcile(*self._queue.pop())

    def reconcile(self, namespace: str, name: str) -> None:
        endpoints = self.store.objects[("", "endpoints")].get((namespace, name))
        service = self.store.objects[("", "services")].get((namespace, name))
        slices_rt = self._type("discovery.k8s.io", "endpointslices")
        slices = self.store.objects[slices_rt.storage_key]
        ours = [slices[(namespace, n)] for n in sorted(self._mirrored.get((namespace, name), ()))]
        mirror = (endpoints is not None and service is not None and not (service.get("spec") or {}).get("selector")
                  and (endpoints["metadata"].get("labels") or {}).get(SKIP_MIRROR) != "true"
                  and LEADER_ANNOTATION not in (endpoints["metadata"].get("annotations") or {}))
        wanted = {_shape(s): s for s in mirrored_slices(endpoints)} if mirror and endpoints is not None else {}
        for existing in ours:
            desired = wanted.pop(_shape(existing), None)
            if desired is None:
                self.store.delete(slices_rt, namespace, existing["metadata"]["name"])
            elif _content(desired) != _content(existing):
                body = copy.deepcopy(desired)
                body["metadata"]["name"] = existing["metadata"]["name"]
                self.store.update(slices_rt, namespace, existing["metadata"]["name"], body, manager=MIRRORING)
        for desired in wanted.values():
            body = copy.deepcopy(desired)
            body["metadata"]["generateName"] = f"{name}-"
            self.store.create(slices_rt, namespace, body, manager=MIRRORING)


class EndpointSliceController:
    """The EndpointSlice controller for Services with a selector, as far as epctl meets it (see the
    module docstring): reconciles a namespace's selector Services after any Service or Pod change."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._scheduled: set[str] = set()
        store.listeners.append(self._on_change)

    def _type(self, group: str, plural: str) -> ResourceType:
        return next(rt for rt in self.store.types.values() if rt.group == group and rt.plural == plural)

    def _on_change(self, rt: ResourceType, obj: Obj) -> None:
        if rt.group == "" and rt.plural in ("services", "pods"):
            namespace = obj["metadata"].get("namespace", "")
            if namespace not in self._scheduled:
                self._scheduled.add(namespace)
                try:
                    asyncio.get_running_loop().call_soon(self._drain, namespace)
                except RuntimeError:
                    self._drain(namespace)

    def _drain(self, namespace: str) -> None:
        self._scheduled.discard(namespace)
        for (ns, _), service in list(self.store.objects[("", "services")].items()):
            if ns == namespace:
                self.reconcile(service)

    def reconcile(self, service: Obj) -> None:
        selector = (service.get("spec") or {}).get("selector")
        if not selector:
            return  # upstream: "services without a selector receive no endpoint slices from this controller"
        meta = service["metadata"]
        namespace, name = meta.get("namespace", ""), meta["name"]
        slices_rt = self._type("discovery.k8s.io", "endpointslices")
        pods = [p for (ns, _), p in sorted(self.store.objects[("", "pods")].items())
                if ns == namespace and all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
                and (p.get("status") or {}).get("podIP")]
        ports = [{"name": p.get("name", ""), "port": p.get("targetPort") if isinstance(p.get("targetPort"), int)
                  else p["port"], "protocol": p.get("protocol", "TCP")} for p in service["spec"].get("ports") or []]
        endpoints = [{"addresses": [p["status"]["podIP"]],
                      "conditions": {"ready": any(c.get("type") == "Ready" and c.get("status") == "True"
                                                  for c in p["status"].get("conditions") or [])},
                      "targetRef": {"kind": "Pod", "namespace": namespace, "name": p["metadata"]["name"],
                                    "uid": p["metadata"]["uid"]}} for p in pods]
        desired: Obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {
            "namespace": namespace, "labels": {SERVICE_NAME: name, MANAGED_BY: SLICE_CONTROLLER},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": meta["uid"],
                                 "controller": True, "blockOwnerDeletion": True}]},
            "addressType": "IPv4", "ports": ports, "endpoints": endpoints}
        existing = next((o for (ns, _), o in self.store.objects[slices_rt.storage_key].items()
                         if ns == namespace and (o["metadata"].get("labels") or {}).get(SERVICE_NAME) == name
                         and o["metadata"]["labels"].get(MANAGED_BY) == SLICE_CONTROLLER), None)
        if existing is None:
            body = copy.deepcopy(desired)
            body["metadata"]["generateName"] = f"{name}-"
            self.store.create(slices_rt, namespace, body, manager=SLICE_CONTROLLER)
        elif _content(existing) != _content(desired):
            body = copy.deepcopy(desired)
            body["metadata"]["name"] = existing["metadata"]["name"]
            self.store.update(slices_rt, namespace, existing["metadata"]["name"], body, manager=SLICE_CONTROLLER)
