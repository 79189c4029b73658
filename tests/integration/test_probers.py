"""Every prober semantic, against real local servers; no prober may raise, overrun or leak."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import pytest

from epctl.api.spec import GRPCProbe, HTTPProbe
from epctl.probe.grpc import GRPCProber
from epctl.probe.http import probe_http
from epctl.probe.tcp import probe_tcp
from epctl.probe.udp import probe_udp
from epctl.testing.backends import HOST, GRPCBackend, HTTPBackend, TCPBackend, UDPBackend, free_port

SLACK = 0.25  # allowed overrun of a timeout on a loaded 2-core machine


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_tcp_accepting_refused_and_blackhole_timeout() -> None:
    async with TCPBackend() as backend:
        result = await probe_tcp(HOST, backend.port, 1.0)
        assert result.ok and result.reason == "connected"
        await backend.set_mode("closed")
        result = await probe_tcp(HOST, backend.port, 1.0)
        assert not result.ok and result.reason == "connection refused"
        await backend.set_mode("blackhole")
        start = time.perf_counter()
        result = await probe_tcp(HOST, backend.port, 0.3)
        elapsed = time.perf_counter() - start
        assert not result.ok and result.reason == "timeout after 0.3s"
        assert 0.3 <= elapsed < 0.3 + SLACK


async def test_tcp_probes_leak_no_file_descriptors() -> None:
    async with TCPBackend() as backend:
        await probe_tcp(HOST, backend.port, 1.0)
        before = open_fds()
        results = await asyncio.gather(*(probe_tcp(HOST, backend.port, 1.0) for _ in range(200)))
        assert all(r.ok for r in results)
        await backend.set_mode("closed")
        await asyncio.gather(*(probe_tcp(HOST, backend.port, 1.0) for _ in range(50)))
        assert open_fds() <= before


async def test_http_status_codes_scheme_default_and_headers() -> None:
    async with HTTPBackend() as backend:
        probe = HTTPProbe(path="/healthz", headers=(("Host", "db.example"), ("X-Probe", "1")))
        result = await probe_http(HOST, backend.port, 1.0, probe)
        assert result.ok and result.reason == "HTTP 200"
        sent = backend.requests[-1]
        assert sent["path"] == "/healthz"
        assert sent["headers"]["Host"] == "db.example" and sent["headers"]["X-Probe"] == "1"
        assert sent["headers"]["User-Agent"].startswith("epctl-probe/")
        assert sent["headers"]["Connection"] == "close"
        for status, ok in ((204, True), (302, True), (399, True), (400, False), (503, False)):
            backend.status = status
            result = await probe_http(HOST, backend.port, 1.0, HTTPProbe())
            assert result.ok is ok, status
        assert result.reason == "HTTP probe failed with statuscode: 503"


async def test_http_redirects_same_host_followed_other_host_success_and_loop_fails() -> None:
    async with HTTPBackend() as target, HTTPBackend() as origin:
        origin.redirect = f"http://{HOST}:{target.port}/final"
        target.status = 500
        result = await probe_http(HOST, origin.port, 1.0, HTTPProbe(path="/start"))
        assert not result.ok and "statuscode: 500" in result.reason  # same host (other port): followed
        assert target.requests[-1]["path"] == "/final"
        origin.redirect = "http://elsewhere.example/"
        result = await probe_http(HOST, origin.port, 1.0, HTTPProbe(path="/start"))
        assert result.ok and "another host" in result.reason
        origin.redirect = None
        origin.status = 301  # a 3xx without Location is a final answer, and 3xx is healthy
        result = await probe_http(HOST, origin.port, 1.0, HTTPProbe())
        assert result.ok and result.reason == "HTTP 301"


async def test_http_too_many_redirects_fails() -> None:
    from aiohttp import web

    hops = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal hops
        hops += 1
        return web.Response(status=302, headers={"Location": f"/hop{hops}"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    try:
        result = await probe_http(HOST, port, 2.0, HTTPProbe())
        assert not result.ok and result.reason == "stopped after 10 redirects"
        assert hops == 11
    finally:
        await runner.cleanup()


async def test_http_timeout_and_refused_and_https_without_verification() -> None:
    async with HTTPBackend() as backend:
        backend.hang = True
        start = time.perf_counter()
        result = await probe_http(HOST, backend.port, 0.3, HTTPProbe())
        assert not result.ok and result.reason == "timeout after 0.3s"
        assert time.perf_counter() - start < 0.3 + SLACK
    result = await probe_http(HOST, free_port(), 1.0, HTTPProbe())
    assert not result.ok and result.reason == "connection refused"
    from epctl.testing.kubeapi import KubeAPIServer  # a handy self-signed HTTPS server

    async with KubeAPIServer() as api:
        result = await probe_http(HOST, api.port, 1.0, HTTPProbe(path="/healthz", scheme="HTTPS"))
        assert result.ok, result.reason
        verified = await probe_http(HOST, api.port, 1.0,
                                    HTTPProbe(path="/healthz", scheme="HTTPS", insecure_skip_verify=False))
        assert not verified.ok and verified.reason.startswith("TLS error")


async def test_udp_echo_silent_and_closed_port_fails_fast() -> None:
    async with UDPBackend() as backend:
        result = await probe_udp(HOST, backend.port, 1.0, b"ping")
        assert result.ok and backend.received[-1] == b"ping"
        await backend.set_mode("silent")
        start = time.perf_counter()
        result = await probe_udp(HOST, backend.port, 0.3, b"ping")
        assert not result.ok and result.reason == "no reply within 0.3s"
        assert 0.3 <= time.perf_counter() - start < 0.3 + SLACK
        await backend.set_mode("closed")
        start = time.perf_counter()
        result = await probe_udp(HOST, backend.port, 2.0, b"")
        assert not result.ok and result.reason == "connection refused"
        assert time.perf_counter() - start < 0.5  # ICMP unreachable: no waiting for the timeout


@pytest.mark.parametrize("fresh", [False, True])
async def test_grpc_serving_not_serving_unknown_service_hang_and_down(fresh: bool) -> None:
    prober = GRPCProber(fresh_connection=fresh)
    try:
        async with GRPCBackend() as backend:
            result = await prober.probe(HOST, backend.port, 1.0, GRPCProbe())
            assert result.ok and result.reason == "SERVING"
            backend.set_status(GRPCBackend.NOT_SERVING)
            result = await prober.probe(HOST, backend.port, 1.0, GRPCProbe())
            assert not result.ok and result.reason == "health status NOT_SERVING"
            result = await prober.probe(HOST, backend.port, 1.0, GRPCProbe(service="db"))
            assert not result.ok and result.reason == "unknown service 'db'"
            backend.set_status(GRPCBackend.SERVING, "db")
            assert (await prober.probe(HOST, backend.port, 1.0, GRPCProbe(service="db"))).ok
            backend.hang = True
            start = time.perf_counter()
            result = await prober.probe(HOST, backend.port, 0.3, GRPCProbe())
            assert not result.ok and result.reason == "timeout after 0.3s"
            assert time.perf_counter() - start < 0.3 + SLACK
            backend.hang = False
        result = await prober.probe(HOST, backend.port, 0.5, GRPCProbe())  # server stopped
        assert not result.ok
        async with GRPCBackend(port=backend.port):  # back at the same address: seen again
            start = time.perf_counter()
            while not (await prober.probe(HOST, backend.port, 0.5, GRPCProbe())).ok:
                assert time.perf_counter() - start < 5, "recovered server not seen"
                await asyncio.sleep(0.1)
    finally:
        await prober.close()


async def test_probers_never_raise_on_garbage_input() -> None:
    assert not (await probe_tcp("256.1.1.1", 80, 0.2)).ok
    assert not (await probe_udp("not-an-ip", 80, 0.2)).ok
    assert not (await probe_http("::1", 1, 0.2, HTTPProbe())).ok


def test_a_completed_handshake_counts_even_when_the_timeout_fired_first() -> None:
    """On a saturated loop the timeout can fire before the completed connect is noticed; the prober
    then asks the socket itself (on loopback the race cannot be staged, so the check is tested here)."""
    import socket

    from epctl.probe.tcp import _connected

    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(1)
    connected, fresh = socket.socket(), socket.socket()
    try:
        connected.connect(listener.getsockname())
        assert _connected(connected)
        assert not _connected(fresh)
    finally:
        for sock in (listener, connected, fresh):
            sock.close()


async def _every_path_once_many_times() -> None:
    """Many TCP, HTTP and UDP probes at once down every path (answered, refused, blackholed, silent, hung,
    cancelled): each ends within its timeout, and the fd count is back where it started."""
    async with TCPBackend() as accepting, TCPBackend(mode="blackhole") as blackhole, HTTPBackend() as web, \
            HTTPBackend() as hung, UDPBackend() as echo, UDPBackend(mode="silent") as silent:
        hung.hang = True
        refused = free_port()
        await probe_tcp(HOST, accepting.port, 1.0)  # warm up whatever the loop allocates once
        await probe_http(HOST, web.port, 1.0, HTTPProbe())
        before = open_fds()

        async def timed(coro: Any) -> tuple[Any, float]:
            start = time.perf_counter()
            result = await coro
            return result, time.perf_counter() - start

        groups = {
            "tcp ok": [probe_tcp(HOST, accepting.port, 1.0) for _ in range(150)],
            "tcp refused": [probe_tcp(HOST, refused, 1.0) for _ in range(50)],
            "tcp blackhole": [probe_tcp(HOST, blackhole.port, 0.3) for _ in range(30)],
            "http ok": [probe_http(HOST, web.port, 1.0, HTTPProbe()) for _ in range(50)],
            "http refused": [probe_http(HOST, refused, 1.0, HTTPProbe()) for _ in range(30)],
            "http blackhole": [probe_http(HOST, blackhole.port, 0.3, HTTPProbe()) for _ in range(20)],
            "http hung": [probe_http(HOST, hung.port, 0.3, HTTPProbe()) for _ in range(10)],
            "udp ok": [probe_udp(HOST, echo.port, 1.0, b"ping") for _ in range(100)],
            "udp silent": [probe_udp(HOST, silent.port, 0.3, b"ping") for _ in range(30)],
            "udp refused": [probe_udp(HOST, free_port(socket.SOCK_DGRAM), 1.0, b"ping") for _ in range(30)],
        }
        cancelled = [asyncio.ensure_future(probe_tcp(HOST, blackhole.port, 5.0)) for _ in range(20)]
        cancelled += [asyncio.ensure_future(probe_udp(HOST, silent.port, 5.0)) for _ in range(20)]
        names = [name for name, coros in groups.items() for _ in coros]
        outcomes = await asyncio.gather(*(timed(c) for coros in groups.values() for c in coros))
        for task in cancelled:
            task.cancel()
        await asyncio.gather(*cancelled, return_exceptions=True)
        assert all(task.cancelled() for task in cancelled)
        for name, (result, elapsed) in zip(names, outcomes, strict=True):
            expect_ok = name.endswith(" ok")
            assert result.ok is expect_ok, (name, result)
            if name.endswith(("blackhole", "silent", "hung")):
                # uvloop's timers have millisecond resolution: one may fire a fraction of a millisecond early
                assert result.timed_out and 0.298 <= elapsed < 0.3 + SLACK, (name, result, elapsed)
            elif name.endswith("refused"):
                assert result.reason == "connection refused", (name, result)
        assert open_fds() <= before, "a probe left a file descriptor open"


@pytest.mark.parametrize("runner", ["asyncio", "uvloop"])
def test_callback_probers_end_in_time_and_leak_no_fds_on_either_loop(runner: str) -> None:
    import uvloop

    (uvloop.run if runner == "uvloop" else asyncio.run)(_every_path_once_many_times())


async def test_http_probe_memory_stays_bounded_while_a_server_streams_endless_header_lines() -> None:
    """A server that answers with a status line and then header line after header line (each short,
    none ending the head) must not make the prober hold everything it sent: the stream prober kept one
    line at a time (a 64 KiB reader limit), and the kubelet's Go client gives up at 10 MB of headers.
    The callback prober appended every byte of the head to one buffer until the head ended."""
    import tracemalloc

    total = 32 * 1024 * 1024
    line = b"X-Pad: " + b"a" * 57 + b"\r\n"  # 66 bytes, well under any per-line limit
    chunk = line * (65536 // len(line))
    sent = asyncio.Event()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\n")
            written = 0
            while written < total:
                writer.write(chunk)
                written += len(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            sent.set()
            writer.close()

    server = await asyncio.start_server(flood, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = await probe_http(HOST, port, 30.0, HTTPProbe())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        server.close()
        await server.wait_closed()
    assert sent.is_set(), result  # the probe took (or refused) the whole flood before it ended
    assert peak < 8 * 1024 * 1024, f"the prober held {peak / 2**20:.1f} MiB for {total / 2**20:.0f} MiB of header lines"


_FLOOD_SERVER = r"""
import socket, sys, time
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
conn.recv(65536)
conn.sendall(b"HTTP/1.1 200 OK\r\n")
chunk = b"X-Pad: " + b"a" * 57 + b"\r\n"
chunk *= (1 << 20) // len(chunk)
deadline = time.monotonic() + 15.0  # bounded: the test fails long before
try:
    while time.monotonic() < deadline:
        conn.sendall(chunk)
except OSError:
    pass  # the prober closed (RST): done
conn.close()
"""


async def test_http_probe_ends_at_its_timeout_while_a_server_floods_header_lines() -> None:
    """Each probe ends within its timeout: when the timer fires, the callback prober reads what the
    socket holds first, but a server that keeps sending (an endless head, faster than a probe parses
    it) must not keep it reading past its deadline (the event loop is blocked meanwhile)."""
    import sys

    server = await asyncio.create_subprocess_exec(sys.executable, "-c", _FLOOD_SERVER,
                                                  stdout=asyncio.subprocess.PIPE)
    try:
        assert server.stdout is not None
        port = int((await asyncio.wait_for(server.stdout.readline(), 30.0)).decode())
        start = time.perf_counter()
        result = await probe_http(HOST, port, 0.5, HTTPProbe())
        elapsed = time.perf_counter() - start
    finally:
        if server.returncode is None:
            server.kill()
        await server.wait()
    assert not result.ok and result.timed_out, result
    assert elapsed < 0.5 + SLACK, f"a 0.5 s probe took {elapsed:.2f} s"
