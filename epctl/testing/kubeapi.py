"""An in-memory Kubernetes API server that real clients (kubectl, kubernetes_asyncio) talk to.

Start it in-process::

    async with KubeAPIServer(allow_loopback=True) as api:
        api.kubeconfig_path      # HTTPS + bearer token + CA: clients verify TLS as usual
        api.request_log          # every request: verb, resource, namespace, name, code
        api.inject_fault(FaultRule(verb="update", resource="endpointslices", code=409, count=3))
        api.drop_watches(); api.stall_watches(); api.compact()
        await api.restart()      # same port, same state

or as ``epctl dev-apiserver --port N``. The semantics live in ``apistore`` (storage, watches, GC),
``builtins`` (validation), ``schema`` (CRDs), ``patching`` (PATCH flavours) and ``tables``
(kubectl printing). Deliberate deviation: ``allow_loopback=True`` lets EndpointSlices and Endpoints
carry 127.0.0.0/8 addresses so tests can publish local backends; a real server refuses them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import shutil
import ssl
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

from epctl.tasks import within
from epctl.testing import apierrors
from epctl.testing.apierrors import StatusError
from epctl.testing.apistore import ObjectStore
from epctl.testing.builtins import ALL_VERBS, ResourceType
from epctl.testing.kcm import EndpointSliceController, EndpointSliceMirroring
from epctl.testing.openapi import openapi_v3_document, openapi_v3_index
from epctl.testing.protobuf import ProtobufError, decode_object
from epctl.testing.selectors import make_filter
from epctl.testing.tables import render_table
from epctl.testing.tls import serving_certs

Obj = dict[str, Any]
log = logging.getLogger("epctl.testing.kubeapi")

SERVER_VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-epctl-test", "gitCommit": "0" * 40,
                  "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23",
                  "compiler": "gc", "platform": "linux/amd64"}

PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/json-patch+json": "json",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
    "application/apply-patch+cbor": "unsupported",
}


# kube-apiserver decodes JSON as Go does: an escaped UTF-16 surrogate without its pair ("\ud800")
# becomes U+FFFD (encoding/json's unquote); Python's json keeps it as a lone surrogate, which no
# UTF-8 encoder accepts. Only bodies that carry such an escape are walked.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_without_lone_surrogates(k): _without_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_lone_surrogates(v) for v in value]
    return value


@dataclass
class RequestRecord:
    """One served request, as an audit log would show it."""

    verb: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    group: str = ""
    user_agent: str = ""
    time: float = 0.0
    concerns: str = ""  # for a write: the name of the Service it is about (an audit reader's join key)

    @property
    def is_write(self) -> bool:
        return self.verb in ("create", "update", "patch", "delete", "deletecollection")


@dataclass
class FaultRule:
    """Make the next ``count`` matching requests fail with ``code`` (0 = only delay, then serve).

    ``None`` fields match anything. ``delay`` seconds are waited before failing or serving;
    ``respond_after`` seconds after serving, before the answer goes out (a slow response to a write
    the server has already applied, as a busy or distant API server gives).
    """

    verb: str | None = None
    resource: str | None = None
    namespace: str | None = None
    name: str | None = None
    code: int = 500
    count: int = 1
    delay: float = 0.0
    retry_after: int | None = None
    subresource: str | None = None
    user_agent: str | None = None  # prefix: fault only one client (e.g. partition one controller replica)
    respond_after: float = 0.0

    def matches(self, verb: str, resource: str, subresource: str, namespace: str, name: str,
                user_agent: str = "") -> bool:
        return ((self.user_agent is None or user_agent.startswith(self.user_agent))
                and (self.verb is None or self.verb == verb) and (self.resource is None or self.resource == resource)
                and (self.namespace is None or self.namespace == namespace)
                and (self.name is None or self.name == name)
                and (self.subresource is None or self.subresource == subresource))


@dataclass
class Route:
    """Where a request points: discovery, or (type, namespace, name, subresource)."""

    rt: ResourceType | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str = ""
    discovery: Obj | None = None
    plural: str = ""
    group: str = ""


class KubeAPIServer:
    """HTTPS kube-apiserver look-alike over an :class:`ObjectStore`."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, allow_loopback: bool = False,
                 history_window: int = 10_000, bookmark_interval: float = 60.0, token: str | None = None,
                 state_dir: str | None = None, controllers: bool = True) -> None:
        self.host, self.port = host, port
        self.store = ObjectStore(allow_loopback=allow_loopback, history_window=history_window)
        # what kube-controller-manager does to our objects in every cluster (GC is in the store)
        self.mirroring = EndpointSliceMirroring(self.store) if controllers else None
        self.slice_controller = EndpointSliceController(self.store) if controllers else None
        self.bookmark_interval = bookmark_interval
        self.token = token or "".join(random.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=32))
        self.request_log: list[RequestRecord] = []
        self.faults: list[FaultRule] = []
        self.watch_lag: dict[str, float] = {}  # User-Agent prefix -> seconds every watch event is late
        self._runner: web.AppRunner | None = None
        self._watch_tasks: set[asyncio.Task[Any]] = set()
        self._owns_state_dir = state_dir is None  # removed on exit: certs, key, kubeconfig
        self._state_dir = state_dir or tempfile.mkdtemp(prefix="epctl-kubeapi-")
        self.certs = serving_certs()

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> KubeAPIServer:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert_path = os.path.join(self._state_dir, "apiserver.crt")
        key_path = os.path.join(self._state_dir, "apiserver.key")
        _write_private(cert_path, self.certs.cert_pem)
        _write_private(key_path, self.certs.key_pem)
        context.load_cert_chain(cert_path, key_path)
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=context, reuse_address=True)
        await site.start()
        if self.port == 0:
            server: Any = site._server
            self.port = server.sockets[0].getsockname()[1]
        self.write_kubeconfig(self.kubeconfig_path)
        return self

    async def stop(self) -> None:
        """Close the listener and every connection; the stored state survives for :meth:`start`."""
        self.store.drop_watches()
        for task in list(self._watch_tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> KubeAPIServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        if self._owns_state_dir:
            shutil.rmtree(self._state_dir, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def kubeconfig_path(self) -> str:
        return os.path.join(self._state_dir, "kubeconfig")

    def kubeconfig(self) -> Obj:
        import base64
        return {
            "apiVersion": "v1", "kind": "Config", "current-context": "epctl-test", "preferences": {},
            "clusters": [{"name": "epctl-test", "cluster": {
                "server": self.url,
                "certificate-authority-data": base64.b64encode(self.certs.ca_pem).decode()}}],
            "users": [{"name": "epctl-test", "user": {"token": self.token}}],
            "contexts": [{"name": "epctl-test", "context": {"cluster": "epctl-test", "user": "epctl-test",
                                                            "namespace": "default"}}],
        }

    def write_kubeconfig(self, path: str) -> None:
        _write_private(path, yaml.safe_dump(self.kubeconfig()).encode())

    # --- test controls ----------------------------------------------------------------------------

    def inject_fault(self, rule: FaultRule) -> FaultRule:
        self.faults.append(rule)
        return rule

    def drop_watches(self) -> None:
        """Close every open watch stream (as when an apiserver instance goes away)."""
        self.store.drop_watches()

    def stall_watches(self) -> None:
        """Keep every open watch connected but send nothing more, not even bookmarks."""
        self.store.stall_watches()

    def lag_watches(self, user_agent: str, seconds: float) -> None:
        """Deliver every watch event to clients whose User-Agent starts with ``user_agent`` ``seconds``
        late (0: on time again), bookmarks included: a busy API server, or a watch cache behind etcd,
        as one replica sees it. Applies to watches open now and later."""
        if seconds > 0:
            self.watch_lag[user_agent] = seconds
        else:
            self.watch_lag.pop(user_agent, None)

    def _lag_for(self, user_agent: str) -> float:
        return max((lag for prefix, lag in self.watch_lag.items() if user_agent.startswith(prefix)), default=0.0)

    def compact(self) -> None:
        """Forget the event history so any watch from an older resourceVersion gets 410 Gone."""
        self.store.compact()

    def writes(self, resource: str | None = None, since: int = 0) -> list[RequestRecord]:
        """Successful writes in the request log (optionally for one resource) from index ``since``."""
        return [r for r in self.request_log[since:]
                if r.is_write and r.code < 400 and (resource is None or r.resource == resource)]

    # --- HTTP -------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        record = RequestRecord("", "", "", "", "", 0, user_agent=request.headers.get("User-Agent", ""),
                               time=time.monotonic())
        try:
            route = self._route(request.path)
            public = request.path in ("/version", "/healthz", "/livez", "/readyz")
            if not public:
                self._authenticate(request)
            if route.discovery is not None:
                record.verb = "get"
                record.code = 200
                self.request_log.append(record)
                return web.json_response(route.discovery)
            verb = self._verb(request, route)
            record.verb, record.resource, record.group = verb, route.plural, route.group
            record.subresource = route.subresource
            record.namespace, record.name = route.namespace or "", route.name or ""
            rule = await self._apply_faults(record)
            if verb == "watch":
                record.code = 200
                self.request_log.append(record)
                return await self._watch(request, route)
            response = await self._dispatch(request, route, verb)
            record.code = response.status
            if rule is not None and rule.respond_after:
                await asyncio.sleep(rule.respond_after)
            if record.is_write:
                record.concerns = _concerns(request.get(_OBJECT))
        except StatusError as err:
            record.code = err.code
            response = web.json_response(err.to_status(), status=err.code, headers=err.headers)
        except Exception as err:  # a bug in the test server must look like a 500, not hang the client
            log.exception("internal error serving %s %s", request.method, request.path)
            record.code = 500
            status = StatusError(500, "InternalError", f"Internal error occurred: {err!r}")
            response = web.json_response(status.to_status(), status=500)
        self.request_log.append(record)
        return response

    def _authenticate(self, request: web.Request) -> None:
        if request.headers.get("Authorization", "") != f"Bearer {self.token}":
            raise apierrors.unauthorized()

    async def _apply_faults(self, record: RequestRecord) -> FaultRule | None:
        for rule in list(self.faults):
            if rule.count > 0 and rule.matches(record.verb, record.resource, record.subresource, record.namespace,
                                               record.name, record.user_agent):
                rule.count -= 1
                if rule.count == 0:
                    self.faults.remove(rule)
                if rule.delay:
                    await asyncio.sleep(rule.delay)
                if rule.code:
                    raise apierrors.injected(rule.code, rule.retry_after)
                return rule
        return None

    def _route(self, path: str) -> Route:
        parts = [p for p in path.split("/") if p]
        if path == "/version":
            return Route(discovery=SERVER_VERSION)
        if path in ("/healthz", "/livez", "/readyz"):
            return Route(discovery={"status": "ok"})
        if parts == ["api"]:
            return Route(discovery={"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}]})
        if parts == ["apis"]:
            return Route(discovery=self._group_list())
        if parts[:1] == ["openapi"]:
            if parts == ["openapi", "v3"]:
                return Route(discovery=openapi_v3_index(self._group_versions()))
            if len(parts) >= 3 and parts[1] == "v3":
                prefix = "/".join(parts[2:])
                return Route(discovery=openapi_v3_document(prefix, self._types_in("/".join(parts[3:]))))
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 2:
            if len(parts) == 2:
                return Route(discovery=self._group(parts[1]))
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        served = {k[2]: rt for k, rt in self.store.types.items() if k[0] == group and k[1] == version}
        if not served:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return Route(discovery=self._resource_list(group, version))
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] in served and served[rest[2]].namespaced:
            namespace, rest = rest[1], rest[2:]
        rt = served.get(rest[0])
        if rt is None or len(rest) > 3:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) >= 2 else None
        sub = rest[2] if len(rest) == 3 else ""
        if sub and not (sub == "status" and rt.status_subresource) and not (
                rt.plural == "namespaces" and sub == "finalize"):
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        if namespace is None and rt.namespaced and name is not None:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        return Route(rt, namespace, name, sub, plural=rt.plural, group=rt.group)

    @staticmethod
    def _verb(request: web.Request, route: Route) -> str:
        method, collection = request.method, route.name is None
        if method == "GET":
            if request.query.get("watch") in ("1", "true", "True"):
                return "watch"
            return "list" if collection else "get"
        if method == "POST" and collection:
            return "create"
        if method == "PUT" and not collection:
            return "update"
        if method == "PATCH" and not collection:
            return "patch"
        if method == "DELETE":
            return "deletecollection" if collection else "delete"
        raise apierrors.method_not_allowed()

    # --- discovery ----------------------------------------------------------------------------------

    def _group_versions(self) -> list[str]:
        return sorted({rt.api_version for rt in self.store.types.values()})

    def _types_in(self, group_version: str) -> list[ResourceType]:
        return [rt for rt in self.store.types.values() if rt.api_version == group_version]

    def _group(self, group: str) -> Obj:
        versions = sorted({rt.version for rt in self.store.types.values() if rt.group == group}, reverse=True)
        if not versions:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": entries,
                "preferredVersion": entries[0]}

    def _group_list(self) -> Obj:
        groups = sorted({rt.group for rt in self.store.types.values() if rt.group})
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [{k: v for k, v in self._group(g).items() if k not in ("kind", "apiVersion")}
                           for g in groups]}

    def _resource_list(self, group: str, version: str) -> Obj:
        resources = []
        for rt in sorted(self._types_in(f"{group}/{version}" if group else version), key=lambda r: r.plural):
            entry: Obj = {"name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
                          "kind": rt.kind, "verbs": list(ALL_VERBS)}
            if rt.short_names:
                entry["shortNames"] = list(rt.short_names)
            if rt.categories:
                entry["categories"] = list(rt.categories)
            resources.append(entry)
            if rt.status_subresource:
                resources.append({"name": f"{rt.plural}/status", "singularName": "", "namespaced": rt.namespaced,
                                  "kind": rt.kind, "verbs": ["get", "patch", "update"]})
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": resources}

    # --- verbs ----------------------------------------------------------------------------------------

    async def _body(self, request: web.Request, yaml_ok: bool = False) -> Any:
        raw = await request.read()
        if "protobuf" in request.headers.get("Content-Type", ""):
            # kubectl's typed generators (``kubectl create configmap``...) always send protobuf
            try:
                return decode_object(raw)
            except ProtobufError as err:
                raise StatusError(415, "UnsupportedMediaType", str(err)) from None
        if not raw:
            return None
        try:
            value = yaml.safe_load(raw) if yaml_ok else json.loads(raw)
        except (ValueError, yaml.YAMLError) as err:
            raise apierrors.bad_request(f"error decoding request body: {err}") from None
        return _without_lone_surrogates(value) if _SURROGATE_ESCAPE.search(raw) else value

    @staticmethod
    def _manager(request: web.Request) -> str:
        manager = request.query.get("fieldManager")
        if manager:
            return manager
        agent = request.headers.get("User-Agent", "unknown")
        return agent.split("/", 1)[0] or "unknown"

    async def _dispatch(self, request: web.Request, route: Route, verb: str) -> web.Response:
        rt = route.rt
        assert rt is not None
        query = request.query
        dry_run = query.get("dryRun") == "All"
        validation = query.get("fieldValidation", "Warn")
        manager = self._manager(request)
        if verb == "get":
            assert route.name is not None
            return self._object_response(request, rt, self.store.get(rt, route.namespace, route.name))
        if verb == "list":
            matches = make_filter(query.get("labelSelector"), query.get("fieldSelector"), rt.field_selectors)
            limit = int(query.get("limit", "0") or 0)
            items, rv, cont, remaining = self.store.list_objects(rt, route.namespace, matches, limit,
                                                                 query.get("continue"))
            meta: Obj = {"resourceVersion": str(rv)}
            if cont:
                meta["continue"] = cont
                meta["remainingItemCount"] = remaining
            if _wants_table(request):
                return web.json_response(render_table(rt, items, meta, query.get("includeObject", "Metadata")))
            if not rt.crd:
                items = [{k: v for k, v in o.items() if k not in ("apiVersion", "kind")} for o in items]
            return web.json_response({"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": meta,
                                      "items": items})
        if verb == "create":
            body = await self._body(request)
            result = self.store.create(rt, route.namespace, body, dry_run=dry_run, manager=manager,
                                       field_validation=validation)
            return self._object_response(request, rt, result.obj, 201, result.warnings)
        if verb == "update":
            assert route.name is not None
            body = await self._body(request)
            result = self.store.update(rt, route.namespace, route.name, body, subresource=route.subresource or None,
                                       dry_run=dry_run, manager=manager, field_validation=validation)
            return self._object_response(request, rt, result.obj, 201 if result.created else 200, result.warnings)
        if verb == "patch":
            assert route.name is not None
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            patch_type = PATCH_TYPES.get(content_type)
            if patch_type is None or patch_type == "unsupported":
                raise apierrors.unsupported_media_type(content_type)
            body = await self._body(request, yaml_ok=patch_type == "apply")
            if patch_type == "apply" and not query.get("fieldManager"):
                raise apierrors.bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required "
                                            "value: is required for apply patch")
            result = self.store.patch(rt, route.namespace, route.name, patch_type, body,
                                      subresource=route.subresource or None, dry_run=dry_run, manager=manager,
                                      force=query.get("force") in ("true", "1"), field_validation=validation)
            return self._object_response(request, rt, result.obj, 201 if result.created else 200, result.warnings)
        if verb == "delete":
            assert route.name is not None
            options = await self._body(request) or {}
            if "propagationPolicy" in query:
                options["propagationPolicy"] = query["propagationPolicy"]
            obj = self.store.delete(rt, route.namespace, route.name, options, dry_run=dry_run)
            return self._object_response(request, rt, obj)
        if verb == "deletecollection":
            matches = make_filter(query.get("labelSelector"), query.get("fieldSelector"), rt.field_selectors)
            options = await self._body(request) or {}
            deleted = self.store.delete_collection(rt, route.namespace, matches, options)
            return web.json_response({"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                                      "metadata": {"resourceVersion": str(self.store.rv)}, "items": deleted})
        raise apierrors.method_not_allowed()

    def _object_response(self, request: web.Request, rt: ResourceType, obj: Obj, status: int = 200,
                         warnings: list[str] | None = None) -> web.Response:
        headers = {"Warning": ", ".join(f'299 - "{w}"' for w in warnings)} if warnings else None
        request[_OBJECT] = obj
        if _wants_table(request):
            meta = {"resourceVersion": obj["metadata"].get("resourceVersion", "")}
            body = render_table(rt, [obj], meta, request.query.get("includeObject", "Metadata"))
            return web.json_response(body, status=status, headers=headers)
        return web.json_response(obj, status=status, headers=headers)

    async def _watch(self, request: web.Request, route: Route) -> web.StreamResponse:
        rt = route.rt
        assert rt is not None
        query = request.query
        field_selector = query.get("fieldSelector")
        if route.name is not None:
            field_selector = f"metadata.name={route.name}" + (f",{field_selector}" if field_selector else "")
        matches = make_filter(query.get("labelSelector"), field_selector, rt.field_selectors)
        timeout = float(query.get("timeoutSeconds") or random.uniform(1800, 3600))
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        table = _wants_table(request)
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            watcher = self.store.watch(rt, route.namespace, matches, query.get("resourceVersion"))
        except StatusError as err:
            if err.code != 410:
                raise
            await response.prepare(request)
            await response.write(json.dumps({"type": "ERROR", "object": err.to_status()}).encode() + b"\n")
            await response.write_eof()
            return response
        task = asyncio.current_task()
        assert task is not None
        self._watch_tasks.add(task)
        user_agent = request.headers.get("User-Agent", "")
        stamped: asyncio.Queue[tuple[float, tuple[str, Obj] | None]] = asyncio.Queue()

        async def stamp() -> None:  # when each event happened, so a lagging watch delivers it late
            while True:
                got = await watcher.queue.get()
                stamped.put_nowait((time.monotonic(), got))

        stamper = asyncio.create_task(stamp())
        try:
            await response.prepare(request)
            deadline = time.monotonic() + timeout
            next_bookmark = time.monotonic() + self.bookmark_interval
            while True:
                now = time.monotonic()
                if now >= deadline:
                    break
                wait = min(deadline, next_bookmark if bookmarks else deadline) - now
                try:
                    happened, item = await within(max(wait, 0.001), stamped.get())
                    lag = self._lag_for(user_agent)
                    if lag:
                        await asyncio.sleep(max(0.0, happened + lag - time.monotonic()))
                except TimeoutError:
                    if bookmarks and time.monotonic() >= next_bookmark:
                        next_bookmark = time.monotonic() + self.bookmark_interval
                        if watcher.queue.empty() and stamped.empty() and not watcher.stalled:
                            mark = {"kind": rt.kind, "apiVersion": rt.api_version,
                                    "metadata": {"resourceVersion": str(self.store.rv)}}
                            await response.write(json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n")
                    continue
                if item is None:
                    break
                type_, obj = item
                out = self.store.present(rt, obj)
                if table:
                    out = render_table(rt, [out], {"resourceVersion": obj["metadata"]["resourceVersion"]},
                                       query.get("includeObject", "Metadata"))
                await response.write(json.dumps({"type": type_, "object": out}).encode() + b"\n")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            stamper.cancel()
            self.store.stop_watch(watcher)
            self._watch_tasks.discard(task)
        return response


# the object a request returned, for the request log (RequestKey from aiohttp 3.10; a str before)
_OBJECT: Any = web.RequestKey("epctl.object", dict) if hasattr(web, "RequestKey") else "epctl.object"


def _concerns(obj: Obj | None) -> str:
    """The Service a written object is about: a slice's service-name label, an Event's involved
    object, else the object's own name (Service, Endpoints, ClusterEndpoint of the same name)."""
    if not isinstance(obj, dict):
        return ""
    if isinstance(obj.get("involvedObject"), dict):
        return str(obj["involvedObject"].get("name", ""))
    meta = obj.get("metadata") or {}
    return str((meta.get("labels") or {}).get("kubernetes.io/service-name") or meta.get("name", ""))


def _write_private(path: str, data: bytes) -> None:
    """Write a small file readable only by us (keys, tokens); tiny, so blocking I/O is fine."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _wants_table(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return bool(re.search(r"as=Table", accept)) and "g=meta.k8s.io" in accept


async def serve_forever(port: int, allow_loopback: bool, kubeconfig_out: str | None) -> None:
    """``epctl dev-apiserver``: run until interrupted, printing where the kubeconfig is."""
    async with KubeAPIServer(port=port, allow_loopback=allow_loopback) as api:
        path = api.kubeconfig_path
        if kubeconfig_out:
            api.write_kubeconfig(kubeconfig_out)
            path = kubeconfig_out
        print(f"epctl dev-apiserver listening on {api.url}")
        print(f"kubeconfig: {path}")
        print(f"try: KUBECONFIG={path} kubectl get namespaces", flush=True)
        await asyncio.Event().wait()
