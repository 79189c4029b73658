"""core/v1 Events, recorded the way client-go's event broadcaster (its EventCorrelator) does.

- Correlation: the same (object, type, reason, message) again within 10 minutes bumps ``count``
  and ``lastTimestamp`` of the existing Event instead of creating a new one.
- Aggregation (client-go's EventAggregator): once 10 different messages of the same (object, type,
  reason) came within 10 minutes, further ones go to one Event with the message "(combined from
  similar events): <latest>", counted up with each. Like client-go, it combines per involved object:
  Events about different ClusterEndpoints are never merged (``kubectl describe`` shows an object's).
- Spam filter: a token bucket per involved object (burst 25, one token per 5 minutes), so a
  flapping host cannot flood the API server; dropped events are counted in a metric.
- Fire and forget: :meth:`EventRecorder.record` never blocks and never raises; a background task
  writes, and a failed write is logged and dropped (Events are best-effort in Kubernetes too).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from epctl.kube.client import EVENTS, MERGE_PATCH, ApiError, Fenced, KubeClient
from epctl.kube.priority import Turn
from epctl.shard.fence import UNFENCED, Fence
from epctl.tasks import KeyedTasks, cancel_and_wait, ensure_running, within

log = logging.getLogger(__name__)
Obj = dict[str, Any]
CORRELATION_WINDOW = 600.0
AGGREGATE_MAX = 10  # client-go's defaultAggregateMaxEvents (its interval is CORRELATION_WINDOW)
COMBINED = "(combined from similar events): "
BURST, REFILL_SECONDS = 25, 300.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Seen:
    name: str
    count: int
    last: float


@dataclass
class _Similar:
    messages: set[str]
    last: float


def _key_of(involved: Obj) -> tuple[str, str]:
    meta = involved.get("metadata", {})
    return (meta.get("namespace") or "default", meta.get("name", ""))


class EventRecorder:
    def __init__(self, client: KubeClient, component: str = "epctl-controller",
                 burst: int = BURST, refill_seconds: float = REFILL_SECONDS, concurrency: int = 4) -> None:
        self.client = client
        self.component = component
        self.instance = socket.gethostname()
        self.burst, self.refill_seconds = burst, refill_seconds
        self.dropped = 0
        self.created = self.counted = 0  # Events created, and count bumps of existing ones (benchmarks)
        self._queue: asyncio.Queue[tuple[Obj, str, str, str]] = asyncio.Queue(maxsize=10_000)
        self._buckets: dict[str, tuple[float, float]] = {}  # uid -> (tokens, updated)
        self._seen: dict[tuple[str, str, str, str | None], _Seen] = {}  # message None: the combined Event
        self._similar: dict[tuple[str, str, str], _Similar] = {}  # (uid, type, reason) -> messages seen
        self._task: asyncio.Task[None] | None = None
        self.turn: Turn | None = None  # waited for before each write: routing writes and status first
        # shard ownership: Events only about objects of the targets this replica owns
        self.owns: Callable[[tuple[str, str]], bool] = lambda _key: True
        self.fence: Fence = UNFENCED  # asked at the moment each Event is sent (epctl.shard.fence)
        # writes in flight: up to ``concurrency``, one per involved object, so one object's Events
        # (and a correlation's create before its count bump) stay in order (epctl.tasks.KeyedTasks)
        self._writing = KeyedTasks(concurrency, "event")

    def record(self, involved: Obj, type_: str, reason: str, message: str) -> None:
        """Queue an Event about ``involved`` (a full object, or at least apiVersion/kind/metadata)."""
        if not self.owns(_key_of(involved)):
            return
        uid = involved.get("metadata", {}).get("uid", "")
        tokens, updated = self._buckets.get(uid, (float(self.burst), time.monotonic()))
        now = time.monotonic()
        tokens = min(float(self.burst), tokens + (now - updated) / self.refill_seconds)
        if tokens < 1.0:
            self.dropped += 1
            self._buckets[uid] = (tokens, now)
            return
        self._buckets[uid] = (tokens - 1.0, now)
        # only what the Event names: a caller may hand over a fresh decoded copy of a large object per
        # Event (a frozen cache), and a burst queues thousands of them
        meta = involved.get("metadata", {})
        ref = {"apiVersion": involved.get("apiVersion", ""), "kind": involved.get("kind", ""),
               "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta}}
        try:
            self._queue.put_nowait((ref, type_, reason, message[:1024]))
        except asyncio.QueueFull:
            self.dropped += 1

    def start(self) -> asyncio.Task[None]:
        self._task = ensure_running(self._task, self._run, "events")
        return self._task

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self._writing.cancel_all()

    def in_flight(self) -> int:
        """Event writes sent and not yet answered."""
        return len(self._writing)

    async def release_unowned(self, timeout: float = 10.0) -> None:
        """Wait for an Event write in flight about an object no longer ours (queued ones are skipped),
        at most ``timeout`` (the handover's bound: then it is cancelled)."""
        await self._writing.release(lambda key: not self.owns(key), timeout)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until queued events are written (tests, shutdown)."""
        try:
            await within(timeout, self._queue.join())
        except TimeoutError:
            pass

    async def _run(self) -> None:
        while True:
            involved, type_, reason, message = await self._queue.get()
            started = False
            try:
                key = _key_of(involved)
                await self._writing.free(key)
                if self.turn is not None:
                    await self.turn.wait()
                if not self.owns(key):  # let go since it was queued
                    continue
                # its own task, so a handover can wait for exactly this write (or cancel it)
                self._writing.start(key, self._write_one(involved, type_, reason, message))
                started = True
            finally:
                if not started:
                    self._queue.task_done()

    async def _write_one(self, involved: Obj, type_: str, reason: str, message: str) -> None:
        try:
            await self._write(involved, type_, reason, message)
        except ApiError as err:
            log.warning("could not record event", extra={"reason": reason, "error": str(err)})
        except Fenced:
            pass  # no longer ours, or our claim lapsed: its owner records what it sees
        except Exception:
            log.exception("event recorder failed")
        finally:
            self._queue.task_done()

    async def _write(self, involved: Obj, type_: str, reason: str, message: str) -> None:
        meta = involved.get("metadata", {})
        namespace = meta.get("namespace") or "default"
        now = time.monotonic()
        message, key = self._aggregate(meta.get("uid", ""), type_, reason, message, now)
        seen = self._seen.get(key)
        if seen is not None and now - seen.last < CORRELATION_WINDOW:
            seen.count += 1
            seen.last = now
            try:
                await self.client.request("PATCH", EVENTS.path(namespace, seen.name),
                                          body={"count": seen.count, "lastTimestamp": _now(), "message": message},
                                          content_type=MERGE_PATCH, fence=self.fence.for_key(_key_of(involved)))
                self.counted += 1
                return
            except ApiError as err:
                if err.code != 404:
                    raise
        stamp = _now()
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": namespace},
            "involvedObject": {"apiVersion": involved.get("apiVersion", ""), "kind": involved.get("kind", ""),
                               "name": meta.get("name", ""), "namespace": namespace, "uid": meta.get("uid", ""),
                               "resourceVersion": meta.get("resourceVersion", "")},
            "type": type_, "reason": reason, "message": message, "count": 1,
            "firstTimestamp": stamp, "lastTimestamp": stamp,
            "source": {"component": self.component, "host": self.instance},
            "reportingComponent": "epctl.io/controller", "reportingInstance": self.instance,
        }
        created = await self.client.request("POST", EVENTS.path(namespace), body=body,
                                            fence=self.fence.for_key(_key_of(involved)))
        self._seen[key] = _Seen(created["metadata"]["name"], 1, now)
        self.created += 1
        if len(self._seen) > 10_000:  # forget the oldest correlations
            for old in sorted(self._seen, key=lambda k: self._seen[k].last)[:1000]:
                del self._seen[old]
        if len(self._similar) > 10_000:
            for gone in sorted(self._similar, key=lambda k: self._similar[k].last)[:1000]:
                del self._similar[gone]

    def _aggregate(self, uid: str, type_: str, reason: str, message: str,
                   now: float) -> tuple[str, tuple[str, str, str, str | None]]:
        """client-go's EventAggregate: the message to send and the key it is counted under. The 10th
        different message of (object, type, reason) within the window, and every similar one after
        it, goes to the combined Event."""
        similar = self._similar.get((uid, type_, reason))
        if similar is None or now - similar.last > CORRELATION_WINDOW:
            similar = self._similar[(uid, type_, reason)] = _Similar(set(), now)
        similar.last = now
        similar.messages.add(message)
        if len(similar.messages) < AGGREGATE_MAX:
            return message, (uid, type_, reason, message)
        similar.messages.pop()  # the set stays below the mark, so every further one is combined
        return (COMBINED + message)[:1024], (uid, type_, reason, None)
