"""The one door to the Kubernetes API: raw JSON over one pooled aiohttp session.

Why raw dicts: typed models cost ~7x the CPU to parse (docs/design.md section 7) and every caller in
epctl wants plain JSON anyway. Why not kubernetes_asyncio's ApiClient: it imports every API model
(~38 MB) and adds nothing a raw client needs; where it earns its place — kubeconfig ``exec`` and
``auth-provider`` plugins — :mod:`epctl.kube.config` still uses it.

TLS is always verified. A kubeconfig asking for ``insecure-skip-tls-verify`` is refused unless the
caller passes ``allow_insecure=True`` because a user explicitly asked for it on the command line.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import yarl

from epctl import __version__
from epctl.kube.config import (
    ClusterConfig,
    ConfigError,
    api_proxy,
    load_client_cert_chain,
    load_default,
    load_kubeconfig,
    refuse_cleartext_credentials,
)

log = logging.getLogger(__name__)
Obj = dict[str, Any]

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

DEFAULT_TIMEOUT = (10.0, 30.0)  # (connect, read) seconds
INACTIVITY = "InactivityTimeout"


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the REST tree."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
            if subresource:
                base += f"/{subresource}"
        return base


NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
SERVICES = Resource("", "v1", "services", "Service")
ENDPOINTS = Resource("", "v1", "endpoints", "Endpoints")
SECRETS = Resource("", "v1", "secrets", "Secret")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
EVENTS = Resource("", "v1", "events", "Event")
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                namespaced=False)


class ApiError(Exception):
    """A non-2xx answer, with the ``Status`` the server sent (or a synthesised one)."""

    def __init__(self, code: int, reason: str, message: str, status: Obj | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code, self.reason, self.message = code, reason, message
        self.status = status or {}
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Worth retrying the same request later: throttling, server trouble, timeouts."""
        return self.code == 429 or self.code >= 500 or self.code == 0


class Fenced(Exception):
    """A write was not sent: this replica may no longer write that target (its claim lapsed or moved).
    Not an API error: nothing was asked of the server, and retrying is pointless until ownership
    returns (``epctl.shard.fence``)."""


class TLSVerificationRequired(ConfigError):
    """The kubeconfig disables TLS verification and nobody explicitly allowed that."""


def _timeout(timeout: tuple[float, float] | None, fence_left: float | None = None) -> aiohttp.ClientTimeout:
    connect, read = timeout or DEFAULT_TIMEOUT
    if fence_left is not None:
        # aiohttp's connect timeout covers the wait for a pooled connection and the handshake: a write
        # must not leave the process after its fence closes, however long it queued for a connection
        connect = min(connect, fence_left)
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=read)


