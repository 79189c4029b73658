"""Real local servers on 127.0.0.1 whose behaviour tests and the demo change at run time.

- :class:`TCPBackend`: ``accepting`` | ``closed`` (connection refused) | ``blackhole`` (SYNs are
  dropped because the accept queue is full, so connects hang until the prober's timeout).
- :class:`HTTPBackend`: status code, delay, redirect (same host or another host), ``hang``.
- :class:`UDPBackend`: ``echo`` | ``silent`` | ``closed`` (ICMP port unreachable).
- :class:`GRPCBackend`: grpc.health.v1 with per-service SERVING / NOT_SERVING, unknown services
  (NOT_FOUND), ``hang``.

Each is an async context manager; ``port`` is chosen by the OS unless given, and survives
``stop()``/``start()`` so a test can take a backend down and bring it back at the same address.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

HOST = "127.0.0.1"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class TCPBackend:
    def __init__(self, port: int = 0, mode: str = "accepting", host: str = HOST) -> None:
        """``host`` lets several backends share one port on different loopback addresses (the way
        discovered VMs share their Service's targetPort)."""
        self.host = host
        self.port = port or free_port()
        self.mode = mode
        self._server: asyncio.Server | None = None
        self._blackhole: list[socket.socket] = []

    async def start(self) -> TCPBackend:
        await self.set_mode(self.mode)
        return self

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for sock in self._blackhole:
            sock.close()
        self._blackhole = []

    async def set_mode(self, mode: str) -> None:
        await self._close()
        self.mode = mode
        if mode == "accepting":
            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                writer.close()

            self._server = await asyncio.start_server(handle, self.host, self.port, reuse_address=True,
                                                      backlog=4096)
        elif mode == "blackhole":
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(0)
            self._blackhole.append(listener)
            for _ in range(3):  # fill the accept queue; later SYNs are dropped
                filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                filler.setblocking(False)
                try:
                    filler.connect((self.host, self.port))
                except BlockingIOError:
                    pass
                self._blackhole.append(filler)
        elif mode != "closed":
            raise ValueError(f"unknown TCP backend mode {mode!r}")

    async def stop(self) -> None:
        await self._close()

    async def __aenter__(self) -> TCPBackend:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class HTTPBackend:
    def __init__(self, port: int = 0, status: int = 200, delay: float = 0.0) -> None:
        self.port = port or free_port()
        self.status = status
        self.delay = delay
        self.redirect: str | None = None
        self.hang = False
        self.requests: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({"path": request.path_qs, "headers": dict(request.headers)})
        if self.hang:
            await asyncio.Event().wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.redirect and request.path != self.redirect.split("?")[0]:
            return web.Response(status=302, headers={"Location": self.redirect})
        return web.Response(status=self.status, text=f"status {self.status}\n")

    async def start(self) -> HTTPBackend:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port, reuse_address=True, backlog=4096).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> HTTPBackend:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, backend: UDPBackend) -> None:
        self.backend = backend
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.backend.closed.set()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.backend.received.append(data)
        if self.backend.mode == "echo" and self.transport is not None:
            self.transport.sendto(data or b"pong", addr)


class UDPBackend:
    def __init__(self, port: int = 0, mode: str = "echo") -> None:
        self.port = port or free_port(socket.SOCK_DGRAM)
        self.mode = mode
        self.received: list[bytes] = []
        self.closed = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None

    async def set_mode(self, mode: str) -> None:
        if mode not in ("echo", "silent", "closed"):
            raise ValueError(f"unknown UDP backend mode {mode!r}")
        self.mode = mode
        if mode == "closed":
            await self.stop()
        elif self._transport is None:
            self.closed.clear()
            loop = asyncio.get_running_loop()
            self._transport, _ = await loop.create_datagram_endpoint(lambda: _UDPProtocol(self),
                                                                     local_addr=(HOST, self.port))

    async def start(self) -> UDPBackend:
        await self.set_mode(self.mode)
        return self

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()  # asyncio closes the socket on a later loop iteration:
            self._transport = None
            await self.closed.wait()  # wait for it, so the port is really closed on return

    async def __aenter__(self) -> UDPBackend:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _Health(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self, backend: GRPCBackend) -> None:
        self.backend = backend

    async def Check(self, request: Any, context: Any) -> Any:
        self.backend.checks += 1
        if self.backend.hang:
            await asyncio.Event().wait()
        status = self.backend.statuses.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=status)


class GRPCBackend:
    """``statuses`` maps service name ("" = whole server) to a HealthCheckResponse status."""

    SERVING = health_pb2.HealthCheckResponse.SERVING
    NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self.statuses: dict[str, int] = {"": self.SERVING}
        self.hang = False
        self.checks = 0
        self._server: grpc.aio.Server | None = None

    def set_status(self, status: int, service: str = "") -> None:
        self.statuses[service] = status

    async def start(self) -> GRPCBackend:
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(_Health(self), self._server)
        self._server.add_insecure_port(f"{HOST}:{self.port}")
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    async def __aenter__(self) -> GRPCBackend:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
