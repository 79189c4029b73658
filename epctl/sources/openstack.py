"""OpenStack discovery: pollers that list Nova servers and tell their consumers what they found.

Shape (docs/design.md section 2, "OpenStack pollers (thread)"):
- openstacksdk blocks, so every call to it runs in a worker thread. Each distinct set of
  credentials gets one :class:`_Connection`: one openstacksdk ``Connection`` (keystoneauth session,
  token cache) and the *one* thread that ever touches it (sessions are not thread-safe; a single
  thread per connection also bounds the load one cloud account puts on Keystone/Nova).
- One :class:`Poller` per distinct (credentials, query, period): ClusterEndpoints asking the same
  question share its answer, however many there are.
- A poll lists ``/servers/detail`` (every page, following Nova's ``servers_links``) with Nova's
  server-side filters (status, tags, portable name regexes), then applies the whole query locally
  (``openstack_select``). openstacksdk provides auth, catalog and session; the JSON is read raw
  (see :meth:`_Connection._list`: sdk Resource objects cost 28x the CPU).
- On any error (auth, 5xx, timeout, unreachable, missing Secret) the last good answer stands, the
  poller backs off (``retry_base`` doubling to ``retry_max``, 5 s to 5 min) and consumers get the
  reason for their ``DiscoverySynced`` condition. Only a *successful* answer changes endpoints.
- Credentials come from Secrets, each followed by its own informer (field selector on the name,
  so no other Secret is ever cached) and re-read on every change: a fixed Secret takes effect at
  once, without a restart. Values never reach logs, Events or status (:func:`redact` and an
  explicit allow-list of what a message may contain).
- Pollers run only while :meth:`OpenStackSource.resume` d (the leader): a standby does not double
  the load on the cloud; consumers keep serving what the slices already publish until the first
  answer arrives.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import os
import random
import tempfile
import time
import warnings
from collections.abc import Callable, Coroutine, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from epctl.api.spec import OpenStackDiscovery, ServerQuery
from epctl.kube.client import SECRETS, KubeClient
from epctl.kube.informer import Informer, InformerMetrics
from epctl.sources.openstack_auth import (
    CA_PEM_KEY,
    Credentials,
    CredentialsError,
    credentials_from_secret,
    redact,
)
from epctl.sources.openstack_select import DiscoveredServer, nova_filters, select_servers
from epctl.tasks import cancel_and_wait, within

log = logging.getLogger(__name__)
# keystoneauth/openstacksdk log request details at DEBUG and cloud chatter at WARNING; our own
# poll logs say what failed, with secrets redacted. Keep theirs out whatever --log-level says.
for _noisy in ("keystoneauth", "openstack", "stevedore", "urllib3"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)
# openstacksdk's deprecation notices are about its own internals, not anything we can act on.
warnings.filterwarnings("ignore", module=r"openstack(\..*)?$")


class DiscoveryMetrics(Protocol):
    def poll(self, poller: str, ok: bool, seconds: float, servers: int | None, reason: str) -> None: ...
    def pollers(self, count: int) -> None: ...
    def forget(self, poller: str) -> None: ...


@dataclass(frozen=True)
class DiscoveryUpdate:
    """What a consumer learns. ``servers is None``: no good answer (yet) — keep what you have."""

    servers: tuple[DiscoveredServer, ...] | None
    ok: bool
    reason: str
    message: str
    poller: str = ""


Callback = Callable[[DiscoveryUpdate], None]
MAX_PAGES = 10_000  # a marker loop in a broken cloud must not poll forever


@dataclass(frozen=True)
class PollerKey:
    credentials: Credentials
    query: ServerQuery
    poll_seconds: float
    seed_network_metadata: bool = False

    @property
    def id(self) -> str:
        """Short, stable, secret-free name (metrics label, status field)."""
        return hashlib.sha256(repr((self.credentials.config_json, self.query, self.poll_seconds,
                                    self.seed_network_metadata)).encode()).hexdigest()[:10]


def classify(exc: BaseException, secrets: tuple[str, ...] = ()) -> tuple[str, str]:
    """(reason, message) for a failed poll. The message is ours plus the library's text, redacted."""
    from keystoneauth1 import exceptions as ks
    from openstack import exceptions as sdk

    detail = redact(str(exc), secrets)[:300]
    status = getattr(exc, "status_code", None) or getattr(exc, "http_status", None)
    text = str(exc)
    if isinstance(exc, ks.SSLError) or "CERTIFICATE_VERIFY_FAILED" in text or "SSLError" in text:
        return "TLSVerificationFailed", ("cannot verify OpenStack's TLS certificate (put the cloud's CA in the "
                                         f"Secret's OS_CACERT key): {redact(text, secrets)[-300:]}")
    if isinstance(exc, ks.http.Unauthorized) or status == 401:
        return "AuthenticationFailed", f"OpenStack rejected the credentials (HTTP 401): {detail}"
    if isinstance(exc, ks.http.Forbidden) or status == 403:
        return "Forbidden", f"OpenStack refused the request (HTTP 403): {detail}"
    if isinstance(exc, ks.ConnectTimeout | ks.RequestTimeout | TimeoutError):
        return "Timeout", f"OpenStack did not answer in time: {detail}"
    if isinstance(exc, ks.ConnectFailure) or (isinstance(exc, ks.DiscoveryFailure)
                                              and "Unable to establish connection" in str(exc)):
        return "Unreachable", f"cannot connect to OpenStack: {detail}"
    if isinstance(exc, ks.EndpointNotFound):
        return "EndpointNotFound", f"no compute endpoint in the service catalog: {detail}"
    if isinstance(exc, ks.DiscoveryFailure):
        return "IdentityDiscoveryFailed", f"Keystone version discovery failed: {detail}"
    if isinstance(status, int) and status >= 500:
        return "ServerError", f"OpenStack answered HTTP {status}: {detail}"
    if isinstance(exc, sdk.HttpException | ks.HttpError):
        return "HTTPError", f"OpenStack answered HTTP {status}: {detail}"
    return "Error", f"{type(exc).__name__}: {detail}"