class KubeClient:
    """Raw JSON requests and watch streams against one API server."""

    def __init__(self, config: ClusterConfig, *, pool_size: int = 64,
                 on_response: Callable[[str, int], None] | None = None, user_agent: str | None = None) -> None:
        context = ssl.create_default_context(cafile=config.ca_file, cadata=config.ca_data)
        load_client_cert_chain(context, config)
        if config.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self.config = config
        self.on_response = on_response
        proxy = api_proxy(config.server, keep_credentials=True)
        proxy_url = yarl.URL(proxy) if proxy else None
        self._proxy = proxy_url.with_user(None) if proxy_url else None
        auth = aiohttp.BasicAuth.from_url(proxy_url) if proxy_url else None
        self._proxy_headers = {"Proxy-Authorization": auth.encode()} if auth else None
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool_size, ssl=context), trust_env=False,
            read_bufsize=2**21, headers={"User-Agent": user_agent or f"epctl/{__version__}"})

    @classmethod
    async def connect(cls, kubeconfig: str | None = None, context: str | None = None, *, pool_size: int = 64,
                      allow_insecure: bool = False, on_response: Callable[[str, int], None] | None = None,
                      user_agent: str | None = None) -> KubeClient:
        """From a kubeconfig file; when ``kubeconfig`` is None, the pod's service account, else
        ``~/.kube/config`` (see :func:`load_default`).

        ``pool_size`` bounds concurrent connections: size it for the number of watches plus the
        writer's concurrency, or requests queue behind long-lived watch streams.
        """
        config = load_kubeconfig(kubeconfig, context) if kubeconfig else load_default(context)
        refuse_cleartext_credentials(config)
        proxy = api_proxy(config.server)
        if proxy:  # as kubectl does, HTTPS_PROXY/NO_PROXY apply; say so, it changes who sees the traffic
            log.info("API server requests go through a proxy", extra={"server": config.server, "proxy": proxy})
        if config.insecure and not allow_insecure:
            raise TLSVerificationRequired(
                "the kubeconfig sets insecure-skip-tls-verify; epctl always verifies the API server's "
                "certificate (pass --insecure-skip-tls-verify explicitly where a command offers it)")
        return cls(config, pool_size=pool_size, on_response=on_response, user_agent=user_agent)

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _send(self, method: str, path: str, query: dict[str, Any] | None, body: Any, content_type: str,
                    timeout: tuple[float, float] | None, fence: Callable[[], float] | None = None
                    ) -> aiohttp.ClientResponse:
        headers = {"Accept": JSON, "Content-Type": content_type}
        params = [(k, str(v).lower() if isinstance(v, bool) else str(v))
                  for k, v in (query or {}).items() if v is not None]
        try:
            authorization = await self.config.authorization()
            if authorization:
                headers["Authorization"] = authorization
            data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
            left = None
            if fence is not None:  # asked last, right before the request goes out (epctl.shard.fence)
                left = fence()
                if left <= 0:
                    raise Fenced(f"{method} {path}: not sent, this replica may no longer write it")
            response = await self._session.request(
                method, self.config.server + path, params=params, data=data, headers=headers,
                timeout=_timeout(timeout, left), server_hostname=self.config.tls_server_name, proxy=self._proxy,
                proxy_headers=self._proxy_headers)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as err:
            if self.on_response:
                self.on_response(method, 0)
            raise ApiError(0, "ConnectionError", f"{method} {path}: {err!r}") from err
        if self.on_response:
            self.on_response(method, response.status)
        return response

    @staticmethod
    async def _error(response: aiohttp.ClientResponse) -> ApiError:
        text = await response.text()
        try:
            status = json.loads(text)
        except ValueError:
            status = {}
        if not isinstance(status, dict):
            status = {}
        retry_after = response.headers.get("Retry-After")
        return ApiError(response.status, status.get("reason") or response.reason or "Unknown",
                        status.get("message") or text[:200], status,
                        float(retry_after) if retry_after and retry_after.isdigit() else None)

    async def request(self, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None,
                      content_type: str = JSON, timeout: tuple[float, float] | None = None,
                      fence: Callable[[], float] | None = None) -> Obj:
        """One request; returns the decoded JSON body or raises :class:`ApiError`.

        ``fence``: for writes of a target this replica holds; it returns the seconds left in which the
        write may still be sent. Asked at the moment of sending; raises :class:`Fenced` when none."""
        response = await self._send(method, path, query, body, content_type, timeout, fence)
        async with response:
            if response.status >= 400:
                raise await self._error(response)
            try:
                data = await response.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError, ValueError) as err:
                raise ApiError(0, "ConnectionError", f"{method} {path}: reading body: {err!r}") from err
        return data if isinstance(data, dict) else {}

    async def stream(self, path: str, query: dict[str, Any], timeout: tuple[float, float] | None = None,
                     on_open: Callable[[], None] | None = None) -> AsyncIterator[Obj]:
        """Yield each JSON line of a watch stream. The read timeout doubles as an inactivity deadline.

        ``on_open`` is called once the server has accepted the watch (before any event arrives).
        """
        response = await self._send("GET", path, query, None, JSON, timeout)
        async with response:
            if response.status >= 400:
                raise await self._error(response)
            if on_open is not None:
                on_open()
            try:
                async for line in response.content:
                    if line.strip():
                        yield json.loads(line)
            except TimeoutError as err:  # no byte within the read timeout: a silent stall
                raise ApiError(0, INACTIVITY, f"watch {path}: nothing received within the read timeout") from err
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as err:
                raise ApiError(0, "ConnectionError", f"watch {path}: {err!r}") from err
