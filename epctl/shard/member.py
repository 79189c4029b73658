"""One replica's membership in the shard ring, through its own ``coordination.k8s.io`` Lease.

Every replica renews ``epctl-member-<identity>`` in the controller's namespace (labelled with the
shard group) and lists the member Leases every retry period. Its Lease carries the version of the
ring it has applied in the annotation ``epctl.io/ring``: that is how the others learn it released
what it no longer owns. The decisions (liveness, owners, what may be written) are pure, in
:mod:`epctl.shard.ring`; this module does the I/O and the timing:

- renewals count from when the attempt started; failing for ``renew_deadline`` drops every target
  at once, before the Lease can expire for the others (as the leader elector steps down);
- a new ring calls ``on_change`` (the controller releases what this member lost and waits for those
  writes to finish), and only then is the ring's version written to our Lease;
- when every live member acks the ring, ``on_change`` runs again to take the new targets;
- while a ring has not converged, the Leases are listed four times per retry period;
- a live holder of the single-leader Lease (an old replica during a rollout) blocks convergence:
  nobody takes a target until that leader is gone;
- shutdown deletes our Lease, so the others hand over at their next listing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from epctl.kube.client import LEASES, ApiError, KubeClient
from epctl.kube.lease import lease_seconds, micro_now
from epctl.shard.ring import Holdings, Members, Ring, TargetKey

log = logging.getLogger(__name__)
Obj = dict[str, Any]

GROUP_LABEL = "epctl.io/shard-group"
RING_ANNOTATION = "epctl.io/ring"
MEMBERS_ANNOTATION = "epctl.io/ring-members"  # for people: `kubectl get lease -o yaml`
LEASE_PREFIX = "epctl-member-"


class ShardMetrics(Protocol):
    def members(self, count: int) -> None: ...
    def converged(self, seconds: float) -> None: ...  # from seeing a new ring to every member acking it


def lease_name(identity: str) -> str:
    """A DNS-1123 subdomain name for ``identity``'s member Lease."""
    name = re.sub(r"[^a-z0-9.-]+", "-", identity.lower()).strip("-.") or "member"
    return (LEASE_PREFIX + name)[:253].rstrip("-.")


