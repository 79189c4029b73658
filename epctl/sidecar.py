"""``epctl sidecar``: serve one Service's live endpoints over pod-local HTTP.

Drop-in for kubernetes-pod-discovery (same env vars, same ``/endpoints`` JSON shape: a v1
Endpoints object), without its defects: it *watches* the Service's EndpointSlices (first data as
soon as the list returns, changes within a watch round-trip) instead of polling every 5 s;
``/endpoints`` and ``/endpoints/`` both answer (no redirect); before the first sync it answers
503 with a reason instead of an empty 200; ``/health`` is 200 only while synced and watching.

The response is rendered once per change (not per request) and carries an ``ETag``;
``If-None-Match`` gets 304, and ``?wait=SECONDS`` long-polls until the content changes.

Imports stay small on purpose: no probe or OpenStack code is loaded in a sidecar.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from epctl.kube.client import ENDPOINTS, ENDPOINTSLICES, KubeClient
from epctl.kube.informer import Informer, InformerEvent
from epctl.lifecycle import start_site, until_terminated
from epctl.tasks import within

log = logging.getLogger(__name__)
Obj = dict[str, Any]
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
MAX_WAIT = 300.0


def endpoints_from_slices(namespace: str, service: str, slices: list[Obj]) -> Obj:
    """The v1 Endpoints object Kubernetes would show for these EndpointSlices. Pure.

    Addresses are grouped into subsets by identical port lists (Kubernetes' repacking); a ready
    endpoint (``ready`` true or unset) goes to ``addresses``, others to ``notReadyAddresses``;
    terminating endpoints are left out as the Endpoints controller does. Order is deterministic.
    """
    subsets: dict[str, dict[str, Any]] = {}
    for obj in slices:
        if obj.get("addressType") not in ("IPv4", "IPv6"):
            continue
        ports = sorted(({"name": p.get("name") or "", "port": p.get("port"), "protocol": p.get("protocol", "TCP")}
                        for p in obj.get("ports") or [] if p.get("port") is not None),
                       key=lambda p: (p["name"], p["port"], p["protocol"]))
        key = json.dumps(ports, sort_keys=True)
        subset = subsets.setdefault(key, {"ports": ports, "ready": {}, "not_ready": {}})
        for endpoint in obj.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            if conditions.get("terminating") is True:
                continue
            for ip in endpoint.get("addresses") or []:
                address: Obj = {"ip": ip}
                for source, target in (("hostname", "hostname"), ("nodeName", "nodeName"), ("targetRef", "targetRef")):
                    if endpoint.get(source) is not None:
                        address[target] = endpoint[source]
                bucket = "ready" if conditions.get("ready") is not False else "not_ready"
                other = "not_ready" if bucket == "ready" else "ready"
                if ip not in subset[other]:
                    subset[bucket][ip] = address
    rendered = []
    for key in sorted(subsets):
        subset = subsets[key]
        if not subset["ready"] and not subset["not_ready"]:
            continue
        entry: Obj = {}
        if subset["ready"]:
            entry["addresses"] = [subset["ready"][ip] for ip in sorted(subset["ready"])]
        if subset["not_ready"]:
            entry["notReadyAddresses"] = [subset["not_ready"][ip] for ip in sorted(subset["not_ready"])]
        entry["ports"] = subset["ports"]
        rendered.append(entry)
    return {"kind": "Endpoints", "apiVersion": "v1", "metadata": {"name": service, "namespace": namespace},
            "subsets": rendered}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Sidecar:
    """Watches one Service's endpoints and serves them; see the module docstring."""

    def __init__(self, client: KubeClient, namespace: str, service: str, *, source: str = "endpointslices",
                 health_grace: float = 10.0) -> None:
        self.namespace, self.service, self.source = namespace, service, source
        if source == "endpoints":
            self.informer = Informer(client, ENDPOINTS, namespace, field_selector=f"metadata.name={service}",
                                     name="endpoints")
        else:
            self.informer = Informer(client, ENDPOINTSLICES, namespace,
                                     label_selector=f"kubernetes.io/service-name={service}", name="endpointslices")
        self.informer.subscribe(self._on_event)
        self.informer.on_synced(self.render)  # after a relist, once, from the whole new list
        self.health_grace = health_grace
        self.body = b""
        self.slices_body = b""
        self.etag = ""
        self.last_updated = ""
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._first: asyncio.Task[None] | None = None

    # --- state ------------------------------------------------------------------------------------

    def _on_event(self, event: InformerEvent) -> None:
        if self.informer.synced.is_set() and not self.informer.relisting:
            self.render()

    def render(self) -> None:
        """Re-render the responses from the cache; bump ETag and wake long-polls only on change."""
        items = sorted(self.informer.cache.values(), key=lambda o: o["metadata"]["name"])
        if self.source == "endpoints":
            document = items[0] if items else {"kind": "Endpoints", "apiVersion": "v1", "metadata": {
                "name": self.service, "namespace": self.namespace}, "subsets": []}
            document = {**document, "kind": "Endpoints", "apiVersion": "v1"}
            slices: list[Obj] = []
        else:
            document = endpoints_from_slices(self.namespace, self.service, items)
            slices = items
        body = json.dumps(document, sort_keys=True).encode()
        if body == self.body:
            return
        self.body = body
        self.slices_body = json.dumps({"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                                       "items": slices}, sort_keys=True).encode()
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        self.last_updated = _now()
        self._changed.set()
        self._changed = asyncio.Event()

    def health(self) -> tuple[bool, str]:
        if not self.informer.synced.is_set():
            return False, "endpoints not synced yet"
        if self.informer.watching:
            return True, "ok"
        lost = self.informer.watch_lost_at
        if lost is not None and time.monotonic() - lost < self.health_grace:
            return True, "ok (watch reconnecting)"
        return False, "watch is down"

    # --- HTTP ---------------------------------------------------------------------------------------

    def _unavailable(self) -> web.Response:
        return web.json_response({"error": "endpoints not synced yet", "service": self.service,
                                  "namespace": self.namespace}, status=503)

    async def _endpoints(self, request: web.Request) -> web.StreamResponse:
        wait = request.query.get("wait")
        if wait is not None:
            try:
                seconds = min(MAX_WAIT, max(0.0, float(wait)))
            except ValueError:
                return web.json_response({"error": "wait must be a number of seconds"}, status=400)
            if not self.body or request.headers.get("If-None-Match") in (None, self.etag):
                changed = self._changed
                try:
                    await within(seconds, changed.wait())
                except TimeoutError:
                    pass
        if not self.body:
            return self._unavailable()
        if request.headers.get("If-None-Match") == self.etag:
            return web.Response(status=304, headers={"ETag": self.etag})
        return web.Response(body=self.body, content_type="application/json",
                            headers={"ETag": self.etag, "Cache-Control": "no-cache"})

    async def _slices(self, request: web.Request) -> web.Response:
        if not self.body:
            return self._unavailable()
        return web.Response(body=self.slices_body, content_type="application/json", headers={"ETag": self.etag})

    async def _last_updated(self, request: web.Request) -> web.Response:
        if not self.body:
            return self._unavailable()
        return web.json_response({"lastUpdated": self.last_updated})

    async def _health(self, request: web.Request) -> web.Response:
        ok, reason = self.health()
        if ok:
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "unavailable", "reason": reason}, status=503)

    def app(self) -> web.Application:
        app = web.Application()
        for path in ("/endpoints", "/endpoints/"):
            app.router.add_get(path, self._endpoints)
        app.router.add_get("/endpoints/last_updated", self._last_updated)
        app.router.add_get("/endpointslices", self._slices)
        app.router.add_get("/health", self._health)
        return app

    async def start(self, host: str, port: int) -> int:
        """Start watching and serving; returns the bound port."""
        self.informer.start()
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await start_site(site, f"{host}:{port}", "--listen-address/--listen-port")
        server: Any = site._server
        bound = int(server.sockets[0].getsockname()[1])
        self._first = asyncio.create_task(self._first_render(), name="sidecar-first-render")
        return bound

    async def _first_render(self) -> None:
        await self.informer.synced.wait()
        self.render()

    async def stop(self) -> None:
        if self._first is not None:
            self._first.cancel()
        await self.informer.stop()
        if self._runner is not None:
            await self._runner.cleanup()


def default_namespace(path: str = NAMESPACE_FILE) -> str | None:
    """The pod's own namespace, from the service-account mount."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


async def run_sidecar(kubeconfig: str | None, context: str | None, namespace: str, service: str, host: str,
                      port: int, source: str) -> int:
    client = await KubeClient.connect(kubeconfig, context, pool_size=4)
    sidecar = Sidecar(client, namespace, service, source=source)
    bound = await sidecar.start(host, port)
    log.info("sidecar serving", extra={"service": f"{namespace}/{service}", "listen": f"{host}:{bound}",
                                       "source": source})
    try:
        await until_terminated()
    finally:
        await sidecar.stop()
        await client.close()
    return 0
