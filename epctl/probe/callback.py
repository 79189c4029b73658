"""The machinery the TCP, HTTP and UDP probers share: one probe is a socket, an fd watcher and one timer
handle, driven by event-loop callbacks; no coroutine, no Task, no Future per probe.

Why (docs/design.md section 10, "cost per probe"): at thousands of probes a second a Task per probe
(its coroutine frame, its wake-ups through the loop, the ``asyncio.timeout`` context) cost a quarter
of the saturated throughput against a bare raw-socket loop. A probe started with ``start_*`` costs
one object, one ``add_writer``/``add_reader`` and one ``call_at``.

The contract every ``start_*`` keeps:

- ``done`` is called exactly once with the :class:`ProbeResult` (never an exception), from a loop
  callback or synchronously from ``start_*`` itself when the answer is known at once (refused on
  the spot, a bad address); it is never called after :meth:`SocketProbe.cancel`.
- the probe enforces its own timeout with one timer handle (``loop.call_at``), cancelled on
  completion; every path removes the fd watchers and closes the socket (no fd leaks, tested).
- the address is an IP literal (callers resolve names first, epctl/probe/resolve.py): anything
  else fails at once rather than blocking the loop in a DNS lookup inside ``connect``.

Works on the default asyncio loop and on uvloop alike (both implement ``add_reader``/``add_writer``
on file descriptors).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from epctl.probe.result import ProbeResult

Done = Callable[[ProbeResult], None]


def family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def ip_literal(address: str) -> bool:
    try:
        socket.inet_pton(family_of(address), address)
    except (OSError, ValueError):
        return False
    return True


class SocketProbe:
    """One probe in flight on one socket. Subclasses drive the protocol from the fd callbacks and end
    with :meth:`finish`; :meth:`on_timeout` is the timer's callback."""

    __slots__ = ("done", "fd", "loop", "reading", "sock", "start", "timeout", "timer", "writing")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, done: Done) -> None:
        self.loop = loop
        self.done: Done | None = done
        self.timeout = timeout
        self.start = time.perf_counter()
        self.sock: socket.socket | None = None
        self.fd = -1
        self.timer: asyncio.TimerHandle | None = None
        self.reading = False
        self.writing = False

    def arm(self) -> None:
        """Start the timeout: one timer handle, cancelled by :meth:`finish`."""
        self.timer = self.loop.call_at(self.loop.time() + self.timeout, self.on_timeout)

    def watch_write(self, callback: Callable[[], None]) -> None:
        self.loop.add_writer(self.fd, callback)
        self.writing = True

    def watch_read(self, callback: Callable[[], None]) -> None:
        self.loop.add_reader(self.fd, callback)
        self.reading = True

    def stop_writing(self) -> None:
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.fd)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def on_timeout(self) -> None:  # pragma: no cover - every subclass overrides it
        self.finish(ProbeResult.timeout(self.elapsed(), self.timeout))

    def _release(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.fd)
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.fd)
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def finish(self, result: ProbeResult) -> None:
        """Release everything, then report ``result`` (once)."""
        self._release()
        done, self.done = self.done, None
        if done is not None:
            done(result)

    def cancel(self) -> None:
        """Abandon the probe: release everything, report nothing."""
        self.done = None
        self._release()


async def wait_for(start: Callable[[Done], SocketProbe | None]) -> ProbeResult:
    """Await a callback probe (the coroutine API ``epctl check`` and the tests use): ``start(done)``
    starts it; cancelling the awaiting task cancels the probe and closes its socket."""
    future: asyncio.Future[ProbeResult] = asyncio.get_running_loop().create_future()

    def done(result: ProbeResult) -> None:
        if not future.done():
            future.set_result(result)

    probe = start(done)
    try:
        return await future
    finally:
        if probe is not None:
            probe.cancel()  # a no-op once finished; after a cancellation it closes the socket
