"""The in-memory object store behind the test API server: etcd + the generic registry.

What it keeps like kube-apiserver does:
- one global resourceVersion counter, rendered as strings; a write that changes nothing is a no-op
  (same resourceVersion, no watch event), as with etcd's GuaranteedUpdate;
- a bounded event history; a watch or continue token older than it gets 410 Expired;
- watches that start from "" / "0" (synthetic ADDED of current state) or from an exact version,
  and turn selector transitions into ADDED/DELETED the way the watch cache does;
- generation bumped on spec changes, status subresource split, finalizers and deletionTimestamp,
  ownerReference garbage collection (background, foreground, orphan) and namespace cleanup, all
  asynchronous after the request like the real controllers.

Stored objects are never mutated in place: every write stores a new dict. That makes a list page
snapshot a plain list of references.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import json
import random
import string
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from epctl.testing import apierrors, schema
from epctl.testing.apierrors import FieldCause, StatusError
from epctl.testing.builtins import ResourceType, ValidationContext, builtin_types, validate_metadata, validate_name
from epctl.testing.patching import Path, fields_from_v1, fields_to_v1, leaf_paths, record_update

_MISSING = object()

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects
Filter = Callable[[Obj], bool]

GENERATION_TYPES = {"services", "endpointslices", "deployments", "poddisruptionbudgets",
                    "customresourcedefinitions"}
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Event:
    rv: int
    storage_key: tuple[str, str]
    type: str
    obj: Obj
    old: Obj | None


@dataclass(eq=False)
class Watcher:
    """A live watch: the HTTP layer drains ``queue``; ``None`` in the queue means "close"."""

    storage_key: tuple[str, str]
    namespace: str | None
    matches: Filter
    queue: asyncio.Queue[tuple[str, Obj] | None] = field(default_factory=asyncio.Queue)
    stalled: bool = False


@dataclass
class WriteResult:
    obj: Obj
    created: bool = False
    warnings: list[str] = field(default_factory=list)


class ObjectStore:
    """All objects of all resources, the resourceVersion clock, history and watchers."""

    def __init__(self, *, allow_loopback: bool = False, history_window: int = 10_000) -> None:
        self.allow_loopback = allow_loopback
        self.history_window = history_window
        self.rv = 0
        self.compacted_rv = 0
        self.history: deque[Event] = deque()
        self.watchers: set[Watcher] = set()
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        self.objects: dict[tuple[str, str], dict[Key, Obj]] = {}
        self.managers: dict[tuple[tuple[str, str], Key], dict[tuple[str, str], set[Path]]] = {}
        self.uid_index: dict[str, tuple[tuple[str, str], Key]] = {}
        self._snapshots: dict[str, tuple[int, list[Obj]]] = {}
        self._snapshot_ids = itertools.count(1)
        self._gc_scheduled = False
        self.gc_paused = False  # kube-controller-manager down or busy: deletions wait for the collector
        # the collector's graph, as kube-controller-manager's GraphBuilder keeps it: owner uid -> the
        # objects naming it, and the objects to look at (attemptToDelete); only what a change touched
        # is examined, never the whole store (that made every write cost O(objects))
        self._dependents_of: dict[str, set[tuple[tuple[str, str], Key]]] = {}
        self._gc_queue: dict[tuple[tuple[str, str], Key], None] = {}
        # controllers emulated beside the store (epctl.testing.kcm) hear of every committed change
        self.listeners: list[Callable[[ResourceType, Obj], None]] = []
        self._ip_counter = itertools.count(10)
        self._node_ports = itertools.count(30000)
        for rt in builtin_types():
            self.register(rt)
        for name in INITIAL_NAMESPACES:
            self.create(self.type_for("", "v1", "namespaces"), None,
                        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    # --- resource registry ----------------------------------------------------------------------

    def register(self, rt: ResourceType) -> None:
        self.types[(rt.group, rt.version, rt.plural)] = rt
        self.objects.setdefault(rt.storage_key, {})

    def unregister_group_resource(self, group: str, plural: str) -> None:
        for key in [k for k in self.types if k[0] == group and k[2] == plural]:
            del self.types[key]

    def type_for(self, group: str, version: str, plural: str) -> ResourceType:
        rt = self.types.get((group, version, plural))
        if rt is None:
            raise StatusError(404, "NotFound", "the server could not find the requested resource")
        return rt

    def ctx(self) -> ValidationContext:
        return ValidationContext(self.allow_loopback, self._allocate_ip, lambda: next(self._node_ports))

    def _allocate_ip(self) -> str:
        n = next(self._ip_counter)
        return f"10.96.{n // 250}.{n % 250 + 1}"

    # --- reads ----------------------------------------------------------------------------------

    def _key(self, rt: ResourceType, namespace: str | None, name: str) -> Key:
        return ((namespace or "") if rt.namespaced else "", name)

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self.objects[rt.storage_key].get(self._key(rt, namespace, name))
        if obj is None:
            raise apierrors.not_found(rt.plural, rt.group, name)
        return self.present(rt, obj)

    def present(self, rt: ResourceType, obj: Obj) -> Obj:
        """The object as seen through ``rt``'s version (CRDs use the None conversion strategy)."""
        if obj.get("apiVersion") == rt.api_version:
            return obj
        return {**obj, "apiVersion": rt.api_version}

    def list_objects(self, rt: ResourceType, namespace: str | None, matches: Filter, limit: int = 0,
             continue_token: str | None = None) -> tuple[list[Obj], int, str | None, int | None]:
        """Return (items, list resourceVersion, continue token, remainingItemCount)."""
        if continue_token:
            try:
                token = json.loads(base64.urlsafe_b64decode(continue_token.encode()))
                snap_id, offset = token["id"], int(token["offset"])
            except (ValueError, KeyError, TypeError):
                raise apierrors.bad_request("continue key is not valid") from None
            snapshot = self._snapshots.get(snap_id)
            if snapshot is None or snapshot[0] < self.compacted_rv:
                raise apierrors.expired("The provided continue parameter is too old to display a consistent "
                                        "list result. You can start a new list without the continue "
                                        "parameter.")
            list_rv, items = snapshot
        else:
            store = self.objects[rt.storage_key]
            items = [o for k, o in sorted(store.items()) if (namespace is None or k[0] == namespace)
                     and matches(o)]
            list_rv, offset = self.rv, 0
            snap_id = ""
        items = [self.present(rt, o) for o in items]
        if not limit or offset + limit >= len(items):
            return items[offset:], list_rv, None, None
        if not snap_id:
            snap_id = str(next(self._snapshot_ids))
            self._snapshots[snap_id] = (list_rv, items)
            while len(self._snapshots) > 64:
                del self._snapshots[next(iter(self._snapshots))]
        nxt = base64.urlsafe_b64encode(json.dumps({"id": snap_id, "offset": offset + limit,
                                                   "rv": list_rv}).encode()).decode()
        return items[offset:offset + limit], list_rv, nxt, len(items) - offset - limit

    # --- events and watches ---------------------------------------------------------------------

    def _emit(self, rt: ResourceType, type_: str, obj: Obj, old: Obj | None) -> None:
        event = Event(self.rv, rt.storage_key, type_, obj, old)
        self.history.append(event)
        while len(self.history) > self.history_window:
            self.compacted_rv = self.history.popleft().rv
        for watcher in list(self.watchers):
            self._deliver(watcher, event)
        for listener in self.listeners:
            listener(rt, obj)

    def _deliver(self, watcher: Watcher, event: Event) -> None:
        if watcher.storage_key != event.storage_key or watcher.stalled:
            return
        obj, old = event.obj, event.old
        if watcher.namespace is not None and obj["metadata"].get("namespace", "") != watcher.namespace:
            return
        now_match = watcher.matches(obj)
        if event.type == "DELETED":
            if now_match:
                watcher.queue.put_nowait(("DELETED", obj))
            return
        was_match = old is not None and watcher.matches(old)
        if now_match and was_match:
            watcher.queue.put_nowait(("MODIFIED", obj))
        elif now_match:
            watcher.queue.put_nowait(("ADDED", obj))
        elif was_match:
            watcher.queue.put_nowait(("DELETED", obj))

    def watch(self, rt: ResourceType, namespace: str | None, matches: Filter,
              resource_version: str | None) -> Watcher:
        watcher = Watcher(rt.storage_key, namespace, matches)
        if not resource_version or resource_version == "0":
            store = self.objects[rt.storage_key]
            for key, obj in sorted(store.items()):
                if (namespace is None or key[0] == namespace) and matches(obj):
                    watcher.queue.put_nowait(("ADDED", obj))
        else:
            try:
                since = int(resource_version)
            except ValueError:
                raise apierrors.bad_request(f"invalid resource version {resource_version!r}") from None
            if since < self.compacted_rv:
                raise apierrors.expired(f"too old resource version: {since} ({self.compacted_rv + 1})")
            for event in self.history:
                if event.rv > since:
                    self._deliver(watcher, event)
        self.watchers.add(watcher)
        return watcher

    def stop_watch(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def drop_watches(self) -> None:
        for watcher in list(self.watchers):
            watcher.queue.put_nowait(None)
        self.watchers.clear()

    def stall_watches(self) -> None:
        """Keep every open watch connected but silent (no events, no bookmarks) from now on."""
        for watcher in self.watchers:
            watcher.stalled = True

    def compact(self) -> None:
        """Forget all history: any watch or continue token from an older version gets 410."""
        self.history.clear()
        self.compacted_rv = self.rv
        self._snapshots.clear()

    # --- write pipeline -------------------------------------------------------------------------

    def _prepare(self, rt: ResourceType, namespace: str | None, obj: Obj, old: Obj | None,
                 field_validation: str) -> list[str]:
        """Default, prune and validate ``obj`` in place; return warnings; raise 400/422."""
        warnings: list[str] = []
        meta = obj.setdefault("metadata", {})
        name = meta.get("name", "")
        if rt.schema is not None:
            pruned, unknown = schema.prune_and_default(obj, rt.schema)
            obj.clear()
            obj.update(pruned)
            if unknown and field_validation == "Strict":
                raise apierrors.bad_request("strict decoding error: " + ", ".join(
                    f'unknown field "{u}"' for u in unknown))
            if unknown and field_validation == "Warn":
                warnings += [f'unknown field "{u}"' for u in unknown]
        if rt.default is not None:
            rt.default(obj, old, self.ctx())
        causes: list[FieldCause] = validate_name(rt, name) + validate_metadata(obj)
        if rt.validate is not None:
            causes += rt.validate(obj, old, self.ctx())
        if rt.schema is not None:
            causes += schema.validate(obj, rt.schema)
        if causes:
            raise apierrors.invalid(rt.kind, rt.group, name, causes)
        return warnings

    def _check_identity(self, rt: ResourceType, namespace: str | None, obj: Obj, name: str | None) -> None:
        if not isinstance(obj, dict):
            raise apierrors.bad_request("the body of the request must be a JSON object")
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version and api_version != rt.api_version:
            raise apierrors.bad_request(f"the API version in the data ({api_version}) does not match the "
                                        f"expected API version ({rt.api_version})")
        if kind and kind != rt.kind:
            raise apierrors.bad_request(f"the kind in the data ({kind}) does not match the expected kind "
                                        f"({rt.kind})")
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise apierrors.bad_request("metadata must be an object")
        if name is not None and meta.get("name") not in (None, "", name):
            raise apierrors.bad_request(f"the name of the object ({meta.get('name')}) does not match the name "
                                        f"on the URL ({name})")
        if rt.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and namespace and body_ns != namespace:
                raise apierrors.bad_request("the namespace of the provided object does not match the namespace "
                                            "sent on the request")
            meta["namespace"] = namespace or body_ns or "default"
        else:
            meta.pop("namespace", None)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind

    def _namespace_ok(self, rt: ResourceType, namespace: str) -> None:
        if not rt.namespaced:
            return
        ns = self.objects[("", "namespaces")].get(("", namespace))
        if ns is None:
            raise apierrors.not_found("namespaces", "", namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise apierrors.forbidden(rt.plural, rt.group, "", f"unable to create new content in namespace "
                                      f"{namespace} because it is being terminated")

    def create(self, rt: ResourceType, namespace: str | None, body: Obj, *, dry_run: bool = False,
               manager: str = "unknown", field_validation: str = "Warn",
               managers: dict[tuple[str, str], set[Path]] | None = None) -> WriteResult:
        obj = copy.deepcopy(body)
        self._check_identity(rt, namespace, obj, None)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta["name"] = meta["generateName"] + suffix
        self._namespace_ok(rt, meta.get("namespace", ""))
        key = self._key(rt, meta.get("namespace"), meta.get("name", ""))
        if rt.status_subresource and rt.plural != "customresourcedefinitions":
            obj.pop("status", None)
        for volatile in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp", "generation",
                         "managedFields", "selfLink"):
            meta.pop(volatile, None)
        warnings = self._prepare(rt, namespace, obj, None, field_validation)
        meta = obj["metadata"]
        if key in self.objects[rt.storage_key]:
            raise apierrors.already_exists(rt.plural, rt.group, key[1])
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if rt.crd or rt.plural in GENERATION_TYPES:
            meta["generation"] = 1
        if rt.plural == "customresourcedefinitions":
            self._crd_status(obj)
        if dry_run:
            meta["resourceVersion"] = str(self.rv)
            return WriteResult(obj, True, warnings)
        owned = managers if managers is not None else {}
        if managers is None:
            record_update({}, obj, manager, owned)
        self._commit(rt, key, obj, None, owned)
        return WriteResult(self.present(rt, obj), True, warnings)

    def _commit(self, rt: ResourceType, key: Key, obj: Obj, old: Obj | None,
                owned: dict[tuple[str, str], set[Path]]) -> None:
        self.rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.rv)
        stamp = now_rfc3339()
        # an entry's time is when its manager last changed the fields it owns: a write by someone else
        # (a controller's status) leaves the time of who set an annotation alone, as the real server does
        times = {(e.get("manager"), e.get("operation")): e.get("time")
                 for e in ((old or {}).get("metadata") or {}).get("managedFields") or []}
        previous = self.managers.get((rt.storage_key, key)) or {}
        leaves: list[dict[Path, Any]] = []  # (before, after), computed only when an old entry may keep its time
        entries = []
        for (manager, op), paths in sorted(owned.items()):
            unchanged = bool(times.get((manager, op))) and previous.get((manager, op)) == paths
            if unchanged and not leaves:
                leaves = [leaf_paths(old or {}), leaf_paths(obj)]
            unchanged = unchanged and all(leaves[0].get(p, _MISSING) == leaves[1].get(p, _MISSING) for p in paths)
            when = times.get((manager, op)) if unchanged else None
            entries.append({"manager": manager, "operation": op, "apiVersion": rt.api_version,
                            "time": when or stamp, "fieldsType": "FieldsV1", "fieldsV1": fields_to_v1(paths)})
        if entries:
            meta["managedFields"] = entries
        else:
            meta.pop("managedFields", None)
        self.objects[rt.storage_key][key] = obj
        self.managers[(rt.storage_key, key)] = owned
        self.uid_index[meta["uid"]] = (rt.storage_key, key)
        self._link_owners(rt.storage_key, key, old, obj)
        self._emit(rt, "MODIFIED" if old is not None else "ADDED", obj, old)
        if rt.plural == "customresourcedefinitions":
            self._sync_crd(obj)
        if meta.get("ownerReferences") or meta.get("deletionTimestamp") or (
                old is not None and old["metadata"].get("ownerReferences")):
            self._gc_enqueue(rt.storage_key, key)

    def owned_fields(self, rt: ResourceType, key: Key) -> dict[tuple[str, str], set[Path]]:
        stored = self.managers.get((rt.storage_key, key))
        if stored is not None:
            return {k: set(v) for k, v in stored.items()}
        obj = self.objects[rt.storage_key].get(key)
        out: dict[tuple[str, str], set[Path]] = {}
        for entry in (obj or {}).get("metadata", {}).get("managedFields") or []:
            out[(entry["manager"], entry["operation"])] = fields_from_v1(entry.get("fieldsV1"))
        return out

    def update(self, rt: ResourceType, namespace: str | None, name: str, body: Obj, *,
               subresource: str | None = None, dry_run: bool = False, manager: str = "unknown",
               field_validation: str = "Warn", managers: dict[tuple[str, str], set[Path]] | None = None
               ) -> WriteResult:
        """PUT semantics: optimistic concurrency on resourceVersion, status split, no-op detection."""
        new = copy.deepcopy(body)
        self._check_identity(rt, namespace, new, name)
        key = self._key(rt, namespace, name)
        old = self.objects[rt.storage_key].get(key)
        if old is None:
            if subresource is None and rt.allow_create_on_update:
                new["metadata"]["name"] = name
                return self.create(rt, namespace, new, dry_run=dry_run, manager=manager,
                                   field_validation=field_validation)
            raise apierrors.not_found(rt.plural, rt.group, name)
        want_rv = new["metadata"].get("resourceVersion")
        if want_rv and want_rv != old["metadata"]["resourceVersion"]:
            raise apierrors.conflict(rt.plural, rt.group, name, apierrors.STALE_WRITE)
        new["metadata"]["name"] = name
        if subresource == "status":
            merged = copy.deepcopy(old)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            new = merged
        elif rt.status_subresource and rt.plural != "customresourcedefinitions":
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        meta, old_meta = new["metadata"], old["metadata"]
        for fixed in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                      "generation"):
            if fixed in old_meta:
                meta[fixed] = old_meta[fixed]
            else:
                meta.pop(fixed, None)
        meta.pop("managedFields", None)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise apierrors.invalid(rt.kind, rt.group, name, [FieldCause(
                    "metadata.finalizers", "Forbidden: no new finalizers can be added if the object is being "
                    "deleted", "FieldValueForbidden")])
        warnings = self._prepare(rt, namespace, new, old, field_validation)
        meta = new["metadata"]
        if rt.plural == "customresourcedefinitions" and subresource is None:
            self._crd_status(new)
        comparable_old = {**old, "metadata": {k: v for k, v in old_meta.items() if k != "managedFields"}}
        if new == comparable_old:
            return WriteResult(self.present(rt, old), False, warnings)
        if "generation" in meta and self._spec_changed(rt, old, new):
            meta["generation"] = int(meta["generation"]) + 1
        if dry_run:
            return WriteResult(new, False, warnings)
        owned = managers if managers is not None else self.owned_fields(rt, key)
        if managers is None:
            record_update(old, new, manager, owned)
        self._commit(rt, key, new, old, owned)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(rt, key)
        elif meta.get("deletionTimestamp"):
            self._schedule_gc()
        return WriteResult(self.present(rt, new), False, warnings)

    @staticmethod
    def _spec_changed(rt: ResourceType, old: Obj, new: Obj) -> bool:
        skip = {"metadata", "apiVersion", "kind"} | ({"status"} if rt.status_subresource else set())
        return {k: v for k, v in old.items() if k not in skip} != {k: v for k, v in new.items() if k not in skip}

    # --- deletion and garbage collection --------------------------------------------------------

    def delete(self, rt: ResourceType, namespace: str | None, name: str, options: Obj | None = None,
               dry_run: bool = False) -> Obj:
        options = options or {}
        key = self._key(rt, namespace, name)
        obj = self.objects[rt.storage_key].get(key)
        if obj is None:
            raise apierrors.not_found(rt.plural, rt.group, name)
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != obj["metadata"]["uid"]:
            raise apierrors.conflict(rt.plural, rt.group, name, "Precondition failed: UID in precondition: "
                                     f"{pre['uid']}, UID in object meta: {obj['metadata']['uid']}")
        if pre.get("resourceVersion") and pre["resourceVersion"] != obj["metadata"]["resourceVersion"]:
            raise apierrors.conflict(rt.plural, rt.group, name, "Precondition failed: ResourceVersion in "
                                     f"precondition: {pre['resourceVersion']}, ResourceVersion in object meta: "
                                     f"{obj['metadata']['resourceVersion']}")
        if dry_run:
            return self.present(rt, obj)
        policy = options.get("propagationPolicy")
        if policy is None and options.get("orphanDependents") is True:
            policy = "Orphan"
        finalizers = list(obj["metadata"].get("finalizers") or [])
        if policy == "Foreground" and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        if policy == "Orphan" and "orphan" not in finalizers:
            finalizers.append("orphan")
        if rt.plural == "namespaces" and "kubernetes" in (obj.get("spec", {}).get("finalizers") or []):
            finalizers = finalizers or []
        if finalizers or rt.plural == "namespaces":
            if obj["metadata"].get("deletionTimestamp") and finalizers == obj["metadata"].get("finalizers"):
                return self.present(rt, obj)
            marked = copy.deepcopy(obj)
            marked["metadata"]["deletionTimestamp"] = obj["metadata"].get("deletionTimestamp") or now_rfc3339()
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            if finalizers:
                marked["metadata"]["finalizers"] = finalizers
            if rt.plural == "namespaces":
                marked.setdefault("status", {})["phase"] = "Terminating"
            self._commit(rt, key, marked, obj, self.owned_fields(rt, key))
            return self.present(rt, marked)
        return self.present(rt, self._remove(rt, key))

    def _remove(self, rt: ResourceType, key: Key) -> Obj:
        obj = self.objects[rt.storage_key].pop(key)
        self.managers.pop((rt.storage_key, key), None)
        uid = obj["metadata"]["uid"]
        self.uid_index.pop(uid, None)
        self._link_owners(rt.storage_key, key, obj, None)
        self.rv += 1
        gone = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
        self._emit(rt, "DELETED", gone, obj)
        if rt.plural == "customresourcedefinitions":
            self._drop_crd(obj)
        # what this removal may unblock: its dependents (owner gone), an owner waiting in foreground
        # deletion for it, and its namespace if that is terminating
        for dependent in list(self._dependents_of.get(uid, ())):  # a synchronous collector edits it
            self._gc_enqueue(*dependent)
        for ref in obj["metadata"].get("ownerReferences") or []:
            location = self.uid_index.get(ref.get("uid", ""))
            if location is not None:
                self._gc_enqueue(*location)
        namespace = key[0]
        if namespace:
            ns_key = ("", namespace)
            ns = self.objects.get(("", "namespaces"), {}).get(ns_key)
            if ns is not None and ns["metadata"].get("deletionTimestamp"):
                self._gc_enqueue(("", "namespaces"), ns_key)
        self._schedule_gc()
        return gone

    def _link_owners(self, storage_key: tuple[str, str], key: Key, old: Obj | None, new: Obj | None) -> None:
        """Keep the owner uid -> dependents index in step with one object's ownerReferences."""
        before = {r.get("uid", "") for r in ((old or {}).get("metadata") or {}).get("ownerReferences") or []}
        after = {r.get("uid", "") for r in ((new or {}).get("metadata") or {}).get("ownerReferences") or []}
        for uid in before - after:
            dependents = self._dependents_of.get(uid)
            if dependents is not None:
                dependents.discard((storage_key, key))
                if not dependents:
                    del self._dependents_of[uid]
            # an owner waiting in foreground deletion may wait for nothing now (the GraphBuilder's
            # addUnblockedOwnersToDeleteQueue): it is looked at again
            location = self.uid_index.get(uid)
            if location is not None and new is not None:
                self._gc_enqueue(*location)
        for uid in after - before:
            self._dependents_of.setdefault(uid, set()).add((storage_key, key))

    def _gc_enqueue(self, storage_key: tuple[str, str], key: Key) -> None:
        self._gc_queue[(storage_key, key)] = None
        self._schedule_gc()

    def _schedule_gc(self) -> None:
        if self._gc_scheduled or self.gc_paused:
            return
        self._gc_scheduled = True
        try:
            asyncio.get_running_loop().call_soon(self._run_gc)
        except RuntimeError:
            self._run_gc()

    def _type_by_storage(self, storage_key: tuple[str, str]) -> ResourceType:
        return next(rt for rt in self.types.values() if rt.storage_key == storage_key)

    def _all_objects(self) -> Iterable[tuple[ResourceType, Key, Obj]]:
        for storage_key, store in self.objects.items():
            if not store:
                continue
            rt = self._type_by_storage(storage_key)
            for key, obj in list(store.items()):
                yield rt, key, obj

    def resume_gc(self) -> None:
        """The collector is back: it resyncs (looks at every object with owners or being deleted) and
        catches up with everything it missed."""
        self.gc_paused = False
        for rt, key, obj in self._all_objects():
            meta = obj["metadata"]
            if meta.get("ownerReferences") or meta.get("deletionTimestamp"):
                self._gc_queue[(rt.storage_key, key)] = None
        self._schedule_gc()

    def _run_gc(self) -> None:
        """The garbage collector and namespace controller: look at every queued object until the queue
        is empty (what they do may queue more)."""
        self._gc_scheduled = False
        while self._gc_queue and not self.gc_paused:
            storage_key, key = next(iter(self._gc_queue))
            del self._gc_queue[(storage_key, key)]
            obj = self.objects.get(storage_key, {}).get(key)
            if obj is not None:
                self._gc_object(self._type_by_storage(storage_key), key, obj)

    def _dependents(self, uid: str) -> list[tuple[ResourceType, Key, Obj]]:
        found = []
        for storage_key, key in sorted(self._dependents_of.get(uid, ())):
            obj = self.objects.get(storage_key, {}).get(key)
            if obj is not None:
                found.append((self._type_by_storage(storage_key), key, obj))
        return found

    def _gc_object(self, rt: ResourceType, key: Key, obj: Obj) -> bool:
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            finalizers = list(meta.get("finalizers") or [])
            if rt.plural == "namespaces":
                return self._finalize_namespace(rt, key, obj)
            if "orphan" in finalizers:
                for drt, dkey, dep in self._dependents(meta["uid"]):
                    self._strip_owner(drt, dkey, dep, {meta["uid"]})
                finalizers.remove("orphan")
                return self._set_finalizers(rt, key, obj, finalizers)
            if "foregroundDeletion" in finalizers:
                blocking = False
                for drt, dkey, dep in self._dependents(meta["uid"]):
                    if self._has_solid_owner(dep, dkey[0], meta["uid"]):
                        # kcm's attemptToDeleteItem: a live owner keeps it; only this reference goes
                        self._strip_owner(drt, dkey, dep, {meta["uid"]})
                        continue
                    if not dep["metadata"].get("deletionTimestamp"):
                        self.delete(drt, dkey[0] or None, dkey[1], {"propagationPolicy": "Foreground"})
                    blocking = True
                if not blocking:
                    finalizers.remove("foregroundDeletion")
                    return self._set_finalizers(rt, key, obj, finalizers)
            return False
        refs = meta.get("ownerReferences") or []
        if not refs:
            return False
        if not key[0] and any(self._namespaced_kind(r) for r in refs):
            return False  # cluster-scoped, naming a namespaced owner: unresolvable, never collected (as kcm)
        gone = {r["uid"] for r in refs if not self._owner_exists(r, key[0])}
        if not gone:
            return False
        if len(gone) == len(refs):
            self.delete(rt, key[0] or None, key[1], {"propagationPolicy": "Background"})
        else:
            self._strip_owner(rt, key, obj, gone)
        return True

    def _has_solid_owner(self, obj: Obj, namespace: str, besides: str) -> bool:
        """Does ``obj`` name an owner other than ``besides`` that exists and is not itself waiting in
        foreground deletion (kcm's classifyReferences: "solid")?"""
        for ref in obj["metadata"].get("ownerReferences") or []:
            if ref.get("uid") == besides or not self._owner_exists(ref, namespace):
                continue
            storage_key, owner_key = self.uid_index[ref["uid"]]
            owner_meta = self.objects[storage_key][owner_key]["metadata"]
            waiting = "foregroundDeletion" in (owner_meta.get("finalizers") or [])
            if not (owner_meta.get("deletionTimestamp") and waiting):
                return True
        return False

    def _namespaced_kind(self, ref: Obj) -> bool:
        group, _, version = str(ref.get("apiVersion", "")).rpartition("/")
        return any(rt.namespaced for rt in self.types.values()
                   if rt.group == group and rt.version == version and rt.kind == ref.get("kind"))

    def _owner_exists(self, ref: Obj, namespace: str) -> bool:
        location = self.uid_index.get(ref.get("uid", ""))
        if location is None:
            return False
        _, (owner_ns, _name) = location
        return owner_ns in ("", namespace)

    def _strip_owner(self, rt: ResourceType, key: Key, obj: Obj, uids: set[str]) -> None:
        new = copy.deepcopy(obj)
        new["metadata"]["ownerReferences"] = [r for r in obj["metadata"].get("ownerReferences") or []
                                              if r.get("uid") not in uids]
        if not new["metadata"]["ownerReferences"]:
            del new["metadata"]["ownerReferences"]
        self._commit(rt, key, new, obj, self.owned_fields(rt, key))

    def _set_finalizers(self, rt: ResourceType, key: Key, obj: Obj, finalizers: list[str]) -> bool:
        new = copy.deepcopy(obj)
        if finalizers:
            new["metadata"]["finalizers"] = finalizers
            self._commit(rt, key, new, obj, self.owned_fields(rt, key))
        else:
            new["metadata"].pop("finalizers", None)
            self._commit(rt, key, new, obj, self.owned_fields(rt, key))
            self._remove(rt, key)
        return True

    def _finalize_namespace(self, rt: ResourceType, key: Key, obj: Obj) -> bool:
        name = key[1]
        remaining = False
        for drt, dkey, dep in list(self._all_objects()):
            if drt.namespaced and dkey[0] == name:
                if not dep["metadata"].get("deletionTimestamp"):
                    self.delete(drt, name, dkey[1])
                remaining = remaining or dkey in self.objects[drt.storage_key]
        if remaining:
            return False
        if obj["metadata"].get("finalizers"):
            return False
        self._remove(rt, key)
        return True

    # --- CRDs -----------------------------------------------------------------------------------

    @staticmethod
    def _crd_status(crd: Obj) -> None:
        spec = crd.get("spec", {})
        stamp = now_rfc3339()
        crd["status"] = {
            "acceptedNames": spec.get("names", {}),
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": stamp},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": stamp},
            ],
            "storedVersions": [v["name"] for v in spec.get("versions", []) if v.get("storage")],
        }

    def _sync_crd(self, crd: Obj) -> None:
        spec = crd["spec"]
        names = spec["names"]
        group = spec["group"]
        self.unregister_group_resource(group, names["plural"])
        for version in spec.get("versions", []):
            if not version.get("served", True):
                continue
            subresources = version.get("subresources") or {}
            self.register(ResourceType(
                group, version["name"], names["plural"], names["kind"], spec.get("scope") == "Namespaced",
                tuple(names.get("shortNames") or ()), status_subresource="status" in subresources,
                schema=(version.get("schema") or {}).get("openAPIV3Schema"),
                printer_columns=list(version.get("additionalPrinterColumns") or []),
                categories=tuple(names.get("categories") or ()), crd=True, strategic_merge=False,
                selectable_fields=frozenset(f["jsonPath"].lstrip(".") for f in version.get("selectableFields") or [])))

    def _drop_crd(self, crd: Obj) -> None:
        spec = crd["spec"]
        storage_key = (spec["group"], spec["names"]["plural"])
        for key in list(self.objects.get(storage_key, {})):
            rt = self._type_by_storage(storage_key)
            self._remove(rt, key)
        self.unregister_group_resource(*storage_key)
        self.objects.pop(storage_key, None)

    # --- patch ----------------------------------------------------------------------------------

    def patch(self, rt: ResourceType, namespace: str | None, name: str, patch_type: str, patch: Any, *,
              subresource: str | None = None, dry_run: bool = False, manager: str = "unknown",
              force: bool = False, field_validation: str = "Warn") -> WriteResult:
        """PATCH with one of the four content types; apply may create the object."""
        from epctl.testing import patching

        key = self._key(rt, namespace, name)
        old = self.objects[rt.storage_key].get(key)
        if patch_type == "apply":
            if not isinstance(patch, dict):
                raise apierrors.bad_request("apply patch must be an object")
            self._check_identity(rt, namespace, copy.deepcopy(patch), name)
            if old is None:
                if subresource:
                    raise apierrors.not_found(rt.plural, rt.group, name)
                owned: dict[tuple[str, str], set[Path]] = {}
                created = patching.server_side_apply({}, patch, manager, force, owned)
                created.setdefault("metadata", {})["name"] = name
                return self.create(rt, namespace, created, dry_run=dry_run, manager=manager,
                                   field_validation=field_validation, managers=owned)
            want_rv = (patch.get("metadata") or {}).get("resourceVersion")
            if want_rv and want_rv != old["metadata"]["resourceVersion"]:
                raise apierrors.conflict(rt.plural, rt.group, name, apierrors.STALE_WRITE)
            owned = self.owned_fields(rt, key)
            base = self.present(rt, old)
            if subresource == "status":
                new = patching.server_side_apply(base, {"status": patch.get("status", {})}, manager, force, owned)
            else:
                new = patching.server_side_apply(base, patch, manager, force, owned)
            return self.update(rt, namespace, name, new, subresource=subresource, dry_run=dry_run,
                               manager=manager, field_validation=field_validation, managers=owned)
        if old is None:
            raise apierrors.not_found(rt.plural, rt.group, name)
        base = copy.deepcopy(self.present(rt, old))
        if patch_type == "merge":
            new = patching.json_merge_patch(base, patch)
        elif patch_type == "json":
            new = patching.json_patch(base, patch)
        elif patch_type == "strategic":
            if not rt.strategic_merge:
                raise apierrors.unsupported_media_type("application/strategic-merge-patch+json")
            new = patching.strategic_merge_patch(base, patch, rt.kind)
        else:
            raise apierrors.unsupported_media_type(patch_type)
        if not isinstance(new, dict):
            raise apierrors.bad_request("patch did not produce an object")
        new.setdefault("metadata", {}).setdefault("resourceVersion", old["metadata"]["resourceVersion"])
        if new["metadata"].get("resourceVersion") is None:
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        return self.update(rt, namespace, name, new, subresource=subresource, dry_run=dry_run, manager=manager,
                           field_validation=field_validation)

    def delete_collection(self, rt: ResourceType, namespace: str | None, matches: Filter,
                          options: Obj | None = None) -> list[Obj]:
        store = self.objects[rt.storage_key]
        doomed = [k for k, o in sorted(store.items()) if (namespace is None or k[0] == namespace) and matches(o)]
        return [self.delete(rt, k[0] or None, k[1], options) for k in doomed if k in store]
