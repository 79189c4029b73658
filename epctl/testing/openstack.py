"""A fake OpenStack (Keystone v3 + Nova) on 127.0.0.1 that the real openstacksdk lists servers from.

Enough of the two APIs for discovery, with their real shapes and behaviours:
- Keystone v3: version discovery (``GET /identity`` and ``GET /identity/v3``), ``POST
  /identity/v3/auth/tokens`` with ``password`` (user and project by name or id, domains by name or
  id, never assumed) or ``application_credential`` (id + secret), ``X-Subject-Token`` plus a token
  body with ``expires_at`` and the service catalog (one ``compute`` service, every interface).
- Nova v2.1: version discovery, ``GET /compute/v2.1/servers/detail`` with Nova's default order
  (newest first), ``limit``/``marker`` pagination with ``servers_links`` ``next`` links, a server-side
  page cap (``max_limit``, Nova's ``[api]max_limit``), filters ``name`` (regex search),
  ``status`` (repeatable), ``tags``/``tags-any``/``not-tags``/``not-tags-any`` (microversion 2.26+),
  and microversion negotiation through the ``OpenStack-API-Version`` header (echoed back). Requests
  need a live token (``X-Auth-Token``), else 401 like keystonemiddleware.

Controls for tests: :meth:`add_server` / :meth:`change_server` / :meth:`remove_server`,
:meth:`fail_next` (the next N API calls answer a status code, after an optional delay) and
:meth:`recover`,
:meth:`reject_credentials` (auth answers 401 and issued tokens die), and a request log
(:attr:`requests`) to count calls per poll.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import secrets
import ssl
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from epctl.testing.backends import HOST
from epctl.testing.tls import serving_certs

Obj = dict[str, Any]
MAX_MICROVERSION = "2.96"
MIN_MICROVERSION = "2.1"


@dataclass
class FakeServer:
    """One Nova server. ``addresses`` is Nova's shape: network name -> [{addr, version, OS-EXT-IPS:type}]."""

    id: str
    name: str
    status: str = "ACTIVE"
    metadata: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    addresses: dict[str, list[Obj]] = field(default_factory=dict)
    created: float = 0.0
    zone: str = "nova"  # OS-EXT-AZ:availability_zone (Nova's default zone is "nova")

    def to_json(self, microversion: tuple[int, int], base: str) -> Obj:
        stamp = datetime.fromtimestamp(self.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body: Obj = {
            "id": self.id, "name": self.name, "status": self.status, "metadata": dict(self.metadata),
            "addresses": {net: [dict(a) for a in addrs] for net, addrs in self.addresses.items()},
            "created": stamp, "updated": stamp, "tenant_id": "project-1", "user_id": "user-1",
            "hostId": "", "flavor": {"original_name": "m1.small"}, "image": "",
            "links": [{"rel": "self", "href": f"{base}/servers/{self.id}"}],
            "OS-EXT-STS:vm_state": self.status.lower(), "OS-EXT-STS:power_state": 1,
            "OS-EXT-AZ:availability_zone": self.zone,
        }
        if microversion >= (2, 26):
            body["tags"] = list(self.tags)
        return body


@dataclass
class Credentials:
    """What the fake accepts. Password users are matched on name/id, domains and project exactly."""

    username: str = "demo"
    password: str = "secret-password"
    domain_name: str = "Default"  # the user's and the project's domain
    domain_id: str = "default"
    project: str = "demo"
    app_credential_id: str = "appcred-1"
    app_credential_secret: str = "appcred-secret"


@dataclass
class Failure:
    remaining: int
    status: int
    delay: float
    service: str | None  # "identity", "compute" or None for both


@dataclass
class LoggedRequest:
    method: str
    path: str
    status: int
    service: str


def _parse_microversion(request: web.Request) -> tuple[int, int]:
    header = request.headers.get("OpenStack-API-Version", "")
    value = header.split()[-1] if header.startswith("compute ") else request.headers.get(
        "X-OpenStack-Nova-API-Version", MIN_MICROVERSION)
    if value == "latest":
        value = MAX_MICROVERSION
    major, _, minor = value.partition(".")
    return int(major), int(minor or 0)


def _server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as folder:  # the ssl module loads keys from files only
        cert, key = os.path.join(folder, "tls.crt"), os.path.join(folder, "tls.key")
        for path, data in ((cert, cert_pem), (key, key_pem)):
            with open(path, "wb") as f:
                f.write(data)
        context.load_cert_chain(cert, key)
    return context


def _error(status: int, message: str) -> web.Response:
    names = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound"}
    key = names.get(status, "computeFault")
    return web.json_response({key: {"code": status, "message": message}}, status=status)


class FakeOpenStack:
    """``async with FakeOpenStack() as cloud:`` then point openstacksdk at :attr:`auth_url`."""

    def __init__(self, *, port: int = 0, max_limit: int = 1000, token_ttl: float = 3600.0,
                 credentials: Credentials | None = None, region: str = "RegionOne", tls: bool = False) -> None:
        """``tls=True`` serves HTTPS with a certificate from a fresh test CA (:attr:`ca_pem`)."""
        self.port = port
        self.tls = tls
        self.ca_pem = b""
        self.max_limit = max_limit
        self.token_ttl = token_ttl
        self.credentials = credentials or Credentials()
        self.region = region
        self.servers: dict[str, FakeServer] = {}
        self.requests: list[LoggedRequest] = []
        self._tokens: dict[str, float] = {}
        self._failures: list[Failure] = []
        self._rejecting = False
        self._clock = itertools.count(1)
        self._runner: web.AppRunner | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    @property
    def auth_url(self) -> str:
        return f"{self.base}/identity/v3"

    async def start(self) -> FakeOpenStack:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/identity", self._identity_versions)
        app.router.add_get("/identity/", self._identity_versions)
        app.router.add_get("/identity/v3", self._identity_v3)
        app.router.add_get("/identity/v3/", self._identity_v3)
        app.router.add_post("/identity/v3/auth/tokens", self._issue_token)
        app.router.add_get("/compute", self._compute_versions)
        app.router.add_get("/compute/", self._compute_versions)
        app.router.add_get("/compute/v2.1", self._compute_v21)
        app.router.add_get("/compute/v2.1/", self._compute_v21)
        app.router.add_get("/compute/v2.1/servers/detail", self._servers_detail)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = None
        if self.tls:
            certs = serving_certs()
            self.ca_pem = certs.ca_pem
            context = _server_context(certs.cert_pem, certs.key_pem)
        site = web.TCPSite(self._runner, HOST, self.port, ssl_context=context)
        await site.start()
        if not self.port:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenStack:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- controls --------------------------------------------------------------------------------

    def add_server(self, name: str, *, fixed: Sequence[str] = (), floating: Sequence[str] = (),
                   network: str = "private", status: str = "ACTIVE", metadata: dict[str, str] | None = None,
                   tags: list[str] | None = None, server_id: str | None = None, zone: str = "nova") -> str:
        """Add a server with fixed/floating addresses on one network (IPv4 and IPv6 both fine)."""
        server = FakeServer(server_id or str(uuid.uuid4()), name, status, dict(metadata or {}), list(tags or []),
                            created=1_700_000_000 + next(self._clock), zone=zone)
        if fixed or floating:
            server.addresses[network] = self.address_list(fixed, floating)
        self.servers[server.id] = server
        return server.id

    @staticmethod
    def address_list(fixed: Sequence[str] = (), floating: Sequence[str] = ()) -> list[Obj]:
        return ([{"addr": a, "version": 6 if ":" in a else 4, "OS-EXT-IPS:type": "fixed",
                  "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01"} for a in fixed]
                + [{"addr": a, "version": 6 if ":" in a else 4, "OS-EXT-IPS:type": "floating",
                    "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01"} for a in floating])

    def find(self, name_or_id: str) -> FakeServer:
        if name_or_id in self.servers:
            return self.servers[name_or_id]
        matches = [s for s in self.servers.values() if s.name == name_or_id]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} servers named {name_or_id!r}")
        return matches[0]

    def change_server(self, name_or_id: str, **changes: Any) -> None:
        """Set attributes of a server (status, metadata, tags, addresses, name)."""
        server = self.find(name_or_id)
        for attr, value in changes.items():
            if not hasattr(server, attr):
                raise AttributeError(attr)
            setattr(server, attr, value)

    def remove_server(self, name_or_id: str) -> None:
        del self.servers[self.find(name_or_id).id]

    def fail_next(self, count: int, status: int = 503, *, delay: float = 0.0, service: str | None = None) -> None:
        """The next ``count`` API calls (of ``service``, or any) wait ``delay`` then answer ``status``.

        ``status=0`` only delays (a slow but working cloud)."""
        self._failures.append(Failure(count, status, delay, service))

    def recover(self) -> None:
        """Cancel the failures not served yet."""
        self._failures = []

    def reject_credentials(self, reject: bool = True) -> None:
        """Make every authentication fail (401) and revoke the tokens already issued."""
        self._rejecting = reject
        if reject:
            self._tokens.clear()

    def calls(self, service: str | None = None) -> int:
        return sum(1 for r in self.requests if service is None or r.service == service)

    # --- plumbing --------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        service = "identity" if request.path.startswith("/identity") else "compute"
        response: web.StreamResponse
        failure = next((f for f in self._failures if f.remaining > 0 and f.service in (None, service)), None)
        if failure is not None:
            failure.remaining -= 1
            self._failures = [f for f in self._failures if f.remaining > 0]
            if failure.delay:
                await asyncio.sleep(failure.delay)
        if failure is not None and failure.status:
            response = _error(failure.status, "injected failure")
        else:
            response = await handler(request)
        self.requests.append(LoggedRequest(request.method, request.path_qs, response.status, service))
        return response

    # --- keystone --------------------------------------------------------------------------------

    def _identity_version(self) -> Obj:
        return {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
                "links": [{"rel": "self", "href": f"{self.base}/identity/v3/"}],
                "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}]}

    async def _identity_versions(self, request: web.Request) -> web.Response:
        return web.json_response({"versions": {"values": [self._identity_version()]}}, status=300)

    async def _identity_v3(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self._identity_version()})

    def _authenticate(self, body: Any) -> str | None:
        """The failure message, or None when the credentials are right."""
        if self._rejecting:
            return "The request you have made requires authentication."
        try:
            identity = body["auth"]["identity"]
            methods = identity["methods"]
        except (KeyError, TypeError):
            return "Expecting to find identity in auth."
        creds = self.credentials
        if methods == ["application_credential"]:
            app = identity.get("application_credential") or {}
            ok = app.get("id") == creds.app_credential_id and app.get("secret") == creds.app_credential_secret
            return None if ok else "The request you have made requires authentication."
        if methods != ["password"]:
            return "Unsupported authentication method."
        user = (identity.get("password") or {}).get("user") or {}
        domain = user.get("domain") or {}
        if "id" not in user and not domain:
            return "Expecting to find domain in user."
        project = ((body["auth"].get("scope") or {}).get("project")) or {}
        pdomain = project.get("domain") or {}
        if "name" in project and not pdomain:
            return "Expecting to find domain in project."
        def in_domain(d: Obj) -> bool:
            return not d or d.get("name") == creds.domain_name or d.get("id") == creds.domain_id

        ok = (user.get("name", user.get("id")) == creds.username and user.get("password") == creds.password
              and in_domain(domain) and project.get("name", project.get("id")) == creds.project
              and in_domain(pdomain))
        return None if ok else "The request you have made requires authentication."

    async def _issue_token(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"code": 400, "message": "malformed JSON"}}, status=400)
        problem = self._authenticate(body)
        if problem:
            return web.json_response({"error": {"code": 401, "title": "Unauthorized", "message": problem}},
                                     status=401)
        token = secrets.token_hex(16)
        self._tokens[token] = time.monotonic() + self.token_ttl
        expires = (datetime.now(UTC) + timedelta(seconds=self.token_ttl)).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        compute = f"{self.base}/compute/v2.1"
        catalog = [{"type": "compute", "name": "nova", "id": "svc-compute", "endpoints": [
            {"id": f"ep-{interface}", "interface": interface, "region": self.region, "region_id": self.region,
             "url": compute} for interface in ("public", "internal", "admin")]}]
        payload = {"token": {
            "methods": body["auth"]["identity"]["methods"], "expires_at": expires,
            "issued_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
            "user": {"id": "user-1", "name": self.credentials.username, "domain": {"id": "default", "name": "Default"}},
            "project": {"id": "project-1", "name": self.credentials.project,
                        "domain": {"id": "default", "name": "Default"}},
            "roles": [{"id": "role-1", "name": "member"}], "catalog": catalog}}
        return web.json_response(payload, status=201, headers={"X-Subject-Token": token})

    # --- nova ------------------------------------------------------------------------------------

    def _compute_version(self) -> Obj:
        return {"id": "v2.1", "status": "CURRENT", "version": MAX_MICROVERSION, "min_version": MIN_MICROVERSION,
                "updated": "2013-07-23T11:33:21Z",
                "links": [{"rel": "self", "href": f"{self.base}/compute/v2.1/"}],
                "media-types": [{"base": "application/json",
                                 "type": "application/vnd.openstack.compute+json;version=2.1"}]}

    async def _compute_versions(self, request: web.Request) -> web.Response:
        return web.json_response({"versions": [self._compute_version()]})

    async def _compute_v21(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self._compute_version()})

    def _token_ok(self, request: web.Request) -> bool:
        expiry = self._tokens.get(request.headers.get("X-Auth-Token", ""))
        return expiry is not None and expiry > time.monotonic()

    async def _servers_detail(self, request: web.Request) -> web.Response:
        if not self._token_ok(request):
            return web.json_response({"error": {"code": 401, "title": "Unauthorized",
                                                "message": "The request you have made requires authentication."}},
                                     status=401)
        microversion = _parse_microversion(request)
        if microversion > (2, 96) or microversion < (2, 1):
            return _error(406, f"Version {microversion[0]}.{microversion[1]} is not supported by the API.")
        query = request.query
        servers = sorted(self.servers.values(), key=lambda s: (s.created, s.id), reverse=True)
        if "name" in query:
            try:
                pattern = re.compile(query["name"])
            except re.error:
                return _error(400, "Invalid regular expression in name filter")
            servers = [s for s in servers if pattern.search(s.name)]
        statuses = [s.upper() for s in query.getall("status", [])]
        if statuses:
            servers = [s for s in servers if s.status in statuses]
        if microversion >= (2, 26):
            for param, test in (("tags", all), ("tags-any", any)):
                if param in query:
                    wanted = query[param].split(",")
                    servers = [s for s in servers if test(t in s.tags for t in wanted)]
            for param, test in (("not-tags", all), ("not-tags-any", any)):
                if param in query:
                    wanted = query[param].split(",")
                    servers = [s for s in servers if not test(t in s.tags for t in wanted)]
        if "marker" in query:
            ids = [s.id for s in servers]
            if query["marker"] not in ids:
                return _error(400, f"marker [{query['marker']}] not found")
            servers = servers[ids.index(query["marker"]) + 1:]
        try:
            limit = min(int(query.get("limit", self.max_limit)), self.max_limit)
        except ValueError:
            return _error(400, "limit must be an integer")
        base = f"{self.base}/compute/v2.1"
        page = servers[:limit]
        body: Obj = {"servers": [s.to_json(microversion, base) for s in page]}
        if len(servers) > limit and page:
            params = [(k, v) for k, v in query.items() if k not in ("marker", "limit")]
            params += [("limit", str(limit)), ("marker", page[-1].id)]
            body["servers_links"] = [{"rel": "next", "href": f"{base}/servers/detail?{urlencode(params)}"}]
        version = f"{microversion[0]}.{microversion[1]}"
        return web.json_response(body, headers={"OpenStack-API-Version": f"compute {version}",
                                                "X-OpenStack-Nova-API-Version": version,
                                                "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version"})
