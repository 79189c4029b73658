"""One small HTTP server for ``/metrics``, ``/healthz`` and ``/readyz`` (docs/design.md section 8).

``/metrics`` is rendered in a worker thread: at scale it takes 100 ms+ and must not stall probes.
``/healthz`` fails when the event loop has not turned for ``stall_after`` seconds or a core task
died; ``/readyz`` fails until the informers have synced. Both answer with the reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from epctl.lifecycle import start_site

Check = Callable[[], tuple[bool, str]]


class HealthServer:
    def __init__(self, address: str, healthy: Check, ready: Check, stall_after: float = 10.0) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host or "0.0.0.0", int(port)
        self.healthy_check, self.ready_check = healthy, ready
        self.stall_after = stall_after
        self._beat = time.monotonic()
        self._runner: web.AppRunner | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(1.0)

    def loop_ok(self) -> tuple[bool, str]:
        lag = time.monotonic() - self._beat
        return (lag < self.stall_after, f"event loop last turned {lag:.1f}s ago")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        for check in (self.loop_ok, self.healthy_check):
            ok, reason = check()
            if not ok:
                return web.json_response({"status": "unhealthy", "reason": reason}, status=503)
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, reason = self.ready_check()
        return web.json_response({"status": "ok" if ok else "not ready", "reason": reason}, status=200 if ok else 503)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await start_site(site, f"{self.host or ''}:{self.port}", "--metrics-addr")
        if self.port == 0:
            server = site._server
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._heartbeat = asyncio.create_task(self._tick(), name="heartbeat")

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
