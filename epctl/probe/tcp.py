"""tcpSocket: healthy when the host accepts a TCP connection.

A bare non-blocking socket, ``connect_ex`` and one ``add_writer`` (no transport, no stream objects,
no coroutine: epctl/probe/callback.py) keeps a probe to a few microseconds of CPU. ``SO_LINGER
{on, 0}`` makes close() send RST instead of FIN, so thousands of probes a second leave no TIME_WAIT
sockets behind on this side.

When the timeout fires, the socket is asked whether the handshake did complete: on a saturated
event loop the answer can arrive in time but be noticed late, and that must not count as a failed
probe (false failures would flap healthy hosts exactly when the controller is busiest).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct

from epctl.probe.callback import Done, SocketProbe, family_of, ip_literal, wait_for
from epctl.probe.result import ProbeResult, describe_os_error

__all__ = ["family_of", "probe_tcp", "start_tcp"]

_LINGER_RST = struct.pack("ii", 1, 0)
_PENDING = (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY)


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


def connect(probe: SocketProbe, address: str, port: int) -> int | None:
    """Open ``probe``'s TCP socket (RST on close) and start connecting. Returns the errno of an
    immediate outcome (0: connected at once), or None while the handshake is pending; reports a
    failure to open the socket through ``probe.finish`` and returns -1."""
    if not ip_literal(address):
        probe.finish(ProbeResult(False, "not an IP address", probe.elapsed()))
        return -1
    try:
        sock = socket.socket(family_of(address), socket.SOCK_STREAM)
        probe.sock, probe.fd = sock, sock.fileno()
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        code = sock.connect_ex((address, port))
    except (OSError, OverflowError, ValueError) as err:  # e.g. a port out of range
        probe.finish(ProbeResult(False, describe_os_error(err) if isinstance(err, OSError) else str(err),
                                 probe.elapsed()))
        return -1
    return None if code in _PENDING else code


def os_failure(probe: SocketProbe, code: int) -> ProbeResult:
    """The failed result for a connect's errno (OSError maps it to its subclass, e.g. refused)."""
    return ProbeResult(False, describe_os_error(OSError(code, os.strerror(code))), probe.elapsed())


class _TCP(SocketProbe):
    __slots__ = ()

    def on_writable(self) -> None:
        assert self.sock is not None
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.finish(ProbeResult(True, "connected", self.elapsed()) if code == 0 else os_failure(self, code))

    def on_timeout(self) -> None:
        self.timer = None
        if self.sock is not None and _connected(self.sock):
            # the handshake finished; only this (overloaded) event loop was late to see it
            self.finish(ProbeResult(True, "connected (seen late)", self.elapsed()))
        else:
            self.finish(ProbeResult.timeout(self.elapsed(), self.timeout))


def start_tcp(loop: asyncio.AbstractEventLoop, address: str, port: int, timeout: float, done: Done) -> SocketProbe:
    """Start one TCP probe; ``done`` gets its result (epctl/probe/callback.py has the contract)."""
    probe = _TCP(loop, timeout, done)
    code = connect(probe, address, port)
    if code is None:
        probe.watch_write(probe.on_writable)
        probe.arm()
    elif code == 0:
        probe.finish(ProbeResult(True, "connected", probe.elapsed()))
    elif code > 0:
        probe.finish(os_failure(probe, code))
    return probe


async def probe_tcp(address: str, port: int, timeout: float) -> ProbeResult:
    loop = asyncio.get_running_loop()
    return await wait_for(lambda done: start_tcp(loop, address, port, timeout, done))
