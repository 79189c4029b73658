"""Leader election on a ``coordination.k8s.io/v1`` Lease, the way client-go's leaderelection does it.

- Acquire: create the Lease, or take it over when its holder released it (holder cleared and signed
  ``epctl.io/released``) or has not renewed for its lease duration as *observed locally* (remote
  timestamps are never compared with our clock). A Lease deleted, its holder cleared by hand or its
  duration shortened frees nothing before that: the holder may still be writing. A candidate that
  never saw the Lease held waits one lease duration from its start before taking it.
- A leader that finds its Lease deleted or held by someone else steps down (it is seen dead), then
  campaigns again like anyone.
- Renew every ``retry_period``. If renewals keep failing for ``renew_deadline`` (< lease duration) the
  leader steps down on its own, before anyone else may take the Lease: never two writers.
- Release on shutdown: the holder is cleared and the release signed, so a standby takes over at its
  next retry (~1 s), not after the lease duration.
- Every write is a conditional update on the Lease's resourceVersion; a 409 means someone else won.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from epctl.kube.client import LEASES, ApiError, KubeClient

log = logging.getLogger(__name__)
Obj = dict[str, Any]


def micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


RELEASED_ANNOTATION = "epctl.io/released"  # signed by a holder that let go after its last write


def published_duration(lease_duration: float) -> int:
    """``leaseDurationSeconds`` is a whole number above 0 (the API server refuses 0): round *up*, so
    the others never count us as expired sooner than the duration our renew deadline was checked
    against (10.9 s published as 10 would let them take over 0.4 s before a 10.5 s deadline)."""
    return max(1, math.ceil(lease_duration))


def default_identity() -> str:
    """Unique per process: the pod name (the hostname in a pod) and a random suffix, so a restarted
    container never mistakes its predecessor's Lease for its own."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class LeaderElector:
    def __init__(self, client: KubeClient, namespace: str, name: str = "epctl-controller", *,
                 identity: str | None = None, lease_duration: float = 15.0, renew_deadline: float = 10.0,
                 retry_period: float = 2.0) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")
        self.client, self.namespace, self.name = client, namespace, name
        self.identity = identity or default_identity()
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self.is_leader = False
        self._lease: Obj | None = None
        self.step_downs = 0  # times leadership was lost (deadline passed, or someone else holds it)
        self.deadline = 0.0  # monotonic: the leader sends nothing after this unless it renews first
        # the last holder seen *renewing*, when we first saw that renewal, and the longest duration it
        # published: only its own signed release, or that long without a renewal, frees the Lease (a
        # deleted Lease, a holder cleared by hand, a shortened duration do not)
        self._holder: str | None = None
        self._renewed = ""
        self._seen_at = 0.0
        self._duration = lease_duration
        self._released = False
        self._started: float | None = None  # first attempt: a Lease never seen held may be held by a writer
        self._lost = False  # our own Lease was deleted or taken while we led
        self.acquired_rv = ""  # resourceVersion of the write that won the Lease (a new leader's caches catch up to it)

    def _observe(self, holder: str, renewed: str, duration: float, released_by: str, now: float) -> None:
        if holder and (holder, renewed) != (self._holder, self._renewed):
            self._duration = duration if holder != self._holder else max(duration, self._duration)
            self._holder, self._renewed, self._seen_at, self._released = holder, renewed, now, False
        elif holder and holder == self._holder:
            self._duration = max(duration, self._duration)  # shortened by hand: not for us
        elif not holder and released_by and released_by == self._holder:
            self._released = True

    def _free(self, now: float) -> bool:
        """May we take the Lease over (create it, or write ourselves into it)?"""
        if self._holder is None:  # never seen held: whoever held it may still write for a whole duration
            return self._started is not None and now - self._started >= self.lease_duration
        if self._holder == self.identity or self._released:
            return True
        return now - self._seen_at >= self._duration

    async def _try(self, timeout: tuple[float, float]) -> bool:
        """One acquire-or-renew attempt; True if we hold the Lease afterwards. A leader that finds its
        Lease deleted or held by someone else returns False and marks itself lost (it steps down and
        campaigns again like anyone)."""
        path = LEASES.path(self.namespace, self.name)
        now = time.monotonic()
        if self._started is None:
            self._started = now
        try:
            lease = await self.client.request("GET", path, timeout=timeout)
        except ApiError as err:
            if err.code != 404:
                raise
            if self.is_leader:
                self._lost = True
                return False
            if not self._free(time.monotonic()):
                return False
            stamp = micro_now()
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity,
                             "leaseDurationSeconds": published_duration(self.lease_duration),
                             "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0}}
            try:
                self._lease = await self.client.request("POST", LEASES.path(self.namespace), body=body,
                                                        timeout=timeout)
            except ApiError as create_err:
                if create_err.code == 409:
                    return False
                raise
            self._holder = self.identity
            self.acquired_rv = str((self._lease.get("metadata") or {}).get("resourceVersion") or "")
            return True
        spec, meta = lease.get("spec") or {}, lease.get("metadata") or {}
        holder = spec.get("holderIdentity") or ""
        # never shorter than ours: a duration cut by hand (or a replica misconfigured) must not let us in early
        duration = max(float(spec.get("leaseDurationSeconds") or 0), self.lease_duration)
        self._observe(holder, str(spec.get("renewTime")), duration,
                      (meta.get("annotations") or {}).get(RELEASED_ANNOTATION, ""), time.monotonic())
        if holder != self.identity:
            if self.is_leader:
                self._lost = True  # deleted and re-created, or edited: the others may count us as gone
                return False
            if not self._free(time.monotonic()):
                return False  # held by someone who renewed within its lease duration, as far as we saw
        stamp = micro_now()
        taking_over = holder != self.identity
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != RELEASED_ANNOTATION}
        lease["metadata"] = {**meta, "annotations": annotations}
        lease["spec"] = {**spec, "holderIdentity": self.identity,
                         "leaseDurationSeconds": published_duration(self.lease_duration), "renewTime": stamp,
                         "acquireTime": stamp if taking_over else spec.get("acquireTime", stamp),
                         "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (1 if taking_over else 0)}
        try:
            self._lease = await self.client.request("PUT", path, body=lease, timeout=timeout)
        except ApiError as err:
            if err.code == 409:
                return False
            raise
        if taking_over:
            self.acquired_rv = str((self._lease.get("metadata") or {}).get("resourceVersion") or "")
        self._holder = self.identity
        return True

    async def run(self, on_started: Callable[[], Awaitable[None]], on_stopped: Callable[[], Awaitable[None]]) -> None:
        """Campaign forever; call ``on_started``/``on_stopped`` as leadership comes and goes.

        Why two leaders cannot overlap: a renewal counts from the moment its attempt *started*
        (``sent``), which is no later than the server's write of it, and a standby counts the lease
        duration from when it *saw* that write, later still. The leader steps down at
        ``sent + renew_deadline``: no attempt and no sleep runs past that deadline, so the check
        happens on time (give or take event-loop lag), while a standby can take over no earlier
        than ``sent + lease_duration``. ``lease_duration - renew_deadline`` (5 s by default) is
        the margin for loop lag and for writes already on the wire when the leader stepped down.
        """
        deadline = 0.0  # the leader steps down at this monotonic time unless it renews first
        self.deadline = deadline
        while True:
            sent = time.monotonic()
            # an attempt may take until the deadline (client-go's renew loop does the same): a slow API
            # server must not cost the leader its Lease while a renewal could still land in time
            budget = max(0.0, deadline - sent) if self.is_leader else self.renew_deadline
            try:
                ok = False
                if budget > 0:
                    async with asyncio.timeout(budget):  # unlike wait_for on 3.11, never swallows a cancel
                        ok = await self._try((budget, budget))
            except (ApiError, TimeoutError) as err:
                log.warning("leader election: %s", err, extra={"lease": f"{self.namespace}/{self.name}"})
                ok = False
            except Exception:  # a bug must not leave us "leader" with nobody renewing
                log.exception("leader election attempt failed", extra={"lease": f"{self.namespace}/{self.name}"})
                ok = False
            if ok:
                deadline = self.deadline = sent + self.renew_deadline
                if not self.is_leader:
                    self.is_leader = True
                    log.info("became leader", extra={"identity": self.identity})
                    await on_started()
            elif self.is_leader and (time.monotonic() >= deadline or self._lost):
                self.is_leader, self._lost = False, False
                self.step_downs += 1
                log.warning("lost leadership", extra={"identity": self.identity})
                await on_stopped()
            delay = self.retry_period if self.is_leader else self.retry_period * random.uniform(1.0, 1.2)
            if self.is_leader:
                delay = max(0.0, min(delay, deadline - time.monotonic()))
            await asyncio.sleep(delay)

    def valid_until(self) -> float:
        """The write fence's limit (``epctl.shard.fence``): the renew deadline while leading."""
        return self.deadline if self.is_leader else 0.0

    async def release(self) -> None:
        """Give the Lease up now (graceful shutdown), so a standby does not wait out the duration."""
        if not self.is_leader or self._lease is None:
            return
        self.is_leader = False
        lease = dict(self._lease)
        meta = lease.get("metadata") or {}
        lease["metadata"] = {**meta, "annotations": {**(meta.get("annotations") or {}),
                                                     RELEASED_ANNOTATION: self.identity}}
        lease["spec"] = {**(lease.get("spec") or {}), "holderIdentity": "", "leaseDurationSeconds": 1,
                         "renewTime": micro_now()}
        try:
            await self.client.request("PUT", LEASES.path(self.namespace, self.name), body=lease,
                                      timeout=(1.0, 1.0))
        except ApiError as err:
            log.warning("could not release the lease: %s", err)