class _Connection:
    """One openstacksdk Connection and the single thread that uses it."""

    def __init__(self, credentials: Credentials, timeout: float) -> None:
        self.credentials = credentials
        self.timeout = timeout
        self.users = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"openstack-{credentials.fingerprint}")
        self._conn: Any = None
        self._ca_path: str | None = None  # removed on close: no key material or CA left in /tmp

    def _connection(self) -> Any:  # in the thread
        if self._conn is None:
            import openstack
            from openstack.config import loader

            settings = self.credentials.config
            pem = settings.pop(CA_PEM_KEY, None)
            if pem:  # requests verifies against files only
                settings["cacert"] = self._write_ca(pem)
            config = loader.OpenStackConfig(load_yaml_config=False, load_envvars=False)
            region = config.get_one(**settings, api_timeout=self.timeout)
            self._conn = openstack.connection.Connection(config=region)
        return self._conn

    def _write_ca(self, pem: str) -> str:
        """The CA bundle as a private file in the temp dir (an emptyDir in the Deployment)."""
        path = os.path.join(tempfile.gettempdir(), f"epctl-openstack-ca-{self.credentials.fingerprint}.pem")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as f:
            f.write(pem)
        self._ca_path = path
        return path

    def _list(self, filters: dict[str, Any]) -> list[dict[str, Any]]:  # in the thread
        """Every page of ``GET /servers/detail`` as plain dicts.

        Through openstacksdk's authenticated compute proxy (catalog, token refresh, retries), but
        raw JSON instead of ``compute.servers()``: building sdk Resource objects costs ~2.3 ms of
        CPU per server (measured: 235 ms vs 8 ms for 100), all of it holding the GIL that the
        event loop — and every probe — needs.
        """
        from openstack import exceptions

        compute = self._connection().compute
        microversion = {"microversion": "2.26"} if "tags" in filters else {}  # tags need 2.26
        url: str = "/servers/detail"
        params: dict[str, Any] | None = filters
        servers: list[dict[str, Any]] = []
        for _ in range(MAX_PAGES):
            response = compute.get(url, params=params, **microversion)
            exceptions.raise_from_response(response)
            body = response.json()
            servers.extend(s for s in body.get("servers") or [] if isinstance(s, dict))
            following = next((link.get("href") for link in body.get("servers_links") or []
                              if isinstance(link, dict) and link.get("rel") == "next"), None)
            if not following:
                return servers
            url, params = following, None  # the next link carries the filters and the marker
        raise RuntimeError(f"Nova returned more than {MAX_PAGES} pages of servers; giving up this poll")

    async def list_servers(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._list, filters)

    def close(self) -> None:
        def close_conn() -> None:
            if self._conn is not None:
                self._conn.close()
            if self._ca_path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self._ca_path)
        self._executor.submit(close_conn)
        self._executor.shutdown(wait=False)


