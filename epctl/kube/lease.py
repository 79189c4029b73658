"""Leader election on a ``coordination.k8s.io/v1`` Lease, the way client-go's leaderelection does it.

- Acquire: create the Lease, or take it over when its holder is empty (released) or has not renewed
  for ``lease_duration`` as *observed locally* (remote timestamps are never compared with our clock).
- Renew every ``retry_period``. If renewals keep failing for ``renew_deadline`` (< lease duration) the
  leader steps down on its own, before anyone else may take the Lease: never two writers.
- Release on shutdown: the holder is cleared so a standby takes over at its next retry (~1 s), not
  after the lease duration.
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
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._lease: Obj | None = None
        self.step_downs = 0  # times leadership was lost (deadline passed, or someone else holds it)
        self.deadline = 0.0  # monotonic: the leader sends nothing after this unless it renews first

    async def _try(self, timeout: tuple[float, float]) -> bool:
        """One acquire-or-renew attempt; True if we hold the Lease afterwards."""
        path = LEASES.path(self.namespace, self.name)
        try:
            lease = await self.client.request("GET", path, timeout=timeout)
        except ApiError as err:
            if err.code != 404:
                raise
            now = micro_now()
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity,
                             "leaseDurationSeconds": published_duration(self.lease_duration),
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
            try:
                self._lease = await self.client.request("POST", LEASES.path(self.namespace), body=body,
                                                        timeout=timeout)
            except ApiError as create_err:
                if create_err.code == 409:
                    return False
                raise
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, str(spec.get("renewTime")))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        if holder and holder != self.identity:
            duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
            if time.monotonic() - self._observed_at < duration:
                return False  # held by someone who renewed within its lease duration, as far as we saw
        now = micro_now()
        taking_over = holder != self.identity
        lease["spec"] = {**spec, "holderIdentity": self.identity,
                         "leaseDurationSeconds": published_duration(self.lease_duration), "renewTime": now,
                         "acquireTime": now if taking_over else spec.get("acquireTime", now),
                         "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (1 if taking_over else 0)}
        try:
            self._lease = await self.client.request("PUT", path, body=lease, timeout=timeout)
        except ApiError as err:
            if err.code == 409:
                return False
            raise
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
            elif self.is_leader and (time.monotonic() >= deadline or self._held_by_other()):
                self.is_leader = False
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

    def _held_by_other(self) -> bool:
        return bool(self._observed and self._observed[0] and self._observed[0] != self.identity)

    async def release(self) -> None:
        """Give the Lease up now (graceful shutdown), so a standby does not wait out the duration."""
        if not self.is_leader or self._lease is None:
            return
        self.is_leader = False
        lease = dict(self._lease)
        lease["spec"] = {**(lease.get("spec") or {}), "holderIdentity": "", "leaseDurationSeconds": 1,
                         "renewTime": micro_now()}
        try:
            await self.client.request("PUT", LEASES.path(self.namespace, self.name), body=lease,
                                      timeout=(1.0, 1.0))
        except ApiError as err:
            log.warning("could not release the lease: %s", err)
