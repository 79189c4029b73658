"""The writer: turns dirty targets of the DesiredState into Service and EndpointSlice writes.

- Debounce: a dirty target is written after ``batch_delay`` of quiet or ``max_batch_delay`` after
  it first became dirty, whichever comes first, so a burst of probe transitions becomes one write.
- Bounded concurrency across targets; one reconcile at a time per target. Routing first within it:
  a target's Service and EndpointSlices are written under a write slot, and its v1 Endpoints
  (the legacy copy) under another one taken after every waiting target's slices (``Slots``).
- Optimistic concurrency: updates carry the resourceVersion they were planned from. 409 (stale or
  AlreadyExists) and 404 re-read the target's slices from the API and re-plan (a few times).
  429/5xx/connection errors retry with exponential backoff and jitter. 422 is reported (Event and
  condition through the :class:`SyncReporter`) and not retried until the desired state changes.
- Own writes are remembered (resourceVersion per slice) and overlaid on the informer cache, so a
  cache that has not caught up never causes a duplicate or a stale re-write, and the watch echo of
  our own write is recognised and ignored. Any other change to one of our slices (someone edited
  or deleted it) marks its target dirty, and the planner repairs it.
- The Service: created when missing (selector-less, our ports, ownerReference); only the fields we
  own are updated; an existing Service we do not own is adopted only when the target allows it,
  otherwise the target is reported as conflicting and nothing is written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from epctl.endpoints import MANAGED_LABEL, MANAGED_VALUE, desired_endpoints, endpoints_update, is_ours
from epctl.kube.backoff import Backoff
from epctl.kube.client import ENDPOINTS, ENDPOINTSLICES, MERGE_PATCH, SERVICES, ApiError, Fenced, KubeClient
from epctl.kube.informer import Informer, InformerEvent
from epctl.kube.priority import Slots
from epctl.shard.fence import UNFENCED, Fence
from epctl.slices import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    Plan,
    plan_slices,
    service_index,
    service_of_slice,
)
from epctl.state import DesiredState, PortGroup, ServiceSpec, Target, TargetKey, front_end_labels
from epctl.tasks import cancel_and_wait, ensure_running, within

log = logging.getLogger(__name__)
Obj = dict[str, Any]
SLICE_CONTROLLER = "endpointslice-controller.k8s.io"  # kube-controller-manager's, for selector Services
SLICES_FIRST, ENDPOINTS_AFTER = 0, 1  # write slot ranks (Slots): what kube-proxy reads goes first
HOLD_RECHECK = 1.0  # seconds until a target planned with a host held not ready is planned again
POD_SLICES_ANNOTATION = "epctl.io/pod-slices"  # "delete": the selector we removed left Pod slices behind


class SyncReporter(Protocol):
    """Where the writer reports the outcome of each target (status conditions, Events)."""

    def synced(self, key: TargetKey) -> None: ...
    def failed(self, key: TargetKey, reason: str, message: str, permanent: bool) -> None: ...


class WriterMetrics(Protocol):
    def batch(self, targets: int) -> None: ...
    def write(self, operation: str, result: str) -> None: ...
    def sync(self, result: str, seconds: float) -> None: ...


class ServiceConflict(Exception):
    """A Service of the target's name exists and is not ours (and adoption was not asked for)."""


class Permanent(Exception):
    """The API refused our object as invalid (422): retrying the same write cannot help."""


class OwnerGone(Exception):
    """A Service of ours went away and a fresh read finds its owner gone too: the garbage collector
    deleted it, and the owner's deletion has not reached our cache yet. Not re-created (the collector
    would delete it again, and again, until the cache caught up); retried quietly, by when the target
    is usually no longer desired."""


@dataclass
class _Written:
    service: str
    rv: int
    obj: Obj | None  # None: we deleted it


def _earlier_self(ref: Obj, owner: Obj | None) -> bool:
    """``ref`` names an earlier incarnation of ``owner`` (same kind and name, another uid): the object
    was deleted and re-created, and garbage collection has not yet removed what the old one owned."""
    return (owner is not None and ref.get("kind") == owner.get("kind") and ref.get("name") == owner.get("name")
            and ref.get("apiVersion", "").split("/")[0] == owner.get("apiVersion", "").split("/")[0]
            and ref.get("uid") != owner.get("uid"))


def _not_ready_in_slices(observed: list[Obj]) -> set[tuple[str, str]]:
    """(slice port name, address) of every endpoint these slices publish not ready."""
    return {(str((o.get("ports") or [{}])[0].get("name") or ""), address)
            for o in observed for e in o.get("endpoints") or []
            if (e.get("conditions") or {}).get("ready") is False for address in e.get("addresses") or []}


