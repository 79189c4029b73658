"""httpGet with kubelet semantics, over a minimal HTTP/1.1 client on asyncio streams.

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
from epctl.probe.result import ProbeResult, describe_os_error

MAX_REDIRECTS = 10
MAX_BODY = 10 * 1024
MAX_HEADER_BYTES = 64 * 1024
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


async def _exchange(address: str, port: int, scheme: str, path: str, probe: HTTPProbe) -> tuple[int, str | None]:
    """One request on a fresh connection; returns (status code, Location header)."""
    host_header = next((v for k, v in probe.headers if k.lower() == "host"), None)
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
        lines = [f"GET {path} HTTP/1.1", f"Host: {host_header or _authority(address, port, scheme)}",
                 f"User-Agent: {USER_AGENT}", "Accept: */*", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in probe.headers if k.lower() not in ("host", "connection")]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        status_line = await reader.readline()
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise _HTTPError("malformed HTTP response" if status_line else "connection closed without a response")
        status = int(parts[1])
        location = None
        length: int | None = None
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            lowered = name.strip().lower()
            if lowered == "location":
                location = value.strip()
            elif lowered == "content-length" and value.strip().isdigit():
                length = int(value.strip())
        remaining = MAX_BODY if length is None else min(length, MAX_BODY)
        while remaining > 0:
            chunk = await reader.read(remaining)
            if not chunk:
                break
            remaining -= len(chunk)
        return status, location
    finally:
        writer.transport.abort()


async def probe_http(address: str, port: int, timeout: float, probe: HTTPProbe) -> ProbeResult:
    start = time.perf_counter()
    scheme, target_port, path = probe.scheme, port, probe.path
    try:
        async with asyncio.timeout(timeout):
            for redirects in range(MAX_REDIRECTS + 1):
                status, location = await _exchange(address, target_port, scheme, path, probe)
                if 300 <= status < 400 and location:
                    if redirects == MAX_REDIRECTS:
                        return ProbeResult(False, f"stopped after {MAX_REDIRECTS} redirects",
                                           time.perf_counter() - start)
                    base = f"{scheme.lower()}://{_authority(address, target_port, scheme)}{path}"
                    nxt = urlsplit(urljoin(base, location))
                    if nxt.hostname is None or nxt.hostname.lower() != address.lower():
                        return ProbeResult(True, f"redirected to another host ({status})",
                                           time.perf_counter() - start)
                    scheme = (nxt.scheme or scheme).upper()
                    target_port = nxt.port or (443 if scheme == "HTTPS" else 80)
                    path = (nxt.path or "/") + (f"?{nxt.query}" if nxt.query else "")
                    continue
                if 200 <= status < 400:
                    return ProbeResult(True, f"HTTP {status}", time.perf_counter() - start)
                return ProbeResult(False, f"HTTP probe failed with statuscode: {status}", time.perf_counter() - start)
    except TimeoutError:
        return ProbeResult.timeout(time.perf_counter() - start, timeout)
    except ssl.SSLError as err:
        return ProbeResult(False, f"TLS error: {err.reason or err}", time.perf_counter() - start)
    except OSError as err:
        return ProbeResult(False, describe_os_error(err), time.perf_counter() - start)
    except (_HTTPError, ValueError, UnicodeError) as err:
        return ProbeResult(False, str(err) or "malformed HTTP response", time.perf_counter() - start)
    return ProbeResult(False, "unreachable", time.perf_counter() - start)  # pragma: no cover
