"""Shared pieces of the controller integration tests: a running controller on the test API server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from epctl.app import Controller, ControllerSettings
from epctl.kube.client import CRDS, ENDPOINTSLICES, SERVICES, KubeClient
from epctl.sources.clusterendpoint import CLUSTERENDPOINTS
from epctl.testing.kubeapi import KubeAPIServer

CRD = Path(__file__).resolve().parents[2] / "manifests" / "base" / "crd.yaml"


async def install_crd(client: KubeClient) -> None:
    await client.request("POST", CRDS.path(), body=yaml.safe_load(CRD.read_text()))


@asynccontextmanager
async def running_controller(api: KubeAPIServer, client: KubeClient, **overrides: Any) -> AsyncIterator[Controller]:
    settings = ControllerSettings(**{"batch_delay": 0.05, "max_batch_delay": 0.3, "allow_loopback_hosts": True,
                                     "metrics_addr": None, **overrides})
    controller = Controller(client, settings)
    await controller.start()
    try:
        yield controller
    finally:
        await controller.stop()


async def source_service(client: KubeClient, name: str, port: tuple[str, int, int],
                         endpoints: dict[str, bool]) -> None:
    """A Service (port name, Service port, endpoint port) with one hand-made EndpointSlice: what a mirror
    follows. ``endpoints``: address -> ready."""
    port_name, service_port, endpoint_port = port
    await client.request("POST", SERVICES.path("default"), body={
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"ports": [{"name": port_name, "port": service_port}]}})
    await client.request("POST", ENDPOINTSLICES.path("default"), body={
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-1", "labels": {"kubernetes.io/service-name": name}}, "addressType": "IPv4",
        "ports": [{"name": port_name, "port": endpoint_port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": ready}} for a, ready in endpoints.items()]})


def cep(name: str, ports: list[dict[str, Any]], namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "epctl.io/v1beta1", "kind": "ClusterEndpoint",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"ports": ports, **spec}}


def slices_of(api: KubeAPIServer, service: str, namespace: str = "default") -> list[dict[str, Any]]:
    return [o for (ns, _), o in sorted(api.store.objects[("discovery.k8s.io", "endpointslices")].items())
            if ns == namespace and o["metadata"].get("labels", {}).get("kubernetes.io/service-name") == service]


def epctl_slices_of(api: KubeAPIServer, service: str, namespace: str = "default") -> list[dict[str, Any]]:
    """The Service's slices epctl manages (kube-controller-manager's, for a Service with a selector, aside)."""
    return [o for o in slices_of(api, service, namespace)
            if o["metadata"]["labels"].get("endpointslice.kubernetes.io/managed-by") == "controller.epctl.io"]


def endpoints_of(api: KubeAPIServer, service: str, namespace: str = "default") -> dict[tuple[str, str], bool]:
    """(port name, address) -> ready, across all slices of the Service."""
    out = {}
    for obj in slices_of(api, service, namespace):
        for endpoint in obj["endpoints"]:
            out[(obj["ports"][0]["name"], endpoint["addresses"][0])] = endpoint["conditions"]["ready"]
    return out


def service_of(api: KubeAPIServer, name: str, namespace: str = "default") -> dict[str, Any] | None:
    return api.store.objects[("", "services")].get((namespace, name))


@asynccontextmanager
async def named_replica(api: KubeAPIServer, name: str, **settings: Any) -> AsyncIterator[Controller]:
    """A controller replica with its own client, identified as ``epctl/<name>`` in the request log."""
    client = await KubeClient.connect(api.kubeconfig_path, user_agent=f"epctl/{name}")
    controller = Controller(client, ControllerSettings(
        batch_delay=0.05, max_batch_delay=0.3, metrics_addr=None, allow_loopback_hosts=True, identity=name,
        **settings))
    await controller.start()
    try:
        yield controller
    finally:
        await controller.stop()
        await client.close()


@asynccontextmanager
async def two_open_fences(controllers: dict[str, Controller], keys: Iterable[tuple[str, str]]
                          ) -> AsyncIterator[list[str]]:
    """Samples, every few milliseconds, whether two replicas' write fences would let a write of one
    target out at the same moment (what "two writers" means before any write happens). Yields the
    findings: target, the replicas, when."""
    found: list[str] = []
    watched = list(keys)

    async def sample() -> None:
        while True:
            for key in watched:
                open_for = [m for m, c in controllers.items() if c.fence.remaining(key) > 0]
                if len(open_for) > 1:
                    found.append(f"{key[1]}: {open_for} @{round(time.monotonic(), 2)}")
            await asyncio.sleep(0.005)  # a sampling interval, not synchronisation

    task = asyncio.create_task(sample())
    try:
        yield found
    finally:
        task.cancel()


def cep_of(api: KubeAPIServer, name: str, namespace: str = "default") -> dict[str, Any] | None:
    return api.store.objects[("epctl.io", "clusterendpoints")].get((namespace, name))


__all__ = [
    "CLUSTERENDPOINTS",
    "CRD",
    "ENDPOINTSLICES",
    "SERVICES",
    "cep",
    "cep_of",
    "endpoints_of",
    "epctl_slices_of",
    "install_crd",
    "running_controller",
    "service_of",
    "slices_of",
    "source_service",
]


def v1_endpoints(api: KubeAPIServer, name: str, namespace: str = "default") -> dict[str, Any] | None:
    """The stored v1 Endpoints object of ``name``."""
    obj: dict[str, Any] | None = api.store.objects[("", "endpoints")].get((namespace, name))
    return obj


def endpoints_readiness(obj: dict[str, Any] | None) -> dict[tuple[str, str], bool]:
    """(port name, ip) -> ready, as a v1 Endpoints object says."""
    return {(port.get("name", ""), address["ip"]): ready
            for subset in (obj or {}).get("subsets") or [] for port in subset.get("ports") or []
            for field, ready in (("addresses", True), ("notReadyAddresses", False))
            for address in subset.get(field) or []}


def v1_addresses(api: KubeAPIServer, name: str, namespace: str = "default") -> dict[tuple[str, str], bool]:
    """(port name, ip) -> ready, as the stored v1 Endpoints object of ``name`` says."""
    return endpoints_readiness(v1_endpoints(api, name, namespace))