def _not_ready_in_endpoints(observed: Obj | None) -> set[tuple[str, str]]:
    """(port name, ip) of every notReadyAddresses entry of this v1 Endpoints object."""
    return {(str(port.get("name") or ""), str(address.get("ip") or ""))
            for subset in (observed or {}).get("subsets") or []
            for address in subset.get("notReadyAddresses") or [] for port in subset.get("ports") or []}


def _held_not_ready(key: TargetKey, groups: list[PortGroup], published: set[tuple[str, str]],
                    may_ready: Callable[[TargetKey, str, str], bool]) -> list[PortGroup]:
    """``groups`` with every endpoint kept not ready that is ``published`` not ready (slices, or the
    Endpoints copy) and that may not become ready yet (no passing probe of ours since); ``groups``
    itself when nothing is held."""
    if not published:
        return groups
    out: list[PortGroup] = []
    changed = False
    for group in groups:
        name = group.ports[0].name if group.ports else ""
        endpoints = dict(group.endpoints)
        for address, endpoint in group.endpoints.items():
            if endpoint.ready and (name, address) in published and not may_ready(key, name, address):
                endpoints[address] = dataclasses.replace(endpoint, ready=False, serving=False)
                changed = True
        out.append(dataclasses.replace(group, endpoints=endpoints) if endpoints != group.endpoints else group)
    return out if changed else groups


def _seen(informer: Informer, rv: int) -> bool:
    """Has ``informer`` already delivered resourceVersion ``rv``? (A watch delivers them in order, so its
    cache then shows our write or something newer: no record of the write need stand in for it. The
    echo can come before the write's own answer is handled; a record kept then was held until the
    target's next reconcile, ~100 B an endpoint after a cold start.)"""
    try:
        return int(informer.resource_version or 0) >= rv > 0
    except ValueError:
        return False


def _rv(obj: Obj | None) -> int:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion", "0"))
    except ValueError:
        return 0


