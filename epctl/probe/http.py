"""httpGet with kubelet semantics, over a minimal HTTP/1.1 client: loop callbacks on a raw socket for
plain HTTP (no coroutine per probe, epctl/probe/callback.py), asyncio streams for HTTPS and for
redirects (rare: one Task each).

Semantics (k8s.io/kubernetes/pkg/probe/http): GET; 200-399 is healthy; redirects to the same
hostname are followed (at most 10, then failure); a redirect to another hostname ends the probe as
a success; the body is read up to 10 KiB; ``Connection: close``; HTTPS does not verify certificates
unless ``insecureSkipVerify: false``. A ``Host`` header in ``httpHeaders`` overrides the request's
Host. The scheme defaults to HTTP (a seed tool failed every check without one).

Why not aiohttp here (the first design note said aiohttp; docs/design.md section 10): one request
per connection with no keep-alive, no pooling, no cookies and no decoding is all a probe needs; a
bare stream client does it with a fraction of the CPU per probe, which is the budget that decides
how many thousand hosts one core can check. aiohttp remains the library for everything else HTTP in epctl.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time
from functools import lru_cache
from urllib.parse import urljoin, urlsplit

from epctl import __version__
from epctl.api.spec import HTTPProbe
from epctl.probe.callback import Done, SocketProbe, wait_for
from epctl.probe.result import ProbeResult, describe_os_error
from epctl.probe.tcp import connect, os_failure

MAX_REDIRECTS = 10
MAX_BODY = 10 * 1024
MAX_HEADER_BYTES = 64 * 1024
LATE_READS = 4  # reads of what the socket holds when the timer fires (an answer noticed late: 256 KiB)
USER_AGENT = f"epctl-probe/{__version__}"
_LINGER_RST = struct.pack("ii", 1, 0)


@lru_cache(maxsize=2)
def _tls_context(verify: bool) -> ssl.SSLContext:
    """Built once: creating an SSLContext (loading CA roots) costs milliseconds."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _authority(host: str, port: int, scheme: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    default = 443 if scheme == "HTTPS" else 80
    return shown if port == default else f"{shown}:{port}"


class _HTTPError(Exception):
    pass


def _host_header(probe: HTTPProbe) -> str | None:
    return next((v for k, v in probe.headers if k.lower() == "host"), None)


@lru_cache(maxsize=16384)
def _request(address: str, port: int, scheme: str, path: str, probe: HTTPProbe) -> bytes:
    """The request bytes (built once per check and target, not per probe)."""
    host_header = _host_header(probe)
    lines = [f"GET {path} HTTP/1.1", f"Host: {host_header or _authority(address, port, scheme)}",
             f"User-Agent: {USER_AGENT}", "Accept: */*", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in probe.headers if k.lower() not in ("host", "connection")]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _status(status_line: bytes) -> int:
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise _HTTPError("malformed HTTP response" if status_line else "connection closed without a response")
    return int(parts[1])


def _header(line: bytes) -> tuple[str, str]:
    """(lowercased name, stripped value) of one header line."""
    name, _, value = line.decode("latin-1").partition(":")
    return name.strip().lower(), value.strip()


def _verdict(address: str, scheme: str, port: int, path: str, status: int, location: str | None,
             redirects: int, start: float) -> ProbeResult | tuple[str, int, str]:
    """What one answer means: a result, or the (scheme, port, path) a same-host redirect leads to."""
    if 300 <= status < 400 and location:
        if redirects == MAX_REDIRECTS:
            return ProbeResult(False, f"stopped after {MAX_REDIRECTS} redirects", time.perf_counter() - start)
        base = f"{scheme.lower()}://{_authority(address, port, scheme)}{path}"
        nxt = urlsplit(urljoin(base, location))
        if nxt.hostname is None or nxt.hostname.lower() != address.lower():
            return ProbeResult(True, f"redirected to another host ({status})", time.perf_counter() - start)
        scheme = (nxt.scheme or scheme).upper()
        return scheme, nxt.port or (443 if scheme == "HTTPS" else 80), (nxt.path or "/") + (
            f"?{nxt.query}" if nxt.query else "")
    if 200 <= status < 400:
        return ProbeResult(True, f"HTTP {status}", time.perf_counter() - start)
    return ProbeResult(False, f"HTTP probe failed with statuscode: {status}", time.perf_counter() - start)


