"""udpSocket: send a datagram; healthy when any reply arrives within the timeout.

The socket is ``connect()``ed, so an ICMP port-unreachable from the host surfaces as
ConnectionRefusedError on receive and the probe fails fast instead of waiting out the timeout.
Silence is a failure at the timeout: never an unbounded wait. Driven by loop callbacks, no
coroutine per probe (epctl/probe/callback.py).
"""

from __future__ import annotations

import asyncio
import socket

from epctl.probe.callback import Done, SocketProbe, family_of, ip_literal, wait_for
from epctl.probe.result import ProbeResult, describe_os_error


class _UDP(SocketProbe):
    __slots__ = ()

    def on_readable(self) -> None:
        assert self.sock is not None
        try:
            self.sock.recv(65535)
        except (BlockingIOError, InterruptedError):
            return  # spurious wake-up: keep waiting
        except OSError as err:
            self.finish(ProbeResult(False, describe_os_error(err), self.elapsed()))
            return
        self.finish(ProbeResult(True, "reply received", self.elapsed()))

    def on_timeout(self) -> None:
        """A reply may be waiting unread: a loop that ran late can fire the timer before it looks at the
        socket (uvloop runs due timers before polling). Asked once more, it is an answer like any other."""
        self.timer = None
        assert self.sock is not None
        try:
            self.sock.recv(65535)
        except (BlockingIOError, InterruptedError):
            self.finish(ProbeResult.timeout(self.elapsed(), self.timeout, f"no reply within {self.timeout:g}s"))
        except OSError as err:
            self.finish(ProbeResult(False, describe_os_error(err), self.elapsed()))
        else:
            self.finish(ProbeResult(True, "reply received (seen late)", self.elapsed()))


def start_udp(loop: asyncio.AbstractEventLoop, address: str, port: int, timeout: float, data: bytes,
              done: Done) -> SocketProbe:
    """Start one UDP probe; ``done`` gets its result (epctl/probe/callback.py has the contract)."""
    probe = _UDP(loop, timeout, done)
    if not ip_literal(address):
        probe.finish(ProbeResult(False, "not an IP address", probe.elapsed()))
        return probe
    try:
        sock = socket.socket(family_of(address), socket.SOCK_DGRAM)
        probe.sock, probe.fd = sock, sock.fileno()
        sock.setblocking(False)
        sock.connect((address, port))  # UDP: no handshake, returns at once
        sock.send(data)
    except (OSError, OverflowError, ValueError) as err:
        probe.finish(ProbeResult(False, describe_os_error(err) if isinstance(err, OSError) else str(err),
                                 probe.elapsed()))
        return probe
    probe.watch_read(probe.on_readable)
    probe.arm()
    return probe


async def probe_udp(address: str, port: int, timeout: float, data: bytes = b"") -> ProbeResult:
    loop = asyncio.get_running_loop()
    return await wait_for(lambda done: start_udp(loop, address, port, timeout, data, done))