class Writer:
    def __init__(self, client: KubeClient, state: DesiredState, slices: Informer, services: Informer, *,
                 batch_delay: float = 0.1, max_batch_delay: float = 1.0, concurrency: int = 8,
                 max_per_slice: int = 100, reporter: SyncReporter | None = None,
                 metrics: WriterMetrics | None = None, backoff_initial: float = 1.0,
                 backoff_max: float = 60.0, endpoints: Informer | None = None) -> None:
        self.client, self.state, self.slices, self.services = client, state, slices, services
        self.endpoints = endpoints  # our v1 Endpoints (label-selected); None: Endpoints are not managed
        self.batch_delay, self.max_batch_delay = batch_delay, max_batch_delay
        self.max_per_slice = max_per_slice
        self.reporter, self.metrics = reporter, metrics
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.concurrency = concurrency
        # rank 0: Services and slices; rank 1: the v1 Endpoints. Twice ``concurrency``: in a burst one
        # request per slot, as many in flight as when a target's slices and Endpoints went side by side
        # under one; with no target waiting, a slot writes both side by side (up to 4 x concurrency)
        self._slots = Slots(2 * concurrency)
        self._endpoints_waiting: set[TargetKey] = set()  # slices written, waiting for an Endpoints slot
        self._held: set[TargetKey] = set()  # planned with a host held not ready (may_ready): re-planned soon
        self._rechecking: set[TargetKey] = set()  # pending only for that re-plan (not work to wait for)
        self.hold_recheck = HOLD_RECHECK  # seconds (tests lengthen it to tell a recheck from real work)
        self._pending: dict[TargetKey, list[float]] = {}  # key -> [first dirty, last dirty]
        self._retry_at: dict[TargetKey, float] = {}
        self._backoffs: dict[TargetKey, Backoff] = {}
        self._batch_size = 0
        self._in_flight: dict[TargetKey, asyncio.Task[None]] = {}
        self._known: set[TargetKey] = set()
        self._written: dict[tuple[str, str], _Written] = {}
        self._written_endpoints: dict[tuple[str, str], _Written] = {}
        self._deselected: set[TargetKey] = set()  # adopted Services whose selector we removed
        self._pod_slices_cleared: dict[TargetKey, int] = {}  # the Service's resourceVersion after our clearing
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        # nothing due or in flight (targets only waiting out a retry backoff do not count): what the
        # status writer and the Event recorder wait for before each write (epctl.kube.priority)
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        # the targets this replica may write (shard ownership, docs/design.md section 8); others are
        # neither planned nor written, whatever the desired state says about them
        self.owns: Callable[[TargetKey], bool] = lambda _key: True
        self.fence: Fence = UNFENCED  # asked at the moment each write is sent (epctl.shard.fence)
        # told what a fresh read of a target's slices found, before re-planning (the ClusterEndpoint
        # source follows slices that say not ready for hosts no probe of ours has passed)
        self.on_listed: Callable[[TargetKey, list[Obj]], None] | None = None
        # may (target, slice port name, address) go from published not ready to ready? Only after a
        # passing probe of ours: asked at planning time, whatever order the events came in
        self.may_ready: Callable[[TargetKey, str, str], bool] | None = None
        # asked before re-creating a Service that went away while its target was held: does its owner
        # still exist? (a fresh read; app.Controller._still_claimed)
        self.owner_exists: Callable[[TargetKey, Obj], Awaitable[bool]] | None = None
        self._vanished: set[TargetKey] = set()  # our Services deleted by someone else while held
        # last touch on the port groups before planning (topology hints, epctl.sources.topology)
        self.decorate: Callable[[TargetKey, list[PortGroup]], list[PortGroup]] | None = None
        if not slices.has_index:
            slices.index_by(service_of_slice)  # our slices per Service, for planning (the sources read it too)
        slices.subscribe(self._on_slice_event)
        services.subscribe(self._on_service_event)
        if endpoints is not None:
            endpoints.subscribe(self._on_endpoints_event)

    # --- inputs -----------------------------------------------------------------------------------

    def notify(self, key: TargetKey) -> None:
        """The desired state of ``key`` changed (wired to ``DesiredState.on_dirty``)."""
        if not self.owns(key):
            return
        if key in self._rechecking:  # real work now: due on the debounce, not when the recheck was
            self._rechecking.discard(key)
            self._retry_at.pop(key, None)
        now = time.monotonic()
        entry = self._pending.get(key)
        if entry is None:
            self._pending[key] = [now, now]
        else:
            entry[1] = now
        self._idle.clear()
        self._quiet.clear()
        self._wakeup.set()

    @staticmethod
    def _own_echo(records: dict[tuple[str, str], _Written], slot: tuple[str, str], event: InformerEvent) -> bool:
        """Forget our record of ``slot`` once the informer has caught up with it; True if ``event`` is
        the echo of our own write. Until then the record stands in for the cache; after, the cache is
        the truth, or a later deletion by someone else would be papered over by the record."""
        written = records.get(slot)
        if written is None or _rv(event.obj) < written.rv:
            return False
        del records[slot]
        return _rv(event.obj) == written.rv and (event.type == "DELETED") == (written.obj is None)

    def _on_slice_event(self, event: InformerEvent) -> None:
        meta = event.obj.get("metadata", {})
        slot = (meta.get("namespace", ""), meta.get("name", ""))
        if self._own_echo(self._written, slot, event):
            return
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        key = (slot[0], service or "")
        if service and key in self._known:
            self.notify(key)  # someone else changed one of our slices: re-plan (a no-op costs nothing)

    def _on_endpoints_event(self, event: InformerEvent) -> None:
        meta = event.obj.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if not self._own_echo(self._written_endpoints, key, event) and key in self._known:
            self.notify(key)  # someone else changed or deleted our Endpoints: repair

    def _on_service_event(self, event: InformerEvent) -> None:
        """A Service of one of our targets changed or went away: re-check it (repairs drift, and a
        conflict clears as soon as the foreign Service is deleted). Our own echo costs a no-op plan."""
        meta = event.obj.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        target = self.state.get(key)
        if target is not None and target.service is not None:
            if event.type == "DELETED":
                self._vanished.add(key)
            self.notify(key)

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        self._runner = ensure_running(self._runner, self.run, "writer")
        return self._runner

    async def stop(self) -> None:
        await cancel_and_wait(self._runner)
        self._runner = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def release_unowned(self, timeout: float = 10.0) -> int:
        """Forget every target this replica no longer owns and wait for their writes in flight (a
        handover: the new owner writes only after this returns and our ack is published). Writes still
        running after ``timeout`` are cancelled. Returns how many targets were let go."""
        gone = {k for k in (*self._pending, *self._known, *self._in_flight, *self._retry_at) if not self.owns(k)}
        for key in gone:
            self._pending.pop(key, None)
            self._rechecking.discard(key)
            self._retry_at.pop(key, None)
            self._backoffs.pop(key, None)
            self._known.discard(key)
        running = [task for key, task in self._in_flight.items() if key in gone]
        for key in gone & self._endpoints_waiting:
            self._in_flight[key].cancel()  # only waiting for an Endpoints slot: nothing of it is in flight
        if running:
            _done, late = await asyncio.wait(running, timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        self._wakeup.set()
        return len(gone)

    def sweep(self, keys: set[TargetKey]) -> None:
        """Delete what we published for ``keys`` (targets nobody claims, ``epctl.orphans``): like a
        target that went away while we ran, so the same delete path, owned and fenced, does it."""
        for key in keys:
            if self.state.get(key) is None and self.owns(key):
                self._known.add(key)
                self.notify(key)

    async def flush(self, timeout: float = 8.0) -> bool:
        """Write everything pending now, ignoring the debounce; True if all went out in time."""
        for entry in self._pending.values():
            entry[0] = entry[1] = 0.0
        self._wakeup.set()
        try:
            await within(timeout, self._idle.wait())
            return True
        except TimeoutError:
            return False

    def backlogged(self) -> bool:
        """More targets are due or being written than the write concurrency serves at once: a queue of
        API work is forming (the probe scheduler yields to it). A hold's recheck waiting for its time
        is no API work."""
        return len(self._in_flight) + len(self._pending) - len(self._rechecking) > self.concurrency

    def busy(self) -> bool:
        """Routing writes are due or in flight: status patches and Events wait (epctl.kube.priority)."""
        return not self._quiet.is_set()

    async def quiet(self) -> None:
        """Wait until no routing write is due or in flight."""
        await self._quiet.wait()

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until nothing is pending or in flight (tests and benchmarks)."""
        await within(timeout, self._idle.wait())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = time.monotonic()
            wake_at: float | None = None
            for key, (first, last) in list(self._pending.items()):
                if key in self._in_flight:
                    continue
                if not self.owns(key):
                    del self._pending[key]
                    continue
                due = max(min(last + self.batch_delay, first + self.max_batch_delay),
                          self._retry_at.get(key, 0.0))
                if due <= now:
                    del self._pending[key]
                    self._rechecking.discard(key)
                    # in flight from now, not from when the task first runs: otherwise the idle
                    # check below sees neither pending nor in flight and flush() returns early
                    self._spawn(self._reconcile(key), key)
                else:
                    wake_at = due if wake_at is None else min(wake_at, due)
            if self._batch_size:
                if self.metrics:
                    self.metrics.batch(self._batch_size)
                self._batch_size = 0
            if not self._in_flight and self._rechecking.issuperset(self._pending):
                self._idle.set()  # (a hold's recheck alone is no work flush() or a test must wait for)
            if self._in_flight or any(self._retry_at.get(key, 0.0) <= now for key in self._pending):
                self._quiet.clear()
            else:
                self._quiet.set()
            self._wakeup.clear()
            if wake_at is None:
                await self._wakeup.wait()
                continue
            handle = loop.call_later(max(0.0, wake_at - time.monotonic()), self._wakeup.set)
            try:
                await self._wakeup.wait()
            finally:
                handle.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None], key: TargetKey) -> None:
        self._batch_size += 1
        task = asyncio.create_task(coro)
        self._in_flight[key] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _task: self._done(key))  # also when cancelled before it ran

    def _done(self, key: TargetKey) -> None:
        self._in_flight.pop(key, None)
        self._wakeup.set()

    # --- reconcile one target -----------------------------------------------------------------------

    async def _reconcile(self, key: TargetKey) -> None:
        started = time.monotonic()
        try:
            async with self._slots.hold(SLICES_FIRST):
                if not self.owns(key):
                    return  # let go while waiting for a write slot
                target = self.state.get(key)
                if target is None and key not in self._known:
                    return
                endpoints_after = await self._sync(key, target)
            if endpoints_after:
                self._endpoints_waiting.add(key)  # a handover cancels this wait at once (no write started)
                try:
                    async with self._slots.hold(ENDPOINTS_AFTER):
                        self._endpoints_waiting.discard(key)
                        if not self.owns(key) or (target is None) != (self.state.get(key) is None):
                            # let go; or removed meanwhile (its removal is due next, slices first), or
                            # claimed again after its removal (due next: updated in place, not deleted)
                            return
                        # what the slices were planned from: a change made meanwhile is due again, and
                        # reaches the slices before (never after) the Endpoints
                        await self._sync_endpoints(key, target)
                finally:
                    self._endpoints_waiting.discard(key)
            self._backoffs.pop(key, None)
            self._retry_at.pop(key, None)
            if key in self._held:
                # a host kept not ready for want of a passing probe of ours: plan again soon. A probe
                # that passes while the check already counts healthy is no transition, so nothing
                # else would ever lift the hold (the Endpoints copy has no follow step at all). A
                # change that came while this ran is due already (and plans again): no recheck then
                self._held.discard(key)
                if key not in self._pending:
                    self.notify(key)
                    self._retry_at[key] = time.monotonic() + self.hold_recheck
                    self._rechecking.add(key)
            if target is None:
                self._known.discard(key)
                self._vanished.discard(key)
            elif self.reporter:
                self.reporter.synced(key)
            if self.metrics:
                self.metrics.sync("success", time.monotonic() - started)
        except Fenced:  # no longer ours to write, or our claim lapsed until the next renewal
            log.debug("write fenced off", extra={"target": "/".join(key)})
            if self.owns(key):  # a lapse our next renewal may end: try again (a step-down releases it)
                backoff = self._backoffs.setdefault(key, Backoff(self.backoff_initial, self.backoff_max))
                self._retry_at[key] = time.monotonic() + backoff.next_delay()
                self.notify(key)
            if self.metrics:
                self.metrics.sync("fenced", time.monotonic() - started)
        except OwnerGone as err:  # its removal from the desired state is on its way
            log.debug("not re-creating a Service whose owner is gone", extra={"target": "/".join(key),
                                                                            "error": str(err)})
            backoff = self._backoffs.setdefault(key, Backoff(self.backoff_initial, self.backoff_max))
            self._retry_at[key] = time.monotonic() + backoff.next_delay()
            self.notify(key)
            if self.metrics:
                self.metrics.sync("owner_gone", time.monotonic() - started)
        except ServiceConflict as err:  # not requeued: the next change of the target retries
            log.warning("Service conflict: not writing", extra={"target": "/".join(key), "error": str(err)})
            if self.reporter:
                self.reporter.failed(key, "ServiceConflict", str(err), True)
            if self.metrics:
                self.metrics.sync("conflict", time.monotonic() - started)
        except Permanent as err:  # not requeued: the next change of the target retries
            log.warning("write rejected as invalid", extra={"target": "/".join(key), "error": str(err)})
            if self.reporter:
                self.reporter.failed(key, "WriteRejected", str(err), True)
            if self.metrics:
                self.metrics.sync("invalid", time.monotonic() - started)
        except ApiError as err:
            backoff = self._backoffs.setdefault(key, Backoff(self.backoff_initial, self.backoff_max))
            delay = backoff.next_delay(err.retry_after or 0.0)
            self._retry_at[key] = time.monotonic() + delay
            self.notify(key)
            log.warning("write failed; will retry", extra={"target": "/".join(key), "error": str(err),
                                                           "retry_in": round(delay, 2)})
            if self.reporter:
                self.reporter.failed(key, "WriteFailed", str(err), False)
            if self.metrics:
                self.metrics.sync("error", time.monotonic() - started)
        except Exception:
            log.exception("reconcile crashed", extra={"target": "/".join(key)})
            self._retry_at[key] = time.monotonic() + self.backoff_max
            self.notify(key)

    async def _sync(self, key: TargetKey, target: Target | None, defer_endpoints: bool = True) -> bool:
        """Write ``key``'s Service and slices (and, where they must go in order, its Endpoints); True
        if its Endpoints are still to be written, under a slot of their own (routing first)."""
        if target is not None:
            self._known.add(key)
            if target.service is not None:
                try:
                    await self._ensure_service(target, target.service)
                except ServiceConflict:
                    # Not ours to write: then nothing of ours may be published for it either (slices a
                    # mirror wrote before handing the Service over, for instance). The next change retries.
                    await self._sync(key, None, defer_endpoints=False)
                    raise
        if self.endpoints is None:
            await self._sync_slices(key, target)
            await self._delete_controller_slices(key)
        elif is_ours(self._observed_endpoints(key)):
            # Both ours already: independent writes. While other targets wait to write slices, the
            # slices now and the Endpoints (which kube-proxy does not read) after theirs; else side by side.
            if defer_endpoints:
                await asyncio.sleep(0)  # the targets made due in the same pass queue for their slots first
                if self._slots.contended(SLICES_FIRST):
                    await self._sync_slices(key, target)
                    await self._delete_controller_slices(key)
                    return True
            results = await asyncio.gather(self._sync_slices(key, target), self._sync_endpoints(key, target),
                                           return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            await self._delete_controller_slices(key)
        else:
            # Taking the Endpoints over (from a seed tool, a person): our slices first, so the slice that
            # Kubernetes mirrored from the old Endpoints is only removed once ours are there.
            await self._sync_slices(key, target)
            await self._delete_controller_slices(key)
            await self._sync_endpoints(key, target)
        return False

    async def _delete_controller_slices(self, key: TargetKey) -> None:
        """After adopting a Service that had a selector (ours are published by now): delete the slices
        kube-controller-manager's EndpointSlice controller made for it. It does not do so itself when a
        Service loses its selector (its sync skips selector-less Services), so kube-proxy would keep
        routing to those Pods beside our hosts."""
        service = self.services.peek(*key)
        marked = ((service or {}).get("metadata", {}).get("annotations") or {}).get(POD_SLICES_ANNOTATION)
        if marked and _rv(service) <= self._pod_slices_cleared.get(key, -1):
            marked = None  # our own clearing has not reached the cache yet
        if key not in self._deselected and not marked:
            return
        found = await self.client.request("GET", ENDPOINTSLICES.path(key[0]), query={
            "labelSelector": f"{SERVICE_NAME_LABEL}={key[1]},{MANAGED_BY_LABEL}={SLICE_CONTROLLER}"})
        for obj in found.get("items") or []:
            meta = obj["metadata"]
            try:
                await self._send(key, "DELETE", ENDPOINTSLICES.path(key[0], meta["name"]),
                                 body={"preconditions": {"uid": meta.get("uid")}})
                self._count_ok("foreign_slice_delete")
            except ApiError as err:
                if err.code not in (404, 409):
                    raise
        cleared = await self._send(key, "PATCH", SERVICES.path(*key), content_type=MERGE_PATCH,
                                   body={"metadata": {"annotations": {POD_SLICES_ANNOTATION: None}}})
        self._pod_slices_cleared[key] = _rv(cleared)
        self._deselected.discard(key)

    async def _sync_slices(self, key: TargetKey, target: Target | None) -> None:
        groups = list(target.groups.values()) if target else []
        if self.decorate is not None and groups:
            groups = self.decorate(key, groups)
        owners = [target.owner] if target and target.owner else []
        fresh = False
        for _attempt in range(4):
            if fresh:
                observed = await self._list_slices(key)
                if self.on_listed is not None and target is not None:
                    # what we read may be newer than what our desired state was built from (a takeover
                    # from a lagging cache): let the source follow it before we plan (no dead host
                    # made ready by a "repair")
                    self.on_listed(key, observed)
                    target = self.state.get(key)
                    groups = list(target.groups.values()) if target else []
                    if self.decorate is not None and groups:
                        groups = self.decorate(key, groups)
            else:
                observed = self._observed(key)
            plan = plan_slices(key[0], key[1], groups, observed, max_per_slice=self.max_per_slice,
                               owner_references=owners, extra_labels=front_end_labels(target) if target else None)
            if self.may_ready is not None and target is not None:
                held = _held_not_ready(key, groups, _not_ready_in_slices(observed), self.may_ready)
                if held is not groups:
                    groups = held
                    self._held.add(key)
                    plan = plan_slices(key[0], key[1], groups, observed, max_per_slice=self.max_per_slice,
                                       owner_references=owners, extra_labels=front_end_labels(target))
            if plan.empty:
                break
            log.debug("writing slices", extra={"target": "/".join(key), "create": len(plan.creates),
                                               "update": len(plan.updates), "delete": len(plan.deletes)})
            try:
                await self._execute(key, plan)
                break
            except ApiError as err:
                if err.code in (404, 409):
                    fresh = True  # our view was stale: re-read from the API and plan again
                    continue
                raise
        else:
            raise ApiError(409, "Conflict", f"{key[0]}/{key[1]}: slices kept changing under us; will retry")

    # --- the v1 Endpoints ------------------------------------------------------------------------------

    def _observed_endpoints(self, key: TargetKey) -> Obj | None:
        """Our Endpoints of ``key``: the informer cache, or our own newer write while it catches up."""
        assert self.endpoints is not None
        cached = self.endpoints.peek(*key)
        written = self._written_endpoints.get(key)
        if written is not None and (cached is None or _rv(cached) < written.rv):
            return written.obj
        return cached

    async def _sync_endpoints(self, key: TargetKey, target: Target | None) -> None:
        """Create, update (adopting a hand-made or left-over object) or delete the Endpoints of ``key``;
        nothing when it is already right."""
        namespace, name = key
        observed = self._observed_endpoints(key)
        if target is None:
            if is_ours(observed):
                assert observed is not None
                try:
                    gone = await self._send(key, "DELETE", ENDPOINTS.path(namespace, name), body={
                        "preconditions": {"uid": observed["metadata"].get("uid")}})
                    self._record_endpoints(key, _rv(gone) or _rv(observed), None, "endpoints_delete")
                except ApiError as err:
                    if err.code not in (404, 409):
                        self._raise(err)
            return
        for _attempt in range(3):
            desired = self._desired_endpoints(key, target, observed)
            try:
                if observed is None:
                    written = await self._send(key, "POST", ENDPOINTS.path(namespace), body=desired)
                    self._record_endpoints(key, _rv(written), written, "endpoints_create")
                    return
                body = endpoints_update(observed, desired)
                if body is None:
                    return
                written = await self._send(key, "PUT", ENDPOINTS.path(namespace, name), body=body)
                self._record_endpoints(key, _rv(written), written, "endpoints_update")
                return
            except ApiError as err:
                self._count("endpoints", err)
                if err.code not in (404, 409):
                    self._raise(err)
                # someone else's object of that name (a seed tool's, hand-made) or a stale view: read it
                try:
                    observed = await self.client.request("GET", ENDPOINTS.path(namespace, name))
                except ApiError as read_err:
                    if read_err.code != 404:
                        raise
                    observed = None
        raise ApiError(409, "Conflict", f"{namespace}/{name}: Endpoints kept changing under us; will retry")

    def _desired_endpoints(self, key: TargetKey, target: Target, observed: Obj | None) -> Obj:
        """The Endpoints we want, holding not ready what ``observed`` says is not ready and no probe of
        ours has passed since (as the slices do): a new owner's stale cache, or a snapshot planned
        before a fresh read, never makes a dead host ready again in the copy older consumers read."""
        if self.may_ready is not None:
            groups = list(target.groups.values())
            held = _held_not_ready(key, groups, _not_ready_in_endpoints(observed), self.may_ready)
            if held is not groups:
                self._held.add(key)
                target = dataclasses.replace(target, groups={g: h for g, h in zip(target.groups, held, strict=True)})
        return desired_endpoints(target)

    def _record_endpoints(self, key: TargetKey, rv: int, obj: Obj | None, operation: str) -> None:
        assert self.endpoints is not None
        if obj is not None and _seen(self.endpoints, rv):  # (a delete's record keeps its old version's rv)
            self._written_endpoints.pop(key, None)
        else:
            self._written_endpoints[key] = _Written(key[1], rv, obj)
        if self.metrics:
            self.metrics.write(operation, "success")

    def _observed(self, key: TargetKey) -> list[Obj]:
        """Our slices of this Service: the informer cache overlaid with our own newer writes."""
        namespace, service = key
        view: dict[tuple[str, str], Obj] = {}
        for obj in self.slices.indexed(service_index(namespace, service)):
            view[(namespace, obj["metadata"]["name"])] = obj
        for slot, written in list(self._written.items()):
            if slot[0] != namespace or written.service != service:
                continue
            cached = view.get(slot)
            if cached is not None and _rv(cached) >= written.rv and written.obj is not None:
                del self._written[slot]  # the cache has caught up with our write
                continue
            if written.obj is None:
                if cached is not None and _rv(cached) > written.rv:
                    del self._written[slot]  # re-created by someone after our delete
                    continue
                view.pop(slot, None)
            else:
                view[slot] = written.obj
        return list(view.values())

    async def _list_slices(self, key: TargetKey) -> list[Obj]:
        namespace, service = key
        result = await self.client.request("GET", ENDPOINTSLICES.path(namespace), query={
            "labelSelector": f"{SERVICE_NAME_LABEL}={service},{MANAGED_BY_LABEL}={MANAGED_BY}"})
        items = result.get("items") or []
        for slot in [s for s, w in self._written.items() if s[0] == namespace and w.service == service]:
            del self._written[slot]
        return list(items)

    async def _execute(self, key: TargetKey, plan: Plan) -> None:
        namespace, service = key
        for obj in plan.deletes:
            name = obj["metadata"]["name"]
            try:
                gone = await self._send(key, "DELETE", ENDPOINTSLICES.path(namespace, name),
                    body={"preconditions": {"resourceVersion": obj["metadata"].get("resourceVersion")}})
                self._record(namespace, name, service, _rv(gone) or _rv(obj), None, "delete")
            except ApiError as err:
                self._count("delete", err)
                if err.code == 404:
                    self._record(namespace, name, service, _rv(obj), None, "delete")
                    continue
                self._raise(err)
        for obj in plan.updates:
            try:
                written = await self._send(key, "PUT", ENDPOINTSLICES.path(namespace, obj["metadata"]["name"]),
                                                    body=obj)
                self._record(namespace, obj["metadata"]["name"], service, _rv(written), written, "update")
            except ApiError as err:
                self._count("update", err)
                self._raise(err)
        for obj in plan.creates:
            try:
                written = await self._send(key, "POST", ENDPOINTSLICES.path(namespace), body=obj)
                self._record(namespace, obj["metadata"]["name"], service, _rv(written), written, "create")
            except ApiError as err:
                self._count("create", err)
                self._raise(err)

    def _record(self, namespace: str, name: str, service: str, rv: int, obj: Obj | None, operation: str) -> None:
        if obj is not None and _seen(self.slices, rv):  # (a delete's record keeps its old version's rv)
            self._written.pop((namespace, name), None)
        else:
            self._written[(namespace, name)] = _Written(service, rv, obj)
        if self.metrics:
            self.metrics.write(operation, "success")

    def _count(self, operation: str, err: ApiError) -> None:
        if self.metrics:
            self.metrics.write(operation, str(err.code or "connection"))

    @staticmethod
    def _raise(err: ApiError) -> None:
        if err.code == 422:
            raise Permanent(err.message) from err
        raise err

    # --- the Service --------------------------------------------------------------------------------

    @staticmethod
    def _service_body(target: Target, spec: ServiceSpec) -> Obj:
        body: Obj = {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": target.name, "namespace": target.namespace,
                         "labels": {MANAGED_LABEL: MANAGED_VALUE}},
            "spec": {"ports": [{"name": p.name, "port": p.port, "targetPort": p.target_port, "protocol": p.protocol}
                               for p in spec.ports]},
        }
        if target.owner:
            body["metadata"]["ownerReferences"] = [target.owner]
        if spec.headless:
            body["spec"]["clusterIP"] = "None"
        return body

    async def _ensure_service(self, target: Target, spec: ServiceSpec) -> None:
        key = (target.namespace, target.name)
        existing = self.services.peek(target.namespace, target.name)
        desired = self._service_body(target, spec)
        if existing is None:
            if key in self._vanished and target.owner and self.owner_exists is not None:
                if not await self.owner_exists(key, target.owner):
                    raise OwnerGone(f"{target.owner.get('kind')} {target.owner.get('name')} is gone")
            try:
                await self._send(key, "POST", SERVICES.path(target.namespace), body=desired)
                self._vanished.discard(key)
                self._count_ok("service_create")
                return
            except ApiError as err:
                if err.code == 422:
                    raise Permanent(err.message) from err
                raise  # 409 AlreadyExists: our cache was behind; retried once the informer has it
        owner_uid = (target.owner or {}).get("uid")
        all_refs = existing["metadata"].get("ownerReferences") or []
        refs = [ref for ref in all_refs if not _earlier_self(ref, target.owner)]
        owned = any(ref.get("uid") == owner_uid for ref in refs)
        inherited = len(refs) != len(all_refs)
        if not owned and not target.adopt and not inherited:
            raise ServiceConflict(f'Service "{target.name}" already exists and is not managed by epctl; set the '
                                  'annotation epctl.io/adopt: "true" on the ClusterEndpoint to take it over')
        is_headless = existing.get("spec", {}).get("clusterIP") == "None"
        if is_headless != spec.headless:
            # clusterIP is immutable: replace the Service (its slices are matched by label, not owned by it)
            await self._send(key, "DELETE", SERVICES.path(target.namespace, target.name), body={
                "preconditions": {"uid": existing["metadata"]["uid"]}})
            await self._send(key, "POST", SERVICES.path(target.namespace), body=desired)
            self._count_ok("service_replace")
            return
        current_ports = [{"name": p.get("name", ""), "port": p.get("port"), "targetPort": p.get("targetPort"),
                          "protocol": p.get("protocol", "TCP")} for p in existing.get("spec", {}).get("ports") or []]
        want_ports = desired["spec"]["ports"]
        patch: Obj = {}
        if current_ports != want_ports or existing.get("spec", {}).get("selector"):
            patch["spec"] = {"ports": want_ports, "selector": None}
        if existing.get("spec", {}).get("selector"):
            # in the same write: whoever writes this target next (us, or another replica after a crash)
            # knows kube-controller-manager's Pod slices are still to be deleted
            patch.setdefault("metadata", {})["annotations"] = {POD_SLICES_ANNOTATION: "delete"}
        if (existing["metadata"].get("labels") or {}).get(MANAGED_LABEL) != MANAGED_VALUE:
            patch.setdefault("metadata", {})["labels"] = {MANAGED_LABEL: MANAGED_VALUE}
        if (not owned or inherited) and target.owner:
            # adopting takes control: a previous controller reference (the ClusterEndpoint of the tool we
            # replace, say) goes, or the API server refuses two; other owners stay
            patch.setdefault("metadata", {})["ownerReferences"] = [
                *(r for r in refs if r.get("uid") != owner_uid and r.get("controller") is not True), target.owner]
        if patch:
            try:
                await self._send(key, "PATCH", SERVICES.path(target.namespace, target.name), body=patch,
                                          content_type=MERGE_PATCH)
                self._count_ok("service_update")
                if existing.get("spec", {}).get("selector"):
                    self._deselected.add(key)
            except ApiError as err:
                if err.code == 422:
                    raise Permanent(err.message) from err
                raise

    async def _send(self, key: TargetKey, method: str, path: str, **kwargs: Any) -> Obj:
        """Every write of the writer: sent only while the fence lets this replica write ``key``."""
        return await self.client.request(method, path, fence=self.fence.for_key(key), **kwargs)

    def _count_ok(self, operation: str) -> None:
        if self.metrics:
            self.metrics.write(operation, "success")