def _failure(err: BaseException, start: float) -> ProbeResult:
    """The result for an exception an exchange raised (never a timeout: that one is the caller's)."""
    if isinstance(err, ssl.SSLError):
        return ProbeResult(False, f"TLS error: {err.reason or err}", time.perf_counter() - start)
    if isinstance(err, OSError):
        return ProbeResult(False, describe_os_error(err), time.perf_counter() - start)
    if isinstance(err, (_HTTPError, ValueError, UnicodeError)):
        return ProbeResult(False, str(err) or "malformed HTTP response", time.perf_counter() - start)
    return ProbeResult(False, f"probe error: {type(err).__name__}", time.perf_counter() - start)


async def _exchange(address: str, port: int, scheme: str, path: str, probe: HTTPProbe) -> tuple[int, str | None]:
    """One request on a fresh connection over asyncio streams (HTTPS, redirects); returns (status
    code, Location header)."""
    host_header = _host_header(probe)
    tls = None
    server_hostname = None
    if scheme == "HTTPS":
        tls = _tls_context(verify=not probe.insecure_skip_verify)
        server_hostname = (host_header or address).rsplit(":", 1)[0] if host_header else address
    reader, writer = await asyncio.open_connection(address, port, ssl=tls, server_hostname=server_hostname,
                                                   limit=MAX_HEADER_BYTES)
    try:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        writer.write(_request(address, port, scheme, path, probe))
        status = _status(await reader.readline())
        location = None
        length: int | None = None
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, value = _header(line)
            if name == "location":
                location = value
            elif name == "content-length" and value.isdigit():
                length = int(value)
        remaining = MAX_BODY if length is None else min(length, MAX_BODY)
        while remaining > 0:
            chunk = await reader.read(remaining)
            if not chunk:
                break
            remaining -= len(chunk)
        return status, location
    finally:
        writer.transport.abort()


async def _follow(address: str, probe: HTTPProbe, timeout: float, start: float, scheme: str, port: int,
                  path: str, redirects: int) -> ProbeResult:
    """The exchanges from ``redirects`` on, over streams, within what is left of ``timeout``."""
    try:
        async with asyncio.timeout(timeout - (time.perf_counter() - start)):
            while True:
                status, location = await _exchange(address, port, scheme, path, probe)
                verdict = _verdict(address, scheme, port, path, status, location, redirects, start)
                if isinstance(verdict, ProbeResult):
                    return verdict
                scheme, port, path = verdict
                redirects += 1
    except TimeoutError:
        return ProbeResult.timeout(time.perf_counter() - start, timeout)
    except (OSError, _HTTPError, ValueError, UnicodeError) as err:
        return _failure(err, start)


