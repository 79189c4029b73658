"""postgres, mysql, redis role probes: one kept authenticated connection per (ClusterEndpoint, host).

A database is not a web server: PostgreSQL forks a backend per connection, MySQL authenticates
each one, so a probe that connected every period would cost the server more than the answer is
worth. Each check keeps one session (keyed by the check: ClusterEndpoint, port and address) and runs
the engine's role query on it each period. A broken or timed-out session is closed and reopened on
a later period; failed connects back off (0.5 s doubling to 10 s), so a host that is down is not
hammered when periods are short. A changed probe (secret, TLS, database) gets a new session.

Credentials come from a Secret the spec names (keys ``username``, ``password``, ``ca.crt``), read
through ``credentials`` only when a session is opened. They are never logged and never part of a
reason: reasons go to status and Events, so they are short, fixed phrases.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from epctl.api.spec import DatabaseProbe, ProbeKind
from epctl.probe.credentials import Credentials, CredentialsError, CredentialSource, DatabaseError
from epctl.probe.result import ProbeResult, describe_os_error
from epctl.probe.roles import PRIMARY, RoleAnswer, judge
from epctl.tasks import within

log = logging.getLogger(__name__)

BACKOFF_BASE, BACKOFF_MAX = 0.5, 10.0


class Session(Protocol):
    async def role(self) -> RoleAnswer: ...
    async def close(self) -> None: ...


Connect = Callable[[str, int, Credentials, DatabaseProbe, ssl.SSLContext | None, str], Awaitable[Session]]


class _NamedContext(ssl.SSLContext):
    """An SSLContext that checks the certificate for ``server_name`` whatever host the driver
    connected to (asyncpg, asyncmy and redis-py all pass the address they dialled)."""

    server_name = ""

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | bytes | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        return super().wrap_bio(incoming, outgoing, server_side, self.server_name or server_hostname, session)


def tls_context(probe: DatabaseProbe, ca: str) -> ssl.SSLContext | None:
    """Verified by default: against ``ca`` (the Secret's ca.crt) or else the system roots, for
    ``tls.serverName`` or else the address probed. ``insecureSkipVerify`` only encrypts."""
    if not probe.tls:
        return None
    context = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)
    context.server_name = probe.tls_server_name
    if probe.tls_insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca:
        context.load_verify_locations(cadata=ca)
    else:
        context.load_default_certs()
    return context


def connector(kind: ProbeKind) -> Connect:
    # drivers imported on first use: a controller without database probes never loads them
    if kind is ProbeKind.POSTGRES:
        from epctl.probe import db_postgres
        return db_postgres.connect
    if kind is ProbeKind.MYSQL:
        from epctl.probe import db_mysql
        return db_mysql.connect
    from epctl.probe import db_redis
    return db_redis.connect


@dataclass
class _Slot:
    probe: DatabaseProbe
    session: Session | None = None
    failures: int = 0  # connects failed in a row
    retry_at: float = 0.0  # monotonic: no new connect before this
    last_error: str = ""


def _describe(err: BaseException) -> str:
    if isinstance(err, DatabaseError | CredentialsError):
        return str(err)
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS: certificate not trusted ({err.verify_message})"
    if isinstance(err, ssl.SSLError):
        return f"TLS error: {err.reason or type(err).__name__}"
    if isinstance(err, OSError):
        return describe_os_error(err)
    return f"{type(err).__name__}"


class DatabaseProber:
    """Owns the sessions of the database checks (close with :meth:`close`)."""

    def __init__(self, credentials: CredentialSource | None = None) -> None:
        self.credentials = credentials
        self._slots: dict[tuple[str, int], _Slot] = {}
        self._closing: set[asyncio.Task[None]] = set()  # sessions being closed behind a finished probe
        self.connects = 0  # sessions opened (tests and the benchmark check the reuse)

    async def _open(self, check: str, address: str, port: int, probe: DatabaseProbe) -> Session:
        creds = Credentials()
        if probe.secret_name:
            namespace = check.split("/", 1)[0]
            if self.credentials is None:
                raise CredentialsError(f"Secret {probe.secret_name} is not available here")
            creds = await self.credentials(namespace, probe.secret_name)
        context = tls_context(probe, creds.ca)
        self.connects += 1
        return await connector(probe.kind)(address, port, creds, probe, context, probe.database)

    async def probe(self, check: str, address: str, port: int, timeout: float, probe: DatabaseProbe) -> ProbeResult:
        start = time.perf_counter()
        slot = self._slots.get((check, port))
        if slot is not None and slot.probe != probe:
            await self._drop(slot)
            slot = None
        if slot is None:
            slot = self._slots[(check, port)] = _Slot(probe)
        connecting = slot.session is None
        if connecting and time.monotonic() < slot.retry_at:
            return ProbeResult(False, f"reconnecting after: {slot.last_error}", time.perf_counter() - start)
        try:
            async with asyncio.timeout(timeout):
                if slot.session is None:
                    slot.session = await self._open(check, address, port, probe)
                    slot.failures = 0
                answer = await slot.session.role()
        except Exception as err:  # includes TimeoutError; a prober never raises
            self._drop_later(slot)  # closing a stuck session must not stretch the probe past its timeout
            if connecting:
                slot.failures += 1
                slot.retry_at = time.monotonic() + min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (slot.failures - 1))
            if isinstance(err, TimeoutError):
                slot.last_error = f"timeout after {timeout:g}s"
                return ProbeResult.timeout(time.perf_counter() - start, timeout)
            slot.last_error = _describe(err)
            return ProbeResult(False, slot.last_error, time.perf_counter() - start)
        ok, reason = judge(probe.expect, probe.max_lag_seconds, answer)
        return ProbeResult(ok, reason, time.perf_counter() - start, role=answer.role,
                           generation=answer.generation if answer.role == PRIMARY else 0)

    async def _drop(self, slot: _Slot) -> None:
        session, slot.session = slot.session, None
        if session is not None:
            await _close(session)

    def _drop_later(self, slot: _Slot) -> None:
        session, slot.session = slot.session, None
        if session is not None:
            task = asyncio.get_running_loop().create_task(_close(session))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def forget(self, check: str, port: int) -> None:
        """Close the session of a check that is no longer run."""
        slot = self._slots.pop((check, port), None)
        if slot is not None:
            await self._drop(slot)

    async def close(self) -> None:
        slots, self._slots = list(self._slots.values()), {}
        for slot in slots:
            await self._drop(slot)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


async def _close(session: Session) -> None:
    try:
        await within(1.0, session.close())
    except Exception:  # closing a broken session may fail; it is gone either way
        log.debug("closing a database session failed", exc_info=True)
