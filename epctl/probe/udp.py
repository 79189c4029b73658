"""udpSocket: send a datagram; healthy when any reply arrives within the timeout.

The socket is ``connect()``ed, so an ICMP port-unreachable from the host surfaces as
ConnectionRefusedError on receive and the probe fails fast instead of waiting out the timeout.
Silence is a failure at the timeout: never an unbounded wait.
"""

from __future__ import annotations

import asyncio
import socket
import time

from epctl.probe.result import ProbeResult, describe_os_error
from epctl.probe.tcp import family_of


async def probe_udp(address: str, port: int, timeout: float, data: bytes = b"") -> ProbeResult:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    sock = socket.socket(family_of(address), socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (address, port))
            sock.send(data)
            await loop.sock_recv(sock, 65535)
        return ProbeResult(True, "reply received", time.perf_counter() - start)
    except TimeoutError:
        return ProbeResult.timeout(time.perf_counter() - start, timeout, f"no reply within {timeout:g}s")
    except OSError as err:
        return ProbeResult(False, describe_os_error(err), time.perf_counter() - start)
    finally:
        sock.close()