class Poller:
    """Polls one query with one connection; publishes only when the answer or the error changes."""

    def __init__(self, key: PollerKey, connection: _Connection, *, retry_base: float, retry_max: float,
                 metrics: DiscoveryMetrics | None) -> None:
        self.key, self.connection = key, connection
        self.retry_base, self.retry_max = retry_base, retry_max
        self.metrics = metrics
        self.subscribers: dict[Hashable, Callback] = {}
        self.update: DiscoveryUpdate | None = None
        self.failures = 0
        self.polls = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.create_task(self._run(), name=f"openstack-poller:{self.key.id}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def poll_now(self) -> None:
        self._wake.set()

    def _publish(self, update: DiscoveryUpdate) -> None:
        if update == self.update:
            return
        self.update = update
        for callback in list(self.subscribers.values()):
            try:
                callback(update)
            except Exception:  # one consumer's bug must not stop the poller or the others
                log.exception("discovery consumer failed", extra={"poller": self.key.id})

    async def poll_once(self) -> bool:
        key = self.key
        started = time.monotonic()
        servers: tuple[DiscoveredServer, ...] | None = None
        try:
            raw = await self.connection.list_servers(nova_filters(key.query))
            servers = select_servers(raw, key.query, seed_network_metadata=key.seed_network_metadata)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason, message = classify(exc, key.credentials.secrets)
            self.failures += 1
            log.warning("OpenStack discovery poll failed", extra={
                "poller": key.id, "auth_url": key.credentials.auth_url, "reason": reason, "error": message,
                "failures": self.failures})
            if self.metrics:
                self.metrics.poll(key.id, False, time.monotonic() - started, None, reason)
            last = self.update.servers if self.update else None
            self._publish(DiscoveryUpdate(last, False, reason, message, key.id))
            return False
        self.polls += 1
        if self.failures:
            log.info("OpenStack discovery recovered", extra={"poller": key.id, "servers": len(servers)})
        self.failures = 0
        if self.metrics:
            self.metrics.poll(key.id, True, time.monotonic() - started, len(servers), "")
        addresses = sum(len(s.addresses) for s in servers)
        self._publish(DiscoveryUpdate(servers, True, "Synced",
                                      f"{len(servers)} servers match, {addresses} addresses", key.id))
        return True

    def next_delay(self, ok: bool) -> float:
        """Period ±10 % when healthy; exponential backoff (with jitter) after failures."""
        if ok:
            return float(self.key.poll_seconds * random.uniform(0.9, 1.1))
        backoff = min(self.retry_max, self.retry_base * 2 ** (self.failures - 1))
        return float(min(self.retry_max, backoff * random.uniform(0.9, 1.1)))

    async def _run(self) -> None:
        # Spread the first polls of many pollers (a restart starts them all at once).
        await asyncio.sleep(random.uniform(0, min(1.0, self.key.poll_seconds / 10)))
        while True:
            self._wake.clear()
            try:
                ok = await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug of ours must not end discovery for good: log, back off, retry
                log.exception("OpenStack poller failed unexpectedly", extra={"poller": self.key.id})
                self.failures += 1
                ok = False
            try:
                await within(self.next_delay(ok), self._wake.wait())
            except TimeoutError:
                pass


@dataclass
class _Consumer:
    callback: Callback
    secret: tuple[str, str] | None  # (namespace, name); None when credentials are given directly
    query: ServerQuery
    poll_seconds: float
    seed_network_metadata: bool = False
    credentials: Credentials | None = None  # direct credentials (epctl manager)
    key: PollerKey | None = None


@dataclass
class _SecretWatch:
    informer: Informer
    consumers: set[Hashable] = field(default_factory=set)
    credentials: Credentials | None = None
    error: tuple[str, str] | None = None  # (reason, message) while the Secret is unusable


def _decoded(obj: dict[str, Any]) -> dict[str, str]:
    data: dict[str, str] = {}
    for key, value in (obj.get("data") or {}).items():
        try:
            data[key] = base64.b64decode(value).decode()
        except (binascii.Error, UnicodeDecodeError, TypeError):
            data[key] = ""
    return data


class OpenStackSource:
    """Owns secrets, connections and pollers; consumers subscribe with :meth:`watch_secret` or
    :meth:`watch_credentials` and get :class:`DiscoveryUpdate` s."""

    def __init__(self, client: KubeClient | None, *, timeout: float = 10.0, retry_base: float = 5.0,
                 retry_max: float = 300.0, metrics: DiscoveryMetrics | None = None,
                 informer_metrics: InformerMetrics | None = None) -> None:
        self.client = client
        self.timeout, self.retry_base, self.retry_max = timeout, retry_base, retry_max
        self.metrics, self.informer_metrics = metrics, informer_metrics
        self.active = False
        self._consumers: dict[Hashable, _Consumer] = {}
        self._pollers: dict[PollerKey, Poller] = {}
        self._connections: dict[str, _Connection] = {}
        self._secrets: dict[tuple[str, str], _SecretWatch] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Stop a poller or informer without blocking the caller (an informer callback)."""
        task = asyncio.create_task(coro)
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    # --- consumers ---------------------------------------------------------------------------

    def watch_secret(self, consumer: Hashable, namespace: str, spec: OpenStackDiscovery, callback: Callback,
                     ) -> None:
        """Follow ``spec`` with credentials from Secret ``namespace/spec.secret_name``."""
        secret = (namespace, spec.secret_name)
        previous = self._consumers.get(consumer)
        record = _Consumer(callback, secret, spec.query, spec.poll_seconds,
                           key=previous.key if previous else None)
        self._consumers[consumer] = record
        if previous is not None and previous.secret != secret:
            self._leave_secret(consumer, previous.secret)
        watch = self._secrets.get(secret)
        if watch is None:
            watch = self._secrets[secret] = self._watch_secret(secret)
        watch.consumers.add(consumer)
        self._bind(consumer)

    def watch_credentials(self, consumer: Hashable, credentials: Credentials, query: ServerQuery,
                          poll_seconds: float, callback: Callback, *, seed_network_metadata: bool = False) -> None:
        """Follow ``query`` with fixed credentials (``epctl manager``: they come from its environment)."""
        previous = self._consumers.get(consumer)
        self._consumers[consumer] = _Consumer(callback, None, query, poll_seconds, seed_network_metadata,
                                              credentials, key=previous.key if previous else None)
        self._bind(consumer)

    def unwatch(self, consumer: Hashable) -> None:
        record = self._consumers.pop(consumer, None)
        if record is None:
            return
        self._release(consumer, record)
        if record.secret is not None:
            self._leave_secret(consumer, record.secret)

    def poller_of(self, consumer: Hashable) -> Poller | None:
        record = self._consumers.get(consumer)
        return self._pollers.get(record.key) if record and record.key else None

    @property
    def pollers(self) -> list[Poller]:
        return list(self._pollers.values())

    # --- binding consumers to pollers ----------------------------------------------------------

    def _credentials_of(self, record: _Consumer) -> tuple[Credentials | None, tuple[str, str] | None]:
        if record.secret is None:
            return record.credentials, None
        watch = self._secrets[record.secret]
        return watch.credentials, watch.error

    def _bind(self, consumer: Hashable) -> None:
        record = self._consumers[consumer]
        credentials, error = self._credentials_of(record)
        if credentials is None:
            if error is not None:  # Secret missing/unusable: stop polling, keep the last answer
                self._release(consumer, record)
                record.callback(DiscoveryUpdate(None, False, *error))
            return  # Secret not read yet
        key = PollerKey(credentials, record.query, record.poll_seconds, record.seed_network_metadata)
        if record.key == key and key in self._pollers:
            return
        self._release(consumer, record)
        poller = self._pollers.get(key)
        if poller is None:
            connection = self._connections.get(credentials.config_json)
            if connection is None:
                connection = self._connections[credentials.config_json] = _Connection(credentials, self.timeout)
            connection.users += 1
            poller = self._pollers[key] = Poller(key, connection, retry_base=self.retry_base,
                                                 retry_max=self.retry_max, metrics=self.metrics)
            log.info("OpenStack poller created", extra={
                "poller": key.id, "auth_url": credentials.auth_url, "credentials": credentials.fingerprint,
                "name_regex": record.query.name_regex or "", "period": record.poll_seconds})
            if self.metrics:
                self.metrics.pollers(len(self._pollers))
            if self.active:
                poller.start()
        poller.subscribers[consumer] = record.callback
        record.key = key
        if poller.update is not None:
            record.callback(poller.update)

    def _release(self, consumer: Hashable, record: _Consumer) -> None:
        key, record.key = record.key, None
        poller = self._pollers.get(key) if key else None
        if poller is None:
            return
        poller.subscribers.pop(consumer, None)
        if poller.subscribers:
            return
        del self._pollers[poller.key]
        self._background(poller.stop())
        if self.metrics:
            self.metrics.forget(poller.key.id)
            self.metrics.pollers(len(self._pollers))
        connection = poller.connection
        connection.users -= 1
        if connection.users == 0:
            self._connections.pop(connection.credentials.config_json, None)
            connection.close()

    # --- Secrets -------------------------------------------------------------------------------

    def _watch_secret(self, secret: tuple[str, str]) -> _SecretWatch:
        if self.client is None:
            raise RuntimeError("OpenStackSource without a Kubernetes client cannot read Secrets")
        namespace, name = secret
        informer = Informer(self.client, SECRETS, namespace, field_selector=f"metadata.name={name}",
                            metrics=self.informer_metrics, name=f"secret:{namespace}/{name}")
        watch = _SecretWatch(informer)
        informer.subscribe(lambda _event: self._secret_changed(secret))
        informer.on_synced(lambda: self._secret_changed(secret))
        informer.start()
        return watch

    def _leave_secret(self, consumer: Hashable, secret: tuple[str, str] | None) -> None:
        watch = self._secrets.get(secret) if secret else None
        if watch is None:
            return
        watch.consumers.discard(consumer)
        if not watch.consumers:
            del self._secrets[secret]  # type: ignore[arg-type]
            self._background(watch.informer.stop())

    def _secret_changed(self, secret: tuple[str, str]) -> None:
        watch = self._secrets.get(secret)
        if watch is None or not watch.informer.synced.is_set():
            return
        namespace, name = secret
        obj = watch.informer.get(namespace, name)
        where = f"Secret {namespace}/{name}"
        if obj is None:
            watch.credentials, watch.error = None, ("SecretNotFound", f"{where} not found")
        else:
            try:
                watch.credentials, watch.error = credentials_from_secret(_decoded(obj), where), None
            except CredentialsError as exc:
                watch.credentials, watch.error = None, ("InvalidCredentials", str(exc))
        if watch.error:
            log.warning("OpenStack credentials unusable", extra={"secret": f"{namespace}/{name}",
                                                                 "reason": watch.error[0], "error": watch.error[1]})
        for consumer in list(watch.consumers):
            if consumer in self._consumers:
                self._bind(consumer)

    # --- lifecycle -----------------------------------------------------------------------------

    def resume(self) -> None:
        """Start polling (leader)."""
        self.active = True
        for poller in self._pollers.values():
            poller.start()

    async def pause(self) -> None:
        """Stop polling (standby); answers already received stay."""
        self.active = False
        await asyncio.gather(*(p.stop() for p in self._pollers.values()))

    async def stop(self) -> None:
        await self.pause()
        await asyncio.gather(*self._stopping, return_exceptions=True)
        for watch in self._secrets.values():
            await watch.informer.stop()
        for connection in self._connections.values():
            connection.close()
        self._pollers.clear()
        self._connections.clear()
        self._secrets.clear()
        self._consumers.clear()