class _HTTP(SocketProbe):
    """One plain-HTTP probe on loop callbacks: connect, send the request, read the status line and
    the headers, then the body (up to MAX_BODY or EOF, as the kubelet does), decide. A same-host
    redirect hands over to :func:`_follow` (a Task) with the time left."""

    __slots__ = ("address", "buf", "length", "location", "port", "pos", "probe", "remaining", "request", "status",
                 "task")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, done: Done, address: str, port: int,
                 probe: HTTPProbe) -> None:
        super().__init__(loop, timeout, done)
        self.address, self.port, self.probe = address, port, probe
        self.request = b""
        self.buf = bytearray()
        self.pos = 0  # where the next unread line starts in buf
        self.status: int | None = None
        self.location: str | None = None
        self.length: int | None = None
        self.remaining = -1  # body bytes still to read; -1 while the head is being read
        self.task: asyncio.Task[ProbeResult] | None = None

    def on_writable(self) -> None:
        assert self.sock is not None
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.finish(os_failure(self, code))
            return
        try:
            sent = self.sock.send(self.request)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self.finish(ProbeResult(False, describe_os_error(err), self.elapsed()))
            return
        self.request = self.request[sent:]
        if not self.request:
            self.stop_writing()
            self.watch_read(self.on_readable)

    def on_readable(self) -> None:
        self.read()

    def read(self) -> bool:
        """Read once and act on it; False when nothing was there to read."""
        assert self.sock is not None
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as err:
            self.finish(ProbeResult(False, describe_os_error(err), self.elapsed()))
            return True
        try:
            if not data:
                self.eof()
            else:
                self.feed(data)
        except (_HTTPError, ValueError, UnicodeError) as err:
            self.finish(_failure(err, self.start))
        return True

    def feed(self, data: bytes) -> None:
        if self.remaining >= 0:  # reading the body
            self.remaining -= len(data)
            if self.remaining <= 0:
                self.decide()
            return
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\n", self.pos)
            if end < 0:
                if len(buf) - self.pos > MAX_HEADER_BYTES:
                    raise _HTTPError("HTTP header line too long")
                if self.pos:  # lines already read are dropped: an endless head costs one line, not all of it
                    del buf[:self.pos]
                    self.pos = 0
                return
            line = bytes(buf[self.pos:end + 1])
            self.pos = end + 1
            if self.line(line):
                self.remaining = (MAX_BODY if self.length is None else min(self.length, MAX_BODY)) - (
                    len(buf) - self.pos)
                self.buf = bytearray()
                if self.remaining <= 0:
                    self.decide()
                return

    def line(self, line: bytes) -> bool:
        """One line of the head; True at the blank line that ends it."""
        if self.status is None:
            self.status = _status(line)
            return False
        if line in (b"\r\n", b"\n"):
            return True
        name, value = _header(line)
        if name == "location":
            self.location = value
        elif name == "content-length" and value.isdigit():
            self.length = int(value)
        return False

    def eof(self) -> None:
        """The server closed: what was read so far is the answer (as a stream reader's readline sees it)."""
        if self.remaining < 0:
            rest = bytes(self.buf[self.pos:])
            if self.status is None:
                self.status = _status(rest)
            elif rest:
                self.line(rest)
        self.decide()

    def decide(self) -> None:
        assert self.status is not None
        verdict = _verdict(self.address, "HTTP", self.port, self.probe.path, self.status, self.location, 0,
                           self.start)
        if isinstance(verdict, ProbeResult):
            self.finish(verdict)
            return
        self._release()  # this connection is done; the redirect is followed on streams
        scheme, port, path = verdict
        self.delegate(scheme, port, path, 1)

    def delegate(self, scheme: str, port: int, path: str, redirects: int) -> None:
        self.task = self.loop.create_task(_follow(self.address, self.probe, self.timeout, self.start, scheme,
                                                  port, path, redirects))
        self.task.add_done_callback(self._delegated)

    def _delegated(self, task: asyncio.Task[ProbeResult]) -> None:
        if task.cancelled():
            return
        err = task.exception()
        self.finish(task.result() if err is None else _failure(err, self.start))

    def on_timeout(self) -> None:
        """An answer may be waiting unread (a late loop can fire the timer before it polls the socket):
        what the socket already holds is read first."""
        self.timer = None
        for _ in range(LATE_READS):  # bounded: a server that keeps sending must not hold the loop past the deadline
            if not (self.reading and self.read()):
                break
        if self.done is not None and self.task is None:
            self.finish(ProbeResult.timeout(self.elapsed(), self.timeout))

    def cancel(self) -> None:
        super().cancel()
        if self.task is not None:
            self.task.cancel()


def start_http(loop: asyncio.AbstractEventLoop, address: str, port: int, timeout: float, probe: HTTPProbe,
               done: Done) -> SocketProbe:
    """Start one httpGet probe; ``done`` gets its result (epctl/probe/callback.py has the contract)."""
    http = _HTTP(loop, timeout, done, address, port, probe)
    if probe.scheme != "HTTP":  # TLS: on streams (the ssl module's state machine is the transport's job)
        http.delegate(probe.scheme, port, probe.path, 0)
        return http
    http.request = _request(address, port, "HTTP", probe.path, probe)
    code = connect(http, address, port)
    if code is None or code == 0:  # connected at once or not: the request goes out when writable
        http.watch_write(http.on_writable)
        http.arm()
    elif code > 0:
        http.finish(os_failure(http, code))
    return http


async def probe_http(address: str, port: int, timeout: float, probe: HTTPProbe) -> ProbeResult:
    loop = asyncio.get_running_loop()
    return await wait_for(lambda done: start_http(loop, address, port, timeout, probe, done))
