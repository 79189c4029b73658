"""ClusterEndpoint status: computed from what we know, written only when it changes.

``conditions_with_times`` keeps each condition's ``lastTransitionTime`` unless its status
changed, so identical states produce identical documents; the writer compares the document with
what is already on the object and skips the write when equal (no heartbeat timestamps, no churn).
Writes go through the status subresource, debounced like slices.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from epctl.kube.backoff import Backoff
from epctl.kube.client import MERGE_PATCH, ApiError, Fenced, KubeClient, Resource
from epctl.kube.priority import Turn
from epctl.shard.fence import UNFENCED, Fence
from epctl.tasks import KeyedTasks, cancel_and_wait, ensure_running, within

log = logging.getLogger(__name__)
Obj = dict[str, Any]


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def conditions_with_times(previous: list[Obj] | None, current: list[Obj], stamp: str | None = None) -> list[Obj]:
    """Give each condition a lastTransitionTime: the old one if its status did not change."""
    old = {c.get("type"): c for c in previous or []}
    stamp = stamp or now_rfc3339()
    out = []
    for condition in current:
        before = old.get(condition["type"]) or {}
        kept = before.get("lastTransitionTime") if before.get("status") == condition["status"] else None
        out.append({**condition, "lastTransitionTime": kept or stamp})
    return out


def digest(status: Obj) -> bytes:
    """A 16-byte fingerprint of a status document: what the writer remembers of each status it wrote
    (only ever compared for equality), instead of a second copy of the document per object."""
    return hashlib.blake2b(json.dumps(status, sort_keys=True, separators=(",", ":")).encode(),
                           digest_size=16).digest()


def merge_patch(current: Any, desired: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns ``current`` into ``desired``: keys that must go are
    sent as null. A plain ``{"status": desired}`` would leave every key we stopped writing in place
    (``status.discovery`` after discovery was removed from the spec)."""
    if not isinstance(desired, dict) or not isinstance(current, dict):
        return desired
    patch: Obj = {key: None for key in current if key not in desired}
    for key, value in desired.items():
        if key not in current:
            patch[key] = value
        elif current[key] != value:
            patch[key] = merge_patch(current[key], value)
    return patch


def _rv(obj: Obj) -> int:
    try:
        return int(obj.get("metadata", {}).get("resourceVersion", "0"))
    except ValueError:
        return 0


