"""``epctl demo``: the whole controller on one machine, no cluster needed.

Starts the embedded API server (loopback endpoints allowed), four local backends (TCP, HTTP, UDP,
gRPC), installs the CRD, applies ``examples/demo.yaml`` and runs the real controller against it,
printing the ClusterEndpoint's health and its EndpointSlices whenever they change. After a few
seconds it stops the HTTP backend (watch that endpoint go not-ready), then brings it back. It
exits after ``--duration`` seconds with a summary; ``--serve`` keeps everything running and
prints a kubeconfig for kubectl.
"""

from __future__ import annotations

import asyncio
import string
import sys
import time
from collections import Counter
from typing import Any, TextIO

import yaml

from epctl.app import Controller, ControllerSettings
from epctl.assets import read_asset
from epctl.kube.client import CRDS, NAMESPACES, KubeClient
from epctl.slices import SERVICE_NAME_LABEL
from epctl.sources.clusterendpoint import CLUSTERENDPOINTS
from epctl.testing.backends import GRPCBackend, HTTPBackend, TCPBackend, UDPBackend
from epctl.testing.kubeapi import KubeAPIServer

Obj = dict[str, Any]


def render(api: KubeAPIServer, elapsed: float) -> str:
    """A snapshot of the demo ClusterEndpoint and its slices, as ``kubectl get`` would show them."""
    cep = api.store.objects[("epctl.io", "clusterendpoints")].get(("demo", "shop")) or {}
    status = cep.get("status") or {}
    ready = next((c["status"] for c in status.get("conditions") or [] if c["type"] == "Ready"), "-")
    lines = [f"[{elapsed:5.1f}s] clusterendpoint demo/shop: phase={status.get('phase', '-')} "
             f"healthy={status.get('healthy', '-')}/{status.get('total', '-')} Ready={ready}"]
    for port in status.get("ports") or []:
        for item in port.get("unhealthy") or []:
            lines.append(f"          {port['name']}: {item['address']} unhealthy: {item['reason']}")
    slices = sorted((o for (ns, _), o in api.store.objects[("discovery.k8s.io", "endpointslices")].items()
                     if ns == "demo" and o["metadata"].get("labels", {}).get(SERVICE_NAME_LABEL) == "shop"),
                    key=lambda o: o["ports"][0]["name"])
    lines.append(f"          {'ENDPOINTSLICE':<26} {'PORT':<14} {'ADDRESS':<11} READY  SERVING")
    for obj in slices:
        port = obj["ports"][0]
        for endpoint in obj["endpoints"]:
            conditions = endpoint.get("conditions", {})
            lines.append(f"          {obj['metadata']['name']:<26} {port['name'] + '/' + str(port['port']):<14} "
                         f"{endpoint['addresses'][0]:<11} {str(conditions.get('ready')).lower():<6} "
                         f"{str(conditions.get('serving')).lower()}")
    return "\n".join(lines)


def _without_clock(snapshot: str) -> str:
    return snapshot.split("]", 1)[-1]


async def _apply_demo(client: KubeClient, ports: dict[str, int]) -> None:
    text = string.Template(read_asset("demo.yaml")).substitute({k.upper() + "_PORT": v for k, v in ports.items()})
    await client.request("POST", CRDS.path(), body=yaml.safe_load(read_asset("crd.yaml")))
    for doc in yaml.safe_load_all(text):
        if doc["kind"] == "Namespace":
            await client.request("POST", NAMESPACES.path(), body=doc)
        else:
            await client.request("POST", CLUSTERENDPOINTS.path(doc["metadata"]["namespace"]), body=doc)


async def run_demo(duration: float = 30.0, serve: bool = False, out: TextIO = sys.stdout) -> int:
    def say(text: str) -> None:
        print(text, file=out, flush=True)

    async with KubeAPIServer(allow_loopback=True) as api, TCPBackend() as tcp, HTTPBackend() as web, \
            UDPBackend() as udp, GRPCBackend() as grpc_backend:
        client = await KubeClient.connect(api.kubeconfig_path)
        controller = Controller(client, ControllerSettings(allow_loopback_hosts=True, metrics_addr=None))
        try:
            say(f"epctl demo: API server {api.url}; backends tcp:{tcp.port} http:{web.port} udp:{udp.port} "
                f"grpc:{grpc_backend.port}")
            await _apply_demo(client, {"tcp": tcp.port, "http": web.port, "udp": udp.port,
                                       "grpc": grpc_backend.port})
            await controller.start()
            say("controller running; applied examples/demo.yaml (4 ports, probed every second)\n")
            if serve:
                say(f"kubeconfig: {api.kubeconfig_path}\n"
                    f"try: kubectl --kubeconfig {api.kubeconfig_path} get cep,svc,endpointslices -n demo\n"
                    "Ctrl-C to stop.")
            start = time.monotonic()
            outage = (min(6.0, duration / 5), min(16.0, duration / 2))
            down = up = False
            shown = ""
            while serve or time.monotonic() - start < duration:
                elapsed = time.monotonic() - start
                if not down and elapsed >= outage[0]:
                    down = True
                    await web.stop()
                    say(f"[{elapsed:5.1f}s] >>> stopping the HTTP backend: the web endpoint will go not-ready")
                if down and not up and elapsed >= outage[1]:
                    up = True
                    await web.start()
                    say(f"[{elapsed:5.1f}s] >>> HTTP backend is back: the web endpoint will be ready again")
                snapshot = render(api, elapsed)
                if _without_clock(snapshot) != _without_clock(shown):  # print only when something changed
                    say(snapshot)
                    shown = snapshot
                await asyncio.sleep(0.25)
        finally:
            await controller.stop()
            await client.close()
        writes = Counter(f"{r.verb} {r.resource}" for r in api.request_log if r.is_write and r.code < 400)
        events = Counter(e["reason"] for e in api.store.objects[("", "events")].values())
        say("\nsummary:")
        say("  API writes: " + ", ".join(f"{k}={v}" for k, v in sorted(writes.items())))
        say("  Events: " + ", ".join(f"{k}={v}" for k, v in sorted(events.items())))
        status = (api.store.objects[("epctl.io", "clusterendpoints")].get(("demo", "shop")) or {}).get("status", {})
        say(f"  final phase: {status.get('phase')} ({status.get('healthy')}/{status.get('total')} healthy)")
        return 0 if status.get("phase") == "Healthy" else 1
