"""One replica's membership in the shard ring, through its own ``coordination.k8s.io`` Lease.

Every replica renews ``epctl-member-<identity>`` in the controller's namespace (labelled with the
shard group) and lists the member Leases every retry period. Its Lease carries the version of the
ring it has applied in the annotation ``epctl.io/ring``: that is how the others learn it released
what it no longer owns. The decisions (liveness, owners, what may be written) are pure, in
:mod:`epctl.shard.ring`; this module does the I/O and the timing:

- renewals count from when the attempt started; the write fence (``epctl.shard.fence``) closes
  ``renew_deadline`` after the last successful renewal started, so no write leaves after that
  instant whatever it waited on; a member that passes its deadline without renewing (a slow API, a
  paused process) drops every target before it renews again;
- a member that finds its Lease deleted, or its holder or group label changed by someone else,
  treats itself as seen dead by the others: it drops every target and only then joins again;
- a new ring starts a handover task running ``on_change`` (the controller releases what this member
  lost and waits, bounded by the renew deadline, for those writes to finish); renewals go on
  meanwhile, and only when it is done is the ring's version written to our Lease;
- when every live member acks the ring, ``on_change`` runs again to take the new targets;
- while a ring has not converged, the Leases are listed four times per retry period;
- a live holder of the single-leader Lease (an old replica during a rollout) blocks convergence:
  nobody takes a target until that leader is gone;
- shutdown releases our Lease (holder cleared, ``epctl.io/released`` set) after the last write, so
  the others hand over at their next listing and delete it; nothing else counts as a release;
- a Lease gets the Pod as its owner only in the Pod's own namespace: the garbage collector deletes
  an object whose owner reference points across namespaces at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from epctl.kube.client import LEASES, ApiError, KubeClient
from epctl.kube.lease import RELEASED_ANNOTATION, micro_now, published_duration
from epctl.shard.fence import Fence
from epctl.shard.ring import Holdings, LeaseRecord, Members, Ring, TargetKey
from epctl.tasks import within

log = logging.getLogger(__name__)
Obj = dict[str, Any]

GROUP_LABEL = "epctl.io/shard-group"
RING_ANNOTATION = "epctl.io/ring"
MEMBERS_ANNOTATION = "epctl.io/ring-members"  # for people: `kubectl get lease -o yaml`
LEASE_PREFIX = "epctl-member-"


class LeaseLost(Exception):
    """Our member Lease was deleted or changed by someone else: the others may count us as gone."""


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
        self.step_downs = 0  # times we dropped every target: deadline passed, or our Lease was lost
        self.fence = Fence(self.holds, self.valid_until)
        self._lease: Obj | None = None  # as last written (for the next conditional update)
        self._joined = False  # our Lease exists as we last wrote it (a 404 now means someone deleted it)
        self._ack = ""  # the ring version to publish
        self._acked = ""  # the ring version our Lease publishes (last successful write)
        self._deadline = 0.0
        self._ring_since: float | None = None  # when the ring not yet converged was first seen
        # the single-leader Lease of replicas running --leader-elect (a rollout from it): alive by the same
        # rules as a member (a deletion or a hand edit does not end it, a signed release does)
        self.legacy = Members()
        self._handover: asyncio.Task[None] | None = None  # on_change for the newest ring (or a drop)
        self._handover_for: str | None = None  # the ring version the running handover releases for
        self._wakeup = asyncio.Event()
        self._uids: dict[str, tuple[str, str]] = {}  # member Lease name -> (uid, resourceVersion) last listed
        self._listed_rv = ""
        self._deleted: set[tuple[str, str]] = set()  # released member Leases we tried to delete (name, uid)
        self._watching_since: float | None = None  # first listing: a member joins a lease duration later
        # the resourceVersion of the listing that showed the ring converged: whatever the previous
        # owners wrote before they acked is older, so a new owner starts from caches at least this new
        self.converged_at_rv = ""

    def holds(self, key: TargetKey) -> bool:
        """May this member probe and write ``key`` now?"""
        return self.holdings.holds(key)

    def valid_until(self) -> float:
        """The monotonic instant after which nothing may be sent: our renew deadline (the fence)."""
        return self._deadline if self.member else 0.0

    @property
    def ring(self) -> Ring:
        return self.holdings.ring

    # --- our Lease --------------------------------------------------------------------------------

    def _spec(self) -> Obj:
        now = micro_now()
        return {"holderIdentity": self.identity, "leaseDurationSeconds": published_duration(self.lease_duration),
                "renewTime": now, "acquireTime": now}

    def _metadata(self) -> Obj:
        meta: Obj = {"name": self.name, "namespace": self.namespace, "labels": {GROUP_LABEL: self.group},
                     "annotations": {RING_ANNOTATION: self._ack,
                                     MEMBERS_ANNOTATION: ",".join(self.holdings.ring.members)}}
        if self.owner_reference is not None:  # the Pod: its Lease goes with it (garbage collector)
            meta["ownerReferences"] = [self.owner_reference]
        return meta

    def _ours(self, lease: Obj) -> bool:
        """Does ``lease`` still say what the others judge us by (holder and group label)?"""
        meta, spec = lease.get("metadata") or {}, lease.get("spec") or {}
        return (spec.get("holderIdentity") == self.identity
                and (meta.get("labels") or {}).get(GROUP_LABEL) == self.group)

    async def _renew(self, timeout: tuple[float, float]) -> None:
        """Write our Lease: renewTime, and the ring version we have applied. A write whose outcome we
        do not know (a timeout, a 409 after our own timed-out write went through) leaves us without a
        resourceVersion: read the Lease again and retry once, within the same attempt. A Lease that
        is gone, or whose holder or group someone else changed, raises :class:`LeaseLost` (once: the
        next attempt writes it anew)."""
        for again in (True, False):
            if self._lease is None:
                try:
                    lease = await self.client.request("GET", LEASES.path(self.namespace, self.name), timeout=timeout)
                except ApiError as err:
                    if err.code != 404:
                        raise
                    if self._joined:
                        self._joined = False
                        raise LeaseLost("our member Lease was deleted") from err
                    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": self._metadata(),
                            "spec": self._spec()}
                    ack = self._ack
                    self._lease = await self.client.request("POST", LEASES.path(self.namespace), body=body,
                                                            timeout=timeout)
                    self._acked, self._joined = ack, True
                    return
                if self._joined and not self._ours(lease):
                    self._joined = False
                    self._lease = lease
                    raise LeaseLost("our member Lease was changed by someone else")
                self._lease = lease
            lease = dict(self._lease)
            meta = self._metadata()
            annotations = {k: v for k, v in (lease["metadata"].get("annotations") or {}).items()
                           if k != RELEASED_ANNOTATION}
            lease["metadata"] = {**lease["metadata"], "labels": {**(lease["metadata"].get("labels") or {}),
                                                                 **meta["labels"]},
                                 "annotations": {**annotations, **meta["annotations"]}}
            spec = lease.get("spec") or {}
            lease["spec"] = {**spec, **self._spec(), "acquireTime": spec.get("acquireTime") or micro_now()}
            ack = self._ack
            try:
                self._lease = await self.client.request("PUT", LEASES.path(self.namespace, self.name), body=lease,
                                                        timeout=timeout)
            except ApiError as err:
                self._lease = None  # deleted, edited, or our own earlier write landed: read it again
                if err.code == 404 and self._joined:
                    self._joined = False
                    raise LeaseLost("our member Lease was deleted") from err
                if again and err.code == 409:
                    continue
                raise
            except BaseException:
                self._lease = None  # it may have been written: our resourceVersion may be stale
                raise
            self._acked, self._joined = ack, True
            return

    async def _list(self, timeout: tuple[float, float]) -> tuple[dict[str, LeaseRecord], LeaseRecord | None]:
        """Member Leases of our group, and the single-leader Lease (holder, renewTime, duration) if any."""
        found = await self.client.request("GET", LEASES.path(self.namespace), timeout=timeout)
        self._listed_rv = str((found.get("metadata") or {}).get("resourceVersion") or "")
        members: dict[str, LeaseRecord] = {}
        legacy: LeaseRecord | None = None
        self._uids = {}
        for lease in found.get("items") or []:
            meta, spec = lease.get("metadata") or {}, lease.get("spec") or {}
            holder, renewed = spec.get("holderIdentity") or "", str(spec.get("renewTime") or "")
            # never shorter than ours: a duration cut by hand must not end a member early in our eyes
            duration = max(float(spec.get("leaseDurationSeconds") or 0), self.lease_duration)
            annotations = meta.get("annotations") or {}
            if (meta.get("labels") or {}).get(GROUP_LABEL) == self.group:
                members[meta.get("name", "")] = LeaseRecord(holder, renewed, duration,
                                                            annotations.get(RING_ANNOTATION, ""),
                                                            annotations.get(RELEASED_ANNOTATION, ""))
                self._uids[meta.get("name", "")] = (meta.get("uid", ""), meta.get("resourceVersion", ""))
            elif meta.get("name") == self.legacy_leader:
                legacy = LeaseRecord(holder, renewed, duration, "", annotations.get(RELEASED_ANNOTATION, ""))
        return members, legacy

    def _legacy_alive(self, legacy: LeaseRecord | None, now: float) -> bool:
        """Does a replica running --leader-elect still hold the single-leader Lease (and so write every
        target)? Observed like a member: only its signed release or its expiry ends it."""
        self.legacy.observe({"leader": legacy} if legacy is not None else {}, now)
        return bool(self.legacy.alive(now))

    # --- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Look, renew, release, ack, take — forever. ``on_change`` runs in one handover task at a time,
        beside this loop, so renewals go on while a handover waits for slow writes.

        A cycle lists the member Leases first and renews ours only if that worked: a member that
        cannot see the ring must not look alive to the others (it could never ack a new ring, and
        would block every handover); it steps down at its deadline and its Lease then expires."""
        try:
            while True:
                await self._cycle()
                self._wakeup.clear()
                try:
                    await within(self._delay(), self._wakeup.wait())
                except TimeoutError:
                    pass
        finally:
            if self._handover is not None:
                self._handover.cancel()

    async def _cycle(self) -> None:
        sent = time.monotonic()
        if self.member and sent >= self._deadline:
            self._step_down("could not renew the member Lease within the renew deadline")
        if self._watching_since is None or sent - self._watching_since < self.lease_duration:
            await self._watch_first(sent)
            return
        budget = self._budget(sent)
        try:
            async with asyncio.timeout(budget):
                members, legacy = await self._list((budget, budget))
                await self._renew((budget, budget))
        except LeaseLost as err:
            self._step_down(f"{err}: the others may count us as gone")
            return
        except Exception as err:  # whatever went wrong, the deadline decides
            self._log_failure(err)
            if self.member and time.monotonic() >= self._deadline:
                self._step_down("could not renew the member Lease within the renew deadline")
            return
        if self.member and sent >= self._deadline:  # renewed, but too late: the fence had closed
            self._step_down("renewed after the renew deadline passed")
        self._deadline = sent + self.renew_deadline
        if not self.member:
            log.info("joined the shard ring", extra={"identity": self.identity, "lease": self.name})
        self.member = True
        await self._look(members, legacy)
        await self._delete_released()

    async def _watch_first(self, now: float) -> None:
        """A new member lists the member Leases for one lease duration before it joins: a member whose
        Lease was deleted or edited before we started (so we never saw it renew) is still writing
        until it notices, at its next renewal, and writes its Lease again; we must have seen that
        before we take anything. The others release nothing to us meanwhile (we are no member yet)."""
        try:
            async with asyncio.timeout(self.renew_deadline):
                members, legacy = await self._list((self.renew_deadline, self.renew_deadline))
        except Exception as err:
            self._log_failure(err)
            return
        if self._watching_since is None:
            self._watching_since = now
            log.info("watching the shard ring before joining", extra={"identity": self.identity,
                                                                     "seconds": self.lease_duration})
        self.members.observe(members, time.monotonic())
        self._legacy_alive(legacy, time.monotonic())

    def _step_down(self, why: str) -> None:
        """Hold nothing from now on (the fence closes for every target at once); the writes in flight
        are waited for by a handover task, and we join again like a new member."""
        self.member = False
        self.step_downs += 1
        self._ack = ""
        log.warning("%s: dropping every target", why, extra={"identity": self.identity})
        if self.holdings.drop() or self._handover is not None:
            self._start_handover("")

    def _start_handover(self, version: str) -> None:
        """Run ``on_change`` for the ring ``version`` (""): a drop) in the handover task; if one runs,
        it runs again for the newest ring when done. The ack is published when it is done."""
        self._handover_for = version
        if self._handover is None:
            self._handover = asyncio.create_task(self._hand_over(), name="shard-handover")

    async def _hand_over(self) -> None:
        try:
            while True:
                version = self._handover_for
                await self.on_change()  # release what we lost; bounded by the renew deadline
                if version == self._handover_for:
                    break
            if version and version == self.ring.version:
                self._ack = version  # everything we lost in this ring is released: say so
        except Exception:
            log.exception("shard handover failed")
        finally:
            self._handover = None
            self._handover_for = None
            self._wakeup.set()  # renew now, to publish the ack

    async def _delete_released(self) -> None:
        """Delete member Leases their members released (they will never be renewed again)."""
        for name in self.members.released():
            uid, rv = self._uids.get(name, ("", ""))
            if not uid or name == self.name or (name, uid) in self._deleted:
                continue
            self._deleted.add((name, uid))  # once: a slow API server must not hold up our renewals
            try:
                await self.client.request("DELETE", LEASES.path(self.namespace, name), timeout=(1.0, 1.0),
                                          body={"preconditions": {"uid": uid, "resourceVersion": rv}})
            except ApiError as err:
                if err.code not in (404, 409):
                    log.debug("could not delete a released member Lease: %s", err)

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

    async def _look(self, leases: dict[str, LeaseRecord], legacy: LeaseRecord | None) -> None:
        """Apply one listing: start a handover for a new ring, or take what a converged ring gives."""
        now = time.monotonic()
        self.members.observe(leases, now)
        legacy_alive = self._legacy_alive(legacy, now)
        if legacy_alive and self.holdings.drop():
            # a single-leader replica (back) at work writes every target: hold nothing beside it
            log.warning("a --leader-elect replica holds the leader Lease: dropping every target",
                        extra={"identity": self.identity})
            self._start_handover("")
        alive = self.members.alive(now)
        alive[self.identity] = self._acked  # we just renewed: alive, with the ack the server has
        ring = Ring.of(alive)
        if self.metrics:
            self.metrics.members(len(ring.members))
        if self.holdings.apply(ring):
            log.info("shard ring changed", extra={"members": ",".join(ring.members), "version": ring.version})
            self._ring_since = now
            self._start_handover(ring.version)  # release what we lost (the ack follows when done)
            return
        if self._handover is not None:
            return  # still letting go: take nothing before the ack is out
        if self._ack != ring.version:
            self._start_handover(ring.version)  # a handover that failed: again (the ack only after it)
            return
        if self._acked != ring.version or legacy_alive:
            return  # our ack is not out yet; or an old single-leader replica still writes everything
        if self.holdings.converge(alive):
            self.converged_at_rv = self._listed_rv
            log.info("shard ring converged", extra={"members": ",".join(ring.members), "version": ring.version})
            self._start_handover(ring.version)  # take what is ours now (beside the renewals, too)
            if self.metrics and self._ring_since is not None:
                self.metrics.converged(now - self._ring_since)
            self._ring_since = None

    def _delay(self) -> float:
        if self._watching_since is None or time.monotonic() - self._watching_since < self.lease_duration:
            left = self.lease_duration - (time.monotonic() - (self._watching_since or time.monotonic()))
            return max(0.01, min(self.retry_period, left))
        if self._ack != self._acked and self._handover is None:
            return 0.0  # an ack to publish
        delay = self.retry_period if self.holdings.converged or not self.member else self.retry_period / 4
        expiry = self.members.next_expiry(time.monotonic())
        if expiry is not None:
            delay = min(delay, expiry + 0.01)  # look again as a silent member's Lease runs out
        if self.member:
            delay = min(delay, max(0.0, self._deadline - time.monotonic()))
        return max(delay, 0.01)

    async def release(self) -> None:
        """Shutdown, after the last writes: release our Lease (holder cleared, signed with our
        identity) so the others take over at their next look; they delete it."""
        self.holdings.drop()
        was_member, self.member = self.member, False
        if self._handover is not None:
            self._handover.cancel()
        if not was_member or self._lease is None:
            return
        lease = dict(self._lease)
        lease["metadata"] = {**lease["metadata"], "annotations": {
            **(lease["metadata"].get("annotations") or {}), RELEASED_ANNOTATION: self.identity}}
        lease["spec"] = {**(lease.get("spec") or {}), "holderIdentity": "", "renewTime": micro_now()}
        try:
            await self.client.request("PUT", LEASES.path(self.namespace, self.name), body=lease, timeout=(1.0, 1.0))
        except ApiError as err:
            log.warning("could not release the member Lease: %s", err)