class StatusWriter:
    """Debounced ``PATCH .../status`` per object, skipped when the object already has that status."""

    def __init__(self, client: KubeClient, resource: Resource, current: Callable[[str, str], Obj | None], *,
                 delay: float = 0.1, concurrency: int = 4) -> None:
        self.client, self.resource, self.current = client, resource, current
        self.delay = delay
        self.writes = 0
        self._pending: dict[tuple[str, str], tuple[Obj, float]] = {}
        self._last: dict[tuple[str, str], bytes] = {}  # digest() of the status last written per object
        # the status our last patch left on an object, and its resourceVersion: what the object says
        # until the informer shows that version (a status set back meanwhile must still be sent);
        # dropped as soon as the informer has it (observed()), so it costs nothing at rest
        self._landed: dict[tuple[str, str], tuple[Obj | None, int]] = {}
        self._backoff: dict[tuple[str, str], Backoff] = {}
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._quiet = asyncio.Event()  # nothing due or being written (retries in backoff do not count)
        self._quiet.set()
        self.turn: Turn | None = None  # waited for before each patch: routing writes go first
        self._task: asyncio.Task[None] | None = None
        self.owns: Callable[[tuple[str, str]], bool] = lambda _key: True  # shard ownership: write only these
        self.fence: Fence = UNFENCED  # asked at the moment each patch is sent (epctl.shard.fence)
        # patches in flight: up to ``concurrency``, one per object (epctl.tasks.KeyedTasks)
        self._writing = KeyedTasks(concurrency, "status", on_error=self._failed, on_done=self._wakeup.set)

    def set(self, namespace: str, name: str, status: Obj) -> None:
        key = (namespace, name)
        if not self.owns(key):
            self._pending.pop(key, None)
            return
        existing = self._known(key)
        # while a patch for it is in flight, what the object says is about to change: queue it (_write
        # compares again before sending)
        if key not in self._writing and (status == existing or (
                key not in self._pending and key in self._last and digest(status) == self._last[key])):
            self._pending.pop(key, None)
            return
        self._pending[key] = (status, time.monotonic() + self.delay)
        self._idle.clear()
        self._quiet.clear()
        self._wakeup.set()

    def forget(self, namespace: str, name: str) -> None:
        self._pending.pop((namespace, name), None)
        self._last.pop((namespace, name), None)
        self._landed.pop((namespace, name), None)
        self._wakeup.set()  # what was waiting on it (flush(), the idle state) is re-judged now

    def observed(self, obj: Obj) -> None:
        """The informer delivered ``obj``: forget our own copy of its status once it is as new."""
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        landed = self._landed.get(key)
        if landed is not None and _rv(obj) >= landed[1]:
            del self._landed[key]

    def _known(self, key: tuple[str, str]) -> Obj | None:
        """The object's status as far as we know: the informer's, unless our last patch is newer."""
        obj = self.current(*key)
        landed = self._landed.get(key)
        if landed is not None:
            if obj is None or _rv(obj) < landed[1]:
                return landed[0]
            del self._landed[key]  # the informer has caught up
        return (obj or {}).get("status")

    def start(self) -> asyncio.Task[None]:
        self._task = ensure_running(self._task, self._run, "status-writer")
        return self._task

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self._writing.cancel_all()

    def waiting(self, namespace: str, name: str) -> bool:
        """A status for this object is queued and not sent yet (it may be recomputed before it goes)."""
        return (namespace, name) in self._pending

    def in_flight(self) -> int:
        """Status patches sent and not yet answered."""
        return len(self._writing)

    def holding(self) -> int:
        """Statuses kept from our patches' answers until the informer delivers them (0 at rest)."""
        return len(self._landed)

    @staticmethod
    def _failed(key: object, error: BaseException) -> None:
        log.error("status write failed", exc_info=error)

    async def release_unowned(self, timeout: float = 10.0) -> None:
        """Drop what is pending for objects no longer ours and wait for a write to one in flight, at
        most ``timeout`` (the handover's bound: then it is cancelled)."""
        for key in [k for k in self._pending if not self.owns(k)]:
            del self._pending[key]
        for key in [k for k in self._last if not self.owns(k)]:
            del self._last[key]  # a later owner may have written something else meanwhile
        for key in [k for k in self._landed if not self.owns(k)]:
            del self._landed[key]
        self._wakeup.set()
        await self._writing.release(lambda key: not self.owns(key), timeout)

    def backlogged(self) -> bool:
        """More patches are waiting or in flight than the concurrency sends at once: a queue of API work
        is forming (the probe scheduler yields to it, as to the writer's)."""
        return len(self._pending) + len(self._writing) > self._writing.limit

    def busy(self) -> bool:
        """Status patches are due or being written: Events wait (epctl.kube.priority)."""
        return not self._quiet.is_set()

    async def quiet(self) -> None:
        await self._quiet.wait()

    async def flush(self, timeout: float = 5.0) -> None:
        self._pending = {k: (v, 0.0) for k, (v, _) in self._pending.items()}
        self._wakeup.set()
        try:
            await within(timeout, self._idle.wait())
        except TimeoutError:
            pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = time.monotonic()
            due = [k for k, (_, at) in self._pending.items() if at <= now]
            for key in due:
                if key in self._writing:
                    continue  # one patch per object at a time: this one goes when that one is answered
                await self._writing.free()
                if self.turn is not None and key in self._pending:
                    await self.turn.wait()  # routing writes first; the newest status is taken after
                item = self._pending.pop(key, None)  # set() or forget() may have dropped it meanwhile
                if item is not None and self.owns(key):
                    # its own task, so a handover can wait for exactly this write to finish (or cancel it)
                    self._writing.start(key, self._write(key, item[0]))
            if not self._pending and not self._writing:
                self._idle.set()
            else:
                self._idle.clear()
            soon = time.monotonic() + self.delay  # what is due later than this waits out a retry backoff
            waiting = [at for key, (_, at) in self._pending.items() if key not in self._writing]
            if self._writing or any(at <= soon for at in waiting):
                self._quiet.clear()
            else:
                self._quiet.set()
            self._wakeup.clear()
            if not waiting:
                await self._wakeup.wait()  # set by set(), flush() and every answered patch
                continue
            wake = min(waiting)
            handle = loop.call_later(max(0.0, wake - time.monotonic()), self._wakeup.set)
            try:
                await self._wakeup.wait()
            finally:
                handle.cancel()

    async def _write(self, key: tuple[str, str], status: Obj) -> None:
        namespace, name = key
        known = self._known(key)
        if known == status:
            self._last[key] = digest(status)
            return
        self._last.pop(key, None)  # until this write is known to have landed (it may be cancelled)
        self._landed.pop(key, None)
        try:
            current = known or {}
            answer = await self.client.request("PATCH", self.resource.path(namespace, name, "status"),
                                               body={"status": merge_patch(current, status)},
                                               content_type=MERGE_PATCH, fence=self.fence.for_key(key))
            if isinstance(answer, dict) and _rv(self.current(namespace, name) or {}) < _rv(answer):
                self._landed[key] = (answer.get("status"), _rv(answer))  # until the echo (observed())
            self._last[key] = digest(status)
            self.writes += 1
            self._backoff.pop(key, None)
        except Fenced:  # no longer ours (its owner writes it), or our claim lapsed until the next renewal
            if self.owns(key) and key not in self._pending:
                delay = self._backoff.setdefault(key, Backoff(1.0, 60.0)).next_delay()
                self._pending[key] = (status, time.monotonic() + delay)
        except ApiError as err:
            if err.code == 404:
                return  # the object is gone
            delay = self._backoff.setdefault(key, Backoff(1.0, 60.0)).next_delay(err.retry_after or 0.0)
            if key not in self._pending:
                self._pending[key] = (status, time.monotonic() + delay)
            log.warning("status write failed; will retry", extra={"object": f"{namespace}/{name}",
                                                                   "error": str(err)})
        except Exception:  # a bug of ours (a status that does not encode, ...): logged, retried with backoff
            log.exception("status write failed; will retry", extra={"object": f"{namespace}/{name}"})
            delay = self._backoff.setdefault(key, Backoff(1.0, 60.0)).next_delay()
            if key not in self._pending:
                self._pending[key] = (status, time.monotonic() + delay)