class ShardMember:
    def __init__(self, client: KubeClient, namespace: str, identity: str, *, group: str = "epctl-controller",
                 lease_duration: float = 15.0, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 on_change: Callable[[], Awaitable[None]], legacy_leader: str | None = None,
                 owner_reference: Obj | None = None, metrics: ShardMetrics | None = None) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")
        self.client, self.namespace, self.identity, self.group = client, namespace, identity, group
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self.on_change, self.legacy_leader, self.metrics = on_change, legacy_leader, metrics
        self.owner_reference = owner_reference
        self.name = lease_name(identity)
        self.holdings = Holdings(identity)
        self.members = Members()
        self.member = False  # our Lease was renewed within the renew deadline
        self.step_downs = 0  # times the renew deadline passed without a renewal
        self._lease: Obj | None = None  # as last written (for the next conditional update)
        self._ack = ""  # the ring version to publish
        self._acked = ""  # the ring version our Lease publishes (last successful write)
        self._deadline = 0.0
        self._ring_since: float | None = None  # when the ring not yet converged was first seen
        self._legacy_seen: tuple[str, str] | None = None
        self._legacy_seen_at = 0.0

    def holds(self, key: TargetKey) -> bool:
        """May this member probe and write ``key`` now?"""
        return self.holdings.holds(key)

    @property
    def ring(self) -> Ring:
        return self.holdings.ring

    # --- our Lease --------------------------------------------------------------------------------

    def _spec(self) -> Obj:
        now = micro_now()
        return {"holderIdentity": self.identity, "leaseDurationSeconds": lease_seconds(self.lease_duration),
                "renewTime": now, "acquireTime": now}

    def _metadata(self) -> Obj:
        meta: Obj = {"name": self.name, "namespace": self.namespace, "labels": {GROUP_LABEL: self.group},
                     "annotations": {RING_ANNOTATION: self._ack,
                                     MEMBERS_ANNOTATION: ",".join(self.holdings.ring.members)}}
        if self.owner_reference is not None:  # the Pod: its Lease goes with it (garbage collector)
            meta["ownerReferences"] = [self.owner_reference]
        return meta

    async def _renew(self, timeout: tuple[float, float]) -> None:
        """Write our Lease: renewTime, and the ring version we have applied. A write whose outcome we
        do not know (a timeout, a 409 after our own timed-out write went through) leaves us without a
        resourceVersion: read the Lease again and retry once, within the same attempt."""
        for again in (True, False):
            if self._lease is None:
                try:
                    self._lease = await self.client.request("GET", LEASES.path(self.namespace, self.name),
                                                            timeout=timeout)
                except ApiError as err:
                    if err.code != 404:
                        raise
                    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": self._metadata(),
                            "spec": self._spec()}
                    self._lease = await self.client.request("POST", LEASES.path(self.namespace), body=body,
                                                            timeout=timeout)
                    self._acked = self._ack
                    return
            lease = dict(self._lease)
            meta = self._metadata()
            lease["metadata"] = {**lease["metadata"], "labels": meta["labels"],
                                 "annotations": {**(lease["metadata"].get("annotations") or {}),
                                                 **meta["annotations"]}}
            spec = lease.get("spec") or {}
            lease["spec"] = {**spec, **self._spec(), "acquireTime": spec.get("acquireTime") or micro_now()}
            ack = self._ack
            try:
                self._lease = await self.client.request("PUT", LEASES.path(self.namespace, self.name), body=lease,
                                                        timeout=timeout)
            except ApiError as err:
                self._lease = None  # deleted, edited, or our own earlier write landed: read it again
                if again and err.code == 409:
                    continue
                raise
            except BaseException:
                self._lease = None  # it may have been written: our resourceVersion may be stale
                raise
            self._acked = ack
            return

    async def _list(self, timeout: tuple[float, float]
                    ) -> tuple[dict[str, tuple[str, str, float, str]], tuple[str, str, float] | None]:
        """Member Leases of our group, and the single-leader Lease (holder, renewTime, duration) if any."""
        found = await self.client.request("GET", LEASES.path(self.namespace), timeout=timeout)
        members: dict[str, tuple[str, str, float, str]] = {}
        legacy: tuple[str, str, float] | None = None
        for lease in found.get("items") or []:
            meta, spec = lease.get("metadata") or {}, lease.get("spec") or {}
            holder, renewed = spec.get("holderIdentity") or "", str(spec.get("renewTime") or "")
            duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
            if (meta.get("labels") or {}).get(GROUP_LABEL) == self.group:
                members[meta.get("name", "")] = (holder, renewed, duration,
                                                 (meta.get("annotations") or {}).get(RING_ANNOTATION, ""))
            elif meta.get("name") == self.legacy_leader:
                legacy = (holder, renewed, duration)
        return members, legacy

    def _legacy_alive(self, legacy: tuple[str, str, float] | None, now: float) -> bool:
        if legacy is None or not legacy[0]:
            self._legacy_seen = None
            return False
        if (legacy[0], legacy[1]) != self._legacy_seen:
            self._legacy_seen, self._legacy_seen_at = (legacy[0], legacy[1]), now
        return now - self._legacy_seen_at < legacy[2]

    # --- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Look, renew, release, ack, take — forever. ``on_change`` runs on this task, never concurrently.

        A cycle lists the member Leases first and renews ours only if that worked: a member that
        cannot see the ring must not look alive to the others (it could never ack a new ring, and
        would block every handover); it steps down at its deadline and its Lease then expires."""
        while True:
            sent = time.monotonic()
            budget = self._budget(sent)
            try:
                async with asyncio.timeout(budget):
                    members, legacy = await self._list((budget, budget))
                    await self._renew((budget, budget))
            except Exception as err:  # whatever went wrong, the deadline decides
                self._log_failure(err)
                await self._check_deadline()
                await asyncio.sleep(self._delay())
                continue
            self._deadline = sent + self.renew_deadline
            if not self.member:
                log.info("joined the shard ring", extra={"identity": self.identity, "lease": self.name})
            self.member = True
            if await self._look(members, legacy):
                sent = time.monotonic()
                budget = self._budget(sent)
                try:  # publish the ack of the ring just applied (what we lost is released by now)
                    async with asyncio.timeout(budget):
                        await self._renew((budget, budget))
                    self._deadline = sent + self.renew_deadline
                except Exception as err:
                    self._log_failure(err)
                    await self._check_deadline()
            await asyncio.sleep(self._delay())

    def _budget(self, sent: float) -> float:
        """How long one attempt may take: a member's, until its deadline (as client-go's renew loop:
        a slow API server answering in 3 s must not cost a member its targets when the deadline is
        10 s), so stepping down is still checked on time; a joining replica's, the renew deadline."""
        if self.member:
            return max(self._deadline - sent, 0.001)
        return self.renew_deadline

    def _log_failure(self, err: BaseException) -> None:
        where = {"lease": f"{self.namespace}/{self.name}"}
        if isinstance(err, ApiError | TimeoutError | OSError):
            log.warning("shard membership: %s", err or "timed out", extra=where)
        else:
            log.error("shard membership attempt failed", exc_info=err, extra=where)

    async def _check_deadline(self) -> None:
        if self.member and time.monotonic() >= self._deadline:
            self.member = False
            self.step_downs += 1
            log.warning("could not renew the member Lease: dropping every target before it expires",
                        extra={"identity": self.identity})
            if self.holdings.drop():
                await self.on_change()

    async def _look(self, leases: dict[str, tuple[str, str, float, str]],
                    legacy: tuple[str, str, float] | None) -> bool:
        """Apply one listing; True if our ack must be written now."""
        now = time.monotonic()
        self.members.observe(leases, now)
        alive = self.members.alive(now)
        alive[self.identity] = self._acked  # we just renewed: alive, with the ack the server has
        ring = Ring.of(alive)
        if self.metrics:
            self.metrics.members(len(ring.members))
        if self.holdings.apply(ring):
            log.info("shard ring changed", extra={"members": ",".join(ring.members), "version": ring.version})
            self._ring_since = now
            await self.on_change()  # release what we lost; their writes in flight are done when it returns
            self._ack = ring.version
            return True
        if self._legacy_alive(legacy, now):
            return False  # an old single-leader replica still writes everything: take nothing yet
        if self.holdings.converge(alive):
            log.info("shard ring converged", extra={"members": ",".join(ring.members), "version": ring.version})
            await self.on_change()
            if self.metrics and self._ring_since is not None:
                self.metrics.converged(now - self._ring_since)
            self._ring_since = None
        return False

    def _delay(self) -> float:
        delay = self.retry_period if self.holdings.converged or not self.member else self.retry_period / 4
        expiry = self.members.next_expiry(time.monotonic())
        if expiry is not None:
            delay = min(delay, expiry + 0.01)  # look again as a silent member's Lease runs out
        if self.member:
            delay = min(delay, max(0.0, self._deadline - time.monotonic()))
        return max(delay, 0.01)

    async def release(self) -> None:
        """Shutdown, after the last writes: delete our Lease so the others take over at their next look."""
        self.holdings.drop()
        self.member = False
        try:
            await self.client.request("DELETE", LEASES.path(self.namespace, self.name), timeout=(1.0, 1.0))
        except ApiError as err:
            if err.code != 404:
                log.warning("could not delete the member Lease: %s", err)
