"""tcpSocket: healthy when the host accepts a TCP connection.

A bare non-blocking socket and ``loop.sock_connect`` (no transport, no stream objects) keeps a probe
to a few microseconds of CPU. ``SO_LINGER {on, 0}`` makes close() send RST instead of FIN, so
thousands of probes a second leave no TIME_WAIT sockets behind on this side.

When the timeout fires, the socket is asked whether the handshake did complete: on a saturated
event loop the answer can arrive in time but be noticed late, and that must not count as a failed
probe (false failures would flap healthy hosts exactly when the controller is busiest).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

from epctl.probe.result import ProbeResult, describe_os_error

_LINGER_RST = struct.pack("ii", 1, 0)


def family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


async def probe_tcp(address: str, port: int, timeout: float) -> ProbeResult:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    sock = socket.socket(family_of(address), socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (address, port))
        return ProbeResult(True, "connected", time.perf_counter() - start)
    except TimeoutError:
        if _connected(sock):  # the handshake finished; only this (overloaded) event loop was late to see it
            return ProbeResult(True, "connected (seen late)", time.perf_counter() - start)
        return ProbeResult.timeout(time.perf_counter() - start, timeout)
    except OSError as err:
        return ProbeResult(False, describe_os_error(err), time.perf_counter() - start)
    finally:
        sock.close()
