"""grpc: the standard ``grpc.health.v1.Health/Check``; only SERVING is healthy.

One channel is kept per (address, port, TLS) target and reused across periods: a channel
reconnects by itself (backoff capped at 1 s here, so a recovered host is seen at its next period)
and saves a TCP + HTTP/2 handshake per probe. ``fresh_connection=True`` opens a new channel per
probe, as the kubelet does (a local subchannel pool, so nothing is shared). The service name
defaults to "" (the whole server); a missing field never crashes the prober.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epctl.api.spec import GRPCProbe
from epctl.probe.result import ProbeResult

_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.enable_retries", 0),
    ("grpc.enable_http_proxy", 0),
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
_SERVING = health_pb2.HealthCheckResponse.SERVING
_STATUS_NAMES = {v: k for k, v in health_pb2.HealthCheckResponse.ServingStatus.items()}


def _target(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class GRPCProber:
    """Probes gRPC health endpoints; owns the channels it keeps (close with :meth:`close`)."""

    def __init__(self, fresh_connection: bool = False) -> None:
        self.fresh_connection = fresh_connection
        self._channels: dict[tuple[str, int, bool], grpc.aio.Channel] = {}

    def _open(self, address: str, port: int, probe: GRPCProbe) -> grpc.aio.Channel:
        if probe.tls:
            return grpc.aio.secure_channel(_target(address, port), grpc.ssl_channel_credentials(), options=_OPTIONS)
        return grpc.aio.insecure_channel(_target(address, port), options=_OPTIONS)

    async def probe(self, address: str, port: int, timeout: float, probe: GRPCProbe) -> ProbeResult:
        start = time.perf_counter()
        key = (address, port, probe.tls)
        if self.fresh_connection:
            channel = self._open(address, port, probe)
        else:
            channel = self._channels.get(key) or self._channels.setdefault(key, self._open(address, port, probe))
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            async with asyncio.timeout(timeout + 0.05):
                response = await stub.Check(health_pb2.HealthCheckRequest(service=probe.service or ""),
                                            timeout=timeout)
            if response.status == _SERVING:
                return ProbeResult(True, "SERVING", time.perf_counter() - start)
            status = _STATUS_NAMES.get(response.status, str(response.status))
            return ProbeResult(False, f"health status {status}", time.perf_counter() - start)
        except TimeoutError:
            return ProbeResult.timeout(time.perf_counter() - start, timeout)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return ProbeResult.timeout(time.perf_counter() - start, timeout)
            return ProbeResult(False, _describe(err, probe, timeout), time.perf_counter() - start)
        finally:
            if self.fresh_connection:
                await channel.close()

    async def forget(self, address: str, port: int) -> None:
        """Close the kept channel(s) of a target that is no longer checked."""
        for key in [k for k in self._channels if k[0] == address and k[1] == port]:
            await self._channels.pop(key).close()

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


def _describe(err: grpc.aio.AioRpcError, probe: GRPCProbe, timeout: float) -> str:
    code = err.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"timeout after {timeout:g}s"
    if code == grpc.StatusCode.NOT_FOUND:
        return f"unknown service {probe.service!r}"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return "server does not implement grpc.health.v1"
    if code == grpc.StatusCode.UNAVAILABLE:
        details = (err.details() or "").lower()
        return "connection refused" if "refused" in details else "unavailable"
    return f"rpc error: {code.name.lower()}"
