"""List + watch + cache for one resource, the way client-go's reflector does it, with raw dicts.

Lifecycle of :meth:`Informer.run` (docs/design.md section 7):

1. List in pages (``limit``/``continue``) and diff the result against the cache, so a relist
   after 410 Gone delivers exactly the ADDED / MODIFIED / DELETED that were missed. Subscribers
   never lose a deletion.
2. Watch from the list's resourceVersion with bookmarks and a randomised server ``timeoutSeconds``
   (5-10 min, so a fleet of informers does not reconnect in step). The read timeout is the
   inactivity deadline: no event and no bookmark for that long means a dead stream; reconnect.
3. A server-closed watch reconnects at once from the last seen resourceVersion. 410 (as HTTP code
   or ERROR event) relists. Any other failure backs off exponentially with jitter (1 s -> 60 s).

Subscribers are plain callbacks (run inline, so keep them cheap) or async iterators.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

from epctl.kube.backoff import Backoff
from epctl.kube.client import INACTIVITY, ApiError, KubeClient, Resource
from epctl.kube.frozen import FrozenCache
from epctl.tasks import cancel_and_wait, ensure_running, within

log = logging.getLogger(__name__)
Obj = dict[str, Any]


@dataclass(frozen=True)
class InformerEvent:
    """``type`` is ADDED, MODIFIED or DELETED; ``old`` is the cached object before the change."""

    type: str
    obj: Obj
    old: Obj | None = None

    @property
    def key(self) -> str:
        return object_key(self.obj)


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def slim(obj: Obj, last_applied: bool = False, keep_managers_of: tuple[str, ...] = ()) -> Obj:
    """Drop ``metadata.managedFields`` (server-side apply bookkeeping) from a cached object, and with
    ``last_applied`` kubectl's last-applied annotation (a second copy of the whole object on
    everything applied with ``kubectl apply``).

    Nothing in epctl reads them, and at thousands of objects they are a large share of the cache's
    memory (controller-runtime strips managedFields by default for the same reason). The annotation
    is kept where epctl may write the cached object back (an adopted Endpoints keeps what others set).

    ``keep_managers_of``: annotation keys whose managers (who set them, when) are kept, as
    ``managedFields`` entries reduced to manager, operation and time (who drained a host).
    """
    meta = obj.get("metadata", {})
    entries = meta.pop("managedFields", None) or []
    present = [k for k in keep_managers_of if k in (meta.get("annotations") or {})]
    if present and isinstance(entries, list):
        kept = [{"manager": e.get("manager", ""), "operation": e.get("operation", ""), "time": e.get("time", ""),
                 "annotations": [k for k in present if f"f:{k}" in (((e.get("fieldsV1") or {}).get(
                     "f:metadata") or {}).get("f:annotations") or {})]} for e in entries if isinstance(e, dict)]
        kept = [e for e in kept if e["annotations"]]
        if kept:
            meta["managedFields"] = kept
    annotations = meta.get("annotations")
    if last_applied and annotations and LAST_APPLIED in annotations:
        del annotations[LAST_APPLIED]
    return obj


# values that are unique to one object (or one write of it): interning them would only grow the table
_UNIQUE = frozenset({"uid", "resourceVersion", "creationTimestamp", "deletionTimestamp"})
_intern = sys.intern


def compact(obj: Any) -> Any:
    """The same JSON value with every mapping key and every short string value interned.

    A watch decodes each event on its own, so without this every cached object carries its own
    copy of "metadata", "addresses", "conditions", its namespace, its label keys and values, the
    host addresses it shares with its ClusterEndpoint, slice and Endpoints... With thousands of
    objects those copies were a large share of the caches (docs/performance.md, memory). Nothing
    is dropped and the types stay dict/list/str, so every reader, and a read-modify-write that sends
    a cached object back, sees exactly what the server sent. Dicts are rebuilt (a key cannot be
    swapped in place); lists are changed in place."""
    if isinstance(obj, dict):
        if obj and all(v is None or type(v) is bool for v in obj.values()):
            return _flags(obj)
        return {_intern(k) if type(k) is str else k:
                (v if k in _UNIQUE else _intern(v) if type(v) is str and len(v) <= 64 else compact(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            if type(v) is str:
                if len(v) <= 64:
                    obj[i] = _intern(v)
            elif isinstance(v, (dict, list)):
                obj[i] = compact(v)
    return obj


class SharedFlags(dict[str, Any]):
    """A flag mapping shared by many cached objects: reads as a dict (JSON encoding included), refuses
    every change in place with TypeError. Editing one would silently change it on every endpoint of
    every cached slice that shares it; a copy (``dict(x)``, ``copy.deepcopy``) is a plain dict."""

    def _refuse(self, *_args: Any, **_kwargs: Any) -> Any:
        raise TypeError("a shared cached mapping (epctl.kube.informer.compact): copy it before changing it")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return dict(self)  # values are booleans or None

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


_FLAGS: dict[tuple[tuple[str, bool | None], ...], Obj] = {}  # one shared dict per distinct flag set
_FLAGS_MAX = 4096


def _flags(obj: Obj) -> Obj:
    """A mapping of only booleans (an EndpointSlice endpoint's ``conditions``: one of a handful of
    variants, on every endpoint of every slice) shared by every cached object that has it. Cached
    objects are read-only to every consumer (as client-go's are): a writer builds new objects from
    them, it never edits one in place. Bounded: past ``_FLAGS_MAX`` variants a new one is not shared."""
    key = tuple(obj.items())
    shared = _FLAGS.get(key)
    if shared is None:
        shared = SharedFlags({_intern(k): v for k, v in obj.items()})
        if len(_FLAGS) < _FLAGS_MAX:
            _FLAGS[key] = shared
    return shared


def uid_of(obj: Obj | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("uid") or "")


def object_key(obj: Obj) -> str:
    meta = obj.get("metadata", {})
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else str(meta["name"])


# why a watch is (re)opened; an HTTP error adds "http_<code>"
RESTART_REASONS = ("closed", "expired", "inactivity", "connection", "decode")


class InformerMetrics(Protocol):
    """Hooks for Prometheus (see epctl.metrics); every method must be cheap and never raise."""

    def known(self, resource: str) -> None: ...  # the informer exists: its series start at 0
    def event(self, resource: str, type_: str) -> None: ...
    def restart(self, resource: str, reason: str) -> None: ...
    def relist(self, resource: str) -> None: ...


def _not_older(seen: str, wanted: str) -> bool:
    if not wanted:
        return True
    if seen.isdigit() and wanted.isdigit():
        return int(seen) >= int(wanted)
    return seen == wanted


class _Relist(Exception):
    """The watch's resourceVersion is gone from the server's history (410): list again."""


class Informer:
    """Keeps ``cache`` equal to the server's view of ``resource`` (filtered by the selectors)."""

    def __init__(self, client: KubeClient, resource: Resource, namespace: str | None = None, *,
                 label_selector: str | None = None, field_selector: str | None = None, page_size: int = 500,
                 inactivity_timeout: float = 75.0, connect_timeout: float = 10.0,
                 watch_timeout_range: tuple[int, int] = (300, 600), backoff: Backoff | None = None,
                 metrics: InformerMetrics | None = None, name: str | None = None,
                 drop_last_applied: bool = False, keep_managers_of: tuple[str, ...] = (),
                 trim: Callable[[Obj], None] | None = None, frozen: bool = False,
                 intern: bool | None = None) -> None:
        self.client, self.resource, self.namespace = client, resource, namespace
        self.drop_last_applied = drop_last_applied  # only for objects epctl never writes back whole
        self.keep_managers_of = keep_managers_of  # see slim()
        self.trim = trim  # drops, in place, what no consumer reads (a Node's images list is most of it)
        self.label_selector, self.field_selector = label_selector, field_selector
        self.page_size = page_size
        self.inactivity_timeout, self.connect_timeout = inactivity_timeout, connect_timeout
        self.watch_timeout_range = watch_timeout_range
        self.backoff = backoff or Backoff(1.0, 60.0)
        self.metrics = metrics
        self.name = name or resource.plural
        if metrics is not None:
            metrics.known(self.name)
        # frozen: objects kept as deflated JSON, decoded on every read (epctl.kube.frozen). intern: the
        # objects events carry are compacted (see compact()); by default only when not frozen, as a
        # subscriber of a frozen cache keeps nothing of them (one that keeps parts asks for it)
        self.intern = not frozen if intern is None else intern
        self.cache: MutableMapping[str, Obj] = FrozenCache() if frozen else {}
        self._index_of: Callable[[Obj], str | None] | None = None
        self._index: dict[str, dict[str, None]] = {}  # index value -> cache keys (an ordered set)
        self._indexed_as: dict[str, str] = {}  # cache key -> its index value
        self.synced = asyncio.Event()
        self._resource_version = ""
        self._advanced = asyncio.Event()  # set whenever resource_version moves
        self.watching = False
        self.watch_lost_at: float | None = None  # monotonic time the last live watch ended (None: live)
        # True while a (re)list's differences are being delivered one object at a time: a subscriber
        # that renders the whole cache waits for the on_synced callback instead of showing a half state
        self.relisting = False
        self._callbacks: list[Callable[[InformerEvent], None]] = []
        self._synced_callbacks: list[Callable[[], None]] = []
        self._queues: list[asyncio.Queue[InformerEvent]] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def resource_version(self) -> str:
        """The newest resourceVersion this cache has seen (a list, an event or a bookmark)."""
        return self._resource_version

    @resource_version.setter
    def resource_version(self, value: str) -> None:
        self._resource_version = value
        self._advanced.set()

    async def caught_up(self, resource_version: str, timeout: float) -> bool:
        """Wait until this cache has seen ``resource_version`` (or later), at most ``timeout`` seconds.

        resourceVersions are opaque by contract, but kube-apiserver's are etcd revisions, one counter
        for every resource, and a watch delivers them in order: a cache that has seen revision N
        holds every change of its resource up to N. Used where a decision must start from state at
        least as new as something seen elsewhere (a shard takeover, docs/design.md section 8)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not _not_older(self._resource_version, resource_version):
            self._advanced.clear()
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await within(left, self._advanced.wait())
            except TimeoutError:
                return False
        return True

    # --- subscription ---------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[InformerEvent], None]) -> None:
        """Call ``callback`` for every change, in order, from the informer's task."""
        self._callbacks.append(callback)

    def on_synced(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every completed (re)list, when the cache is whole again."""
        self._synced_callbacks.append(callback)

    async def events(self, replay: bool = True) -> AsyncIterator[InformerEvent]:
        """Iterate over changes; with ``replay`` first yield ADDED for what is already cached."""
        queue: asyncio.Queue[InformerEvent] = asyncio.Queue()
        if replay:
            for obj in list(self.cache.values()):
                queue.put_nowait(InformerEvent("ADDED", obj))
        self._queues.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.remove(queue)

    def _dispatch(self, event: InformerEvent) -> None:
        if self.metrics:
            self.metrics.event(self.name, event.type)
        for callback in self._callbacks:
            try:
                callback(event)
            except Exception:  # one broken subscriber must not stop the others or the informer
                log.exception("informer subscriber failed", extra={"informer": self.name})
        for queue in self._queues:
            queue.put_nowait(event)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        self._task = ensure_running(self._task, self.run, f"informer:{self.name}")
        return self._task

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def wait_synced(self, timeout: float | None = None) -> None:
        await within(timeout, self.synced.wait())

    def get(self, namespace: str | None, name: str) -> Obj | None:
        return self.cache.get(f"{namespace}/{name}" if namespace else name)

    def peek(self, namespace: str | None, name: str) -> Obj | None:
        """As :meth:`get`, for a reader that never changes what it reads: a frozen cache then decodes
        a burst of reads of one object once (``FrozenCache.peek``); a dict cache's objects are shared
        read-only anyway."""
        return self._peek(f"{namespace}/{name}" if namespace else name)

    def _peek(self, key: str) -> Obj | None:
        """The cached object as an event's ``old`` (read-only, like every event object): our own
        write's echo usually finds it still decoded from the writer's read just before."""
        cache = self.cache
        return cache.peek(key) if isinstance(cache, FrozenCache) else cache.get(key)

    def index_by(self, func: Callable[[Obj], str | None]) -> None:
        """Keep the cache indexed by ``func(obj)`` (one index, like a client-go Indexer): with thousands
        of Services, finding one Service's slices by scanning the whole cache made every write O(N)."""
        self._index_of = func
        self._index, self._indexed_as = {}, {}
        for key, obj in self.cache.items():
            self._add_to_index(key, obj)

    @property
    def has_index(self) -> bool:
        return self._index_of is not None

    def indexed(self, value: str) -> list[Obj]:
        """The cached objects whose index value is ``value`` (see :meth:`index_by`), read-only (as
        :meth:`peek`: every caller plans from them and builds new objects)."""
        if self._index_of is None:
            raise RuntimeError(f"informer {self.name}: no index (index_by was never called)")
        cache = self.cache
        keys = self._index.get(value, ())
        if isinstance(cache, FrozenCache):
            return [cache.peek_raw(cache.raw(key)) for key in keys]
        return [cache[key] for key in keys]

    def _add_to_index(self, key: str, obj: Obj) -> None:
        value = self._index_of(obj) if self._index_of else None
        if value is not None:
            self._index.setdefault(value, {})[key] = None
            self._indexed_as[key] = value

    def _remove_from_index(self, key: str) -> None:
        value = self._indexed_as.pop(key, None)
        bucket = self._index.get(value) if value is not None else None
        if bucket is None:
            return
        bucket.pop(key, None)
        if not bucket:
            del self._index[value]  # type: ignore[arg-type]

    def _put(self, key: str, obj: Obj) -> None:
        self._remove_from_index(key)
        self.cache[key] = obj
        self._add_to_index(key, obj)

    def _pop(self, key: str) -> Obj | None:
        old = self.cache.pop(key, None)
        self._remove_from_index(key)
        return old

    async def run(self) -> None:
        """Run forever (until cancelled): list, watch, recover."""
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
                self._restarted("closed")  # server ended the stream (timeoutSeconds): resume at once
            except _Relist:
                need_list = True
                self._restarted("expired")
                if self.metrics:
                    self.metrics.relist(self.name)
            except ApiError as err:
                self._lost()
                reason = "inactivity" if err.reason == INACTIVITY else (
                    "connection" if err.code == 0 else f"http_{err.code}")
                self._restarted(reason)
                if reason == "inactivity":
                    continue
                delay = self.backoff.next_delay(err.retry_after or 0.0)
                log.warning("%s: watch failed (%s); retrying in %.1fs", self.name, err, delay,
                            extra={"informer": self.name, "retry_in": round(delay, 2)})
                await asyncio.sleep(delay)
            except (ValueError, KeyError, TypeError) as err:  # a malformed answer: treat like a server error
                self._lost()
                self._restarted("decode")
                delay = self.backoff.next_delay()
                log.warning("bad data from the API server; relisting", extra={"informer": self.name,
                                                                               "error": repr(err)})
                need_list = True
                await asyncio.sleep(delay)

    def _restarted(self, reason: str) -> None:
        if self.metrics:
            self.metrics.restart(self.name, reason)
        log.debug("watch restart", extra={"informer": self.name, "reason": reason})

    def _query(self) -> dict[str, Any]:
        return {"labelSelector": self.label_selector, "fieldSelector": self.field_selector}

    async def _list(self) -> None:
        items: dict[str, Obj] = {}
        cont: str | None = None
        while True:
            try:
                page = await self.client.request(
                    "GET", self.resource.path(self.namespace),
                    query={**self._query(), "limit": self.page_size, "continue": cont},
                    timeout=(self.connect_timeout, 60.0))
            except ApiError as err:
                if err.code == 410 and cont:  # continue token expired mid-list: start over
                    items, cont = {}, None
                    continue
                raise
            for obj in page.get("items") or []:
                slim(obj, self.drop_last_applied, self.keep_managers_of)
                if self.trim is not None:
                    self.trim(obj)
                obj.setdefault("apiVersion", self.resource.api_version)
                obj.setdefault("kind", self.resource.kind)
                if self.intern:
                    obj = compact(obj)
                items[object_key(obj)] = obj
            cont = page.get("metadata", {}).get("continue") or None
            if not cont:
                self.resource_version = page.get("metadata", {}).get("resourceVersion", "")
                break
        self._replace(items)
        self.synced.set()
        for callback in self._synced_callbacks:
            try:
                callback()
            except Exception:
                log.exception("informer sync callback failed", extra={"informer": self.name})

    def _replace(self, items: dict[str, Obj]) -> None:
        """Make the cache equal to a fresh list and tell subscribers what changed.

        An object's identity is its uid: one that was deleted and re-created under the same name
        while we were not watching arrives here as the same key with another uid, and is delivered
        as what it is, a DELETED of the old object followed by an ADDED of the new one.
        """
        self.relisting = True
        try:
            for key in [k for k in self.cache if k not in items or uid_of(items[k]) != uid_of(self._peek(k))]:
                self._dispatch(InformerEvent("DELETED", self._pop(key) or {}, None))
            for key, obj in items.items():
                old = self._peek(key)
                self._put(key, obj)
                if old is None:
                    self._dispatch(InformerEvent("ADDED", obj))
                elif old.get("metadata", {}).get("resourceVersion") != obj.get("metadata", {}).get("resourceVersion"):
                    self._dispatch(InformerEvent("MODIFIED", obj, old))
        finally:
            self.relisting = False

    async def _watch(self) -> None:
        query = {**self._query(), "watch": "true", "allowWatchBookmarks": "true",
                 "resourceVersion": self.resource_version,
                 "timeoutSeconds": random.randint(*self.watch_timeout_range)}
        try:
            async for event in self.client.stream(self.resource.path(self.namespace), query,
                                                  timeout=(self.connect_timeout, self.inactivity_timeout),
                                                  on_open=self._opened):
                self._handle(event)
        except ApiError as err:
            if err.code == 410:
                raise _Relist() from err
            raise
        finally:
            self._lost()

    def _opened(self) -> None:
        self.watching = True
        self.watch_lost_at = None

    def _lost(self) -> None:
        if self.watching or self.watch_lost_at is None:
            self.watch_lost_at = time.monotonic()
        self.watching = False

    def _handle(self, event: Obj) -> None:
        type_, obj = event.get("type"), event.get("object") or {}
        if type_ == "ERROR":
            if obj.get("code") == 410:
                raise _Relist()
            raise ApiError(int(obj.get("code") or 500), obj.get("reason", "Error"), obj.get("message", ""), obj)
        rv = obj.get("metadata", {}).get("resourceVersion")
        if type_ == "BOOKMARK":
            if rv:
                self.resource_version = rv
            self.backoff.reset()
            return
        if type_ not in ("ADDED", "MODIFIED", "DELETED"):
            raise ValueError(f"unknown watch event type {type_!r}")
        slim(obj, self.drop_last_applied, self.keep_managers_of)
        if self.trim is not None:
            self.trim(obj)
        if self.intern:
            obj = compact(obj)
        key = object_key(obj)
        old = self._peek(key)
        if old is not None and type_ != "DELETED" and uid_of(old) != uid_of(obj):
            # a stream never does this, but a cache that missed a deletion would: same rule as a relist
            self._pop(key)
            self._dispatch(InformerEvent("DELETED", old, None))
            old = None
        if type_ == "DELETED":
            self._pop(key)
        else:
            self._put(key, obj)
            if old is None:
                type_ = "ADDED"  # client-go semantics: first sight of an object is an add
        if rv:
            self.resource_version = rv
        self.backoff.reset()
        self._dispatch(InformerEvent(type_, obj, old))
