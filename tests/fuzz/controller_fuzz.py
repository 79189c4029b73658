"""A stateful fuzzer of the whole controller: random walks, invariants after every step, shrinking.

The suite tests the sequences we thought of; bugs live in the interleavings we did not. A walk drives
the real controller (in-process) against the test API server and real TCP backends on 127.0.0.1-3
with random steps: ClusterEndpoints created, edited, deleted, deleted and re-created (also while the
watch is down, so the controller learns of it from a 410 relist), adoption on and off, a mirrored
Service claimed by a ClusterEndpoint and handed over, backends up and down, our slices and Services
deleted or edited by someone else, hand-written Endpoints objects (as the old tools leave them),
hosts drained and undrained (epctl.io/drain), dropped watches, forced compaction, bursts of
409/429/500 on the next writes, and, with two replicas under Lease leader election, replica
restarts, leader hand-overs and a partitioned leader. Every object changed at once (``burst``, as
kubectl apply -f of a directory) makes targets due in one writer pass; replicas have one write slot
pair, so they contend and the Endpoints copies wait behind the slices (routing first). In half the
walks probe thresholds are 1 or 2 (a check can count healthy after a failed probe).

Shard mode (``--shard``) runs three ``--shard`` members instead, and its world also holds what broke
ownership before (issue 22): members joining, leaving, killed (no release), paused longer than their
Lease (every request hangs, then fails, so nothing they sent meanwhile lands), their member Leases
deleted or hand-edited, slow answers to writes already applied, lagging watches during handovers, and
edits made while no controller runs (a mirror annotation removed, a ClusterEndpoint deleted while the
garbage collector is down), and kills between a slice write and the Endpoints write deferred behind
it (the copy left saying not ready what the slices publish ready). Its invariants, besides the
settled state: no two members' write fences are open for one target at the same instant (sampled
every few ms through the whole walk), no host is published ready after it was published not ready
while its backend stayed down, and nothing labelled as epctl's exists that no front-end claims.

Grace walks (``--grace SECONDS``) run every replica with that ``--terminating-grace-period``; a step
unlists a host and something happens within its grace (a restart, a handover, a partition, a kill,
a pause, the edit made while no controller runs, a re-add...). At every stored slice version a
leaving host must still be published until a whole grace has passed since it was unlisted and since
its target was last taken over (the fence sampler says when), not ready and terminating once the
status shows the edit was seen.

After each step the system must quiesce into the state derived from the API objects and the
backends' health alone (see :func:`violations`: Services, slices, v1 Endpoints, status), with one
leader and at most one writer at any time (every write comes from the replica whose Lease write
precedes it in the server's commit order), and an idle system must write nothing. A step is data
(a dict) whose random choices are fixed when it is generated, so a failing walk replays exactly and
can be shrunk by dropping steps.

    python -m tests.fuzz.controller_fuzz --seeds 20 --steps 40      # soak: prints the figures
    python -m tests.fuzz.controller_fuzz --shard --seeds 10 --steps 30
    python -m tests.fuzz.controller_fuzz --grace 3 --seeds 8 --steps 15 [--shard]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import itertools
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from epctl.app import Controller, ControllerSettings
from epctl.kube.client import ENDPOINTS, ENDPOINTSLICES, LEASES, MERGE_PATCH, SERVICES, ApiError, KubeClient
from epctl.shard.member import GROUP_LABEL, lease_name
from epctl.testing.backends import TCPBackend, free_port
from epctl.testing.kubeapi import FaultRule, KubeAPIServer
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import CLUSTERENDPOINTS, cep, endpoints_readiness, install_crd, source_service

Obj = dict[str, Any]
Step = dict[str, Any]

ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
NAMES = ("c0", "c1", "m")  # "m" is also the mirror target a ClusterEndpoint may claim
MIRRORS = ("x0", "x1", "x2", "x3")  # Services only a mirror holds: bursts make many targets due at once
HOSTILE = ("::ffff:169.254.169.254", "::ffff:127.0.0.1", "fd00:ec2::254", "100.100.100.200")
MIRROR = "epctl.io/mirror-from"
DRAIN = "epctl.io/drain"
MANAGED = ("endpointslice.kubernetes.io/managed-by", "controller.epctl.io")
MANAGED_ENDPOINTS = ("app.kubernetes.io/managed-by", "epctl")
MIRRORED_BY = "endpointslicemirroring-controller.k8s.io"
SKIP = "endpointslice.kubernetes.io/skip-mirror"
ORIGIN_ENDPOINTS = {("db", "10.1.0.1"): True}  # what the mirror source Service publishes
QUIESCE_TIMEOUT = 25.0
IDLE_WINDOW = 0.6
TAKEOVER_SLACK = 0.3  # a replica takes a target over a little before the fence sampler sees it open
CONTROLLER_AGENT = "epctl/fuzzed"  # prefix of every replica's user agent: faults hit the controller only
LEASE = {"lease_duration": 2.0, "renew_deadline": 1.2, "retry_period": 0.2}
# one write slot pair: three targets due at once contend, so the Endpoints copies wait behind the
# slices (routing first) and a handover or a kill can find such a wait
WRITE_CONCURRENCY = 1


class InvariantViolation(AssertionError):
    """The system did not reach the state its objects and backends call for (or kept writing)."""


# --- steps (pure: generated from a seeded Random) --------------------------------------------------

def random_spec(rng: random.Random, port: int, more: random.Random | None = None) -> Obj:
    """Thresholds of 1 or 2 (drawn from ``more``; 1 without it): with 2, a check can count healthy with
    its last probe failed (one failure under the threshold), which a hold on what is published not
    ready must live with."""
    ports = []
    for i in range(rng.randint(1, 2)):
        ports.append({"name": f"p{i}", "port": 8000 + i + rng.choice((0, 10)), "targetPort": port,
                      "hosts": sorted(rng.sample(ADDRESSES, rng.randint(1, 3))), "tcpSocket": {},
                      "periodSeconds": 1, "timeoutSeconds": 1,
                      "failureThreshold": more.choice(THRESHOLDS) if more else 1,
                      "successThreshold": more.choice(THRESHOLDS) if more else 1})
    return {"ports": ports}


def random_burst(more: random.Random, port: int) -> Step:
    """Every object changed at once (kubectl apply -f of a directory): more targets due than write slots,
    so they queue. A ClusterEndpoint is re-applied with another spec, drained or deleted; Service "m"
    and the mirror-only Services ask to be mirrored if they did not, and stop if they did (``mirror``)."""
    parts: list[Step] = [{"kind": "mirror", "name": name, "pick": 0} for name in MIRRORS]
    for name in NAMES:
        kinds = ("apply", "drain", "mirror", "mirror", "mirror") if name == "m" else ("apply", "apply", "apply",
                                                                                     "drain", "delete")
        part: Step = {"kind": more.choice(kinds), "name": name, "pick": more.randrange(1 << 30)}
        if part["kind"] == "apply":
            part["spec"] = random_spec(more, port, more)
            part["adopt"] = more.random() < 0.5
        elif part["kind"] == "drain":
            part["hosts"] = sorted(more.sample(ADDRESSES, more.randint(0, 2)))
        parts.append(part)
    return {"kind": "burst", "name": "*", "pick": 0, "steps": more.sample(parts, len(parts))}  # in that order


THRESHOLDS = (1, 1, 2)
VARIED_THRESHOLDS = 0.5  # of the walks: the others keep thresholds of 1 (a dead host is out after one probe)
BURST_SHARE = 0.08  # of a walk's steps
STALE_ENDPOINTS_SHARE = 0.5  # of the kills and stops of every member (offline): killed behind its slices
SHARD_KINDS = ("join", "leave", "kill", "pause", "delete_lease", "edit_lease", "slow", "lag", "offline")
SHARD_WEIGHTS = (2, 2, 1, 1, 2, 1, 2, 2, 1)
MAX_MEMBERS = 4


UNLIST_THEN = {False: ("restart", "leader_change", "partition", "backend", "drain", "apply", "delete_slice", "compact",
                      "faults", "flap"),
              True: ("kill", "pause", "leave", "join", "delete_lease", "edit_lease", "slow", "lag", "offline",
                     "backend", "apply", "drain", "delete_slice", "compact")}


def random_step(rng: random.Random, port: int, shard: bool = False, grace: bool = False,
                more: random.Random | None = None) -> Step:
    """One step. With ``grace`` (a walk whose replicas keep leaving hosts terminating), a host also
    leaves a ClusterEndpoint and something happens within its grace (``unlist``), and an edit made
    while no controller runs may be such a removal; without it, the walks of a seed are unchanged.
    ``more``: a second stream for what the world gained later (thresholds of 2, the Endpoints copy a
    killed process left behind its slices), so that ``rng`` draws the walks it drew before."""
    if grace and rng.random() < 0.25:
        step: Step = {"kind": "unlist", "name": rng.choice(NAMES), "pick": rng.randrange(1 << 30)}
        then = rng.choice(UNLIST_THEN[shard])  # each as likely: the takeovers are rare among all steps
        step["then"] = random_step(rng, port, shard, more=more)
        while step["then"]["kind"] != then:
            step["then"] = random_step(rng, port, shard, more=more)
        return step
    if shard and rng.random() < 0.4:
        kind = rng.choices(SHARD_KINDS, weights=SHARD_WEIGHTS)[0]
        step = {"kind": kind, "name": rng.choice(NAMES), "pick": rng.randrange(1 << 30)}
        if kind == "slow":
            step["address"] = rng.choice(ADDRESSES)
            step["then"] = {"kind": rng.choice(("join", "leave")), "name": step["name"], "pick": rng.randrange(1 << 30)}
        elif kind == "lag":
            step["then"] = random_step(rng, port, shard, grace, more)
            while step["then"]["kind"] in ("faults", "slow", "lag", "offline"):
                step["then"] = random_step(rng, port, shard, grace, more)
        elif kind == "offline":
            edits = ("unannotate", "delete_slow_gc", "delete", "backend", "unlist")
            step["edit"] = rng.choice(edits if grace else edits[:4])
            step["address"] = rng.choice(ADDRESSES)
        elif kind == "edit_lease":
            step["edit"] = rng.choice(("holder", "label"))
        if kind in ("kill", "offline") and more is not None and more.random() < STALE_ENDPOINTS_SHARE:
            step["stale_endpoints"] = True  # killed between a slice write and its Endpoints write
        return step
    kind = rng.choices(
        ("apply", "delete", "recreate", "recreate_relist", "backend", "delete_slice", "edit_slice",
         "delete_service", "annotate", "unannotate", "drop_watches", "compact", "faults", "restart", "hostile",
         "legacy_endpoints", "leader_change", "partition", "drain", "flap"),
        weights=(6, 2, 2, 2, 4, 2, 2, 1, 2, 2, 1, 1, 2, 1, 1, 2, 0 if shard else 1, 0 if shard else 1, 3, 2))[0]
    step = {"kind": kind, "name": rng.choice(NAMES), "pick": rng.randrange(1 << 30)}
    if kind in ("apply", "recreate", "recreate_relist"):
        step["spec"] = random_spec(rng, port, more)
        step["adopt"] = rng.random() < 0.5
    elif kind == "backend":
        step["address"] = rng.choice(ADDRESSES)
        step["up"] = rng.random() < 0.5
    elif kind == "flap":
        step["address"] = rng.choice(ADDRESSES)
    elif kind == "faults":
        step["rule"] = {"verb": rng.choice(("create", "update", "patch", "delete")),
                        "resource": rng.choice(("endpointslices", "services", "clusterendpoints")),
                        "code": rng.choice((409, 429, 500)), "count": rng.randint(1, 3)}
        step["then"] = random_step(rng, port, shard, grace, more)  # the burst hits whatever the next change writes
        while step["then"]["kind"] in ("faults", "slow", "lag", "offline"):
            step["then"] = random_step(rng, port, shard, grace, more)
    elif kind == "hostile":
        step["host"] = rng.choice(HOSTILE)
    elif kind == "drain":  # hosts in maintenance (epctl.io/drain); none: the annotation goes
        step["hosts"] = sorted(rng.sample(ADDRESSES, rng.randint(0, 2)))
    return step


def describe(step: Step) -> str:
    extra = {k: v for k, v in step.items() if k not in ("kind", "name", "pick", "spec", "then", "steps")}
    text = f"{step['kind']} {step['name']} {extra}" if extra else f"{step['kind']} {step['name']}"
    if "spec" in step:
        text += " " + ", ".join(f"{p['name']}:{p['port']}->{p['hosts']}" for p in step["spec"]["ports"])
    if "then" in step:
        text += " then " + describe(step["then"])
    if "steps" in step:
        text += " [" + "; ".join(describe(part) for part in step["steps"]) + "]"
    return text


# --- the expected state (pure: from the API objects and the backends' health) ----------------------

def _owned_by(obj: Obj | None, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (obj or {}).get("metadata", {}).get("ownerReferences") or [])


def _endpoints(slices: list[Obj]) -> dict[tuple[str, str], bool]:
    return {((s.get("ports") or [{}])[0].get("name", ""), e["addresses"][0]): bool(e["conditions"].get("ready"))
            for s in slices for e in s.get("endpoints") or []}


def _conditions(slices: list[Obj]) -> dict[tuple[str, str], tuple[bool, bool, bool]]:
    return {((s.get("ports") or [{}])[0].get("name", ""), e["addresses"][0]): (
        bool(e["conditions"].get("ready")), bool(e["conditions"].get("serving")),
        bool(e["conditions"].get("terminating"))) for s in slices for e in s.get("endpoints") or []}


def drained(item: Obj) -> set[str]:
    """The hosts the ClusterEndpoint's drain annotation names (all hosts here are addresses)."""
    value = (item["metadata"].get("annotations") or {}).get(DRAIN) or ""
    return {h.strip() for h in value.split(",") if h.strip()}


def _check_endpoints(name: str, endpoints: Obj | None, owner_uid: str, want: dict[tuple[str, str], bool],
                     mirrored: list[Obj]) -> list[str]:
    """The v1 Endpoints of a Service epctl holds: ours, skip-mirror, owned, saying what the slices say;
    and no slice mirrored from an older Endpoints object beside ours."""
    problems = []
    labels = (endpoints or {}).get("metadata", {}).get("labels") or {}
    if endpoints is None or labels.get(MANAGED_ENDPOINTS[0]) != MANAGED_ENDPOINTS[1] or labels.get(SKIP) != "true":
        problems.append(f"{name}: Endpoints missing or not ours: {labels}")
    elif not _owned_by(endpoints, owner_uid):
        problems.append(f"{name}: Endpoints not owned by the holder")
    elif endpoints_readiness(endpoints) != want:
        problems.append(f"{name}: Endpoints say {endpoints_readiness(endpoints)}, expected {want}")
    if mirrored:
        problems.append(f"{name}: slices mirrored from an old Endpoints object are still there")
    return problems


def holds(item: Obj | None, svc: Obj | None) -> bool:
    """Whether a ClusterEndpoint holds its Service: unless the Service carries a mirror annotation and
    is not the ClusterEndpoint's, or it exists, is someone else's, and adoption was not asked for."""
    if item is None:
        return False
    annotated = bool(svc and MIRROR in (svc["metadata"].get("annotations") or {}))
    owned = _owned_by(svc, item["metadata"]["uid"])
    adopt = (item["metadata"].get("annotations") or {}).get("epctl.io/adopt") == "true"
    return not (annotated and not owned) and (svc is None or owned or adopt)


def violations(objects: dict[str, dict[tuple[str, str], Obj]], up: dict[str, bool]) -> list[str]:
    """What differs between the API state and the state the objects and backends call for.

    For each name: a ClusterEndpoint holds its Service unless the Service carries a mirror annotation
    and is not the ClusterEndpoint's (then the mirror holds it and the ClusterEndpoint waits), or the
    Service exists, is someone else's, and adoption was not asked for (then nobody writes it).
    """
    ceps = {k[1]: o for k, o in objects["clusterendpoints"].items() if k[0] == "default"}
    services = {k[1]: o for k, o in objects["services"].items() if k[0] == "default"}
    ours = [o for o in objects["endpointslices"].values()
            if (o["metadata"].get("labels") or {}).get(MANAGED[0]) == MANAGED[1]]
    endpoints = {k[1]: o for k, o in objects["endpoints"].items() if k[0] == "default"}
    problems: list[str] = []
    covered: set[str] = set()
    live_uids = {o["metadata"]["uid"] for kind in objects.values() for o in kind.values()}
    for obj in ours:
        if not any(ref.get("uid") in live_uids for ref in obj["metadata"].get("ownerReferences") or []):
            problems.append(f"slice {obj['metadata']['name']} is owned by nothing that exists")
    for name in (*NAMES, "h", *MIRRORS):
        item, svc = ceps.get(name), services.get(name)
        slices = [o for o in ours if o["metadata"]["labels"].get("kubernetes.io/service-name") == name]
        mirrored = [o for o in objects["endpointslices"].values()
                    if (o["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == name
                    and o["metadata"]["labels"].get(MANAGED[0]) == MIRRORED_BY]
        ours_endpoints = (endpoints.get(name, {}).get("metadata", {}).get("labels") or {}).get(
            MANAGED_ENDPOINTS[0]) == MANAGED_ENDPOINTS[1]
        got = _endpoints(slices)
        covered.add(name)
        annotated = bool(svc and MIRROR in (svc["metadata"].get("annotations") or {}))
        uid = item["metadata"]["uid"] if item else ""
        if name == "h":
            if item is not None:
                reasons = {c["type"]: c.get("reason") for c in (item.get("status") or {}).get("conditions") or []}
                if reasons.get("Ready") != "InvalidSpec":
                    problems.append(f"h (host {item['spec']['ports'][0]['hosts']}) is not refused: {reasons}")
            if got or (svc is not None and item is not None):
                problems.append("h: a refused ClusterEndpoint got a Service or endpoints")
            continue
        held = holds(item, svc)
        if item is not None:
            problems += _check_status(name, item, up, synced=held,
                                      conflict="mirrors" if annotated else "not managed by epctl")
        if held:
            assert item is not None
            problems += _check_clusterendpoint(name, item, svc, slices, got, up)
            out = drained(item)  # in maintenance: not ready (so notReadyAddresses), still probed
            want = {(p["name"], h): up[h] and h not in out for p in item["spec"]["ports"] for h in p["hosts"]}
            problems += _check_endpoints(name, endpoints.get(name), uid, want, mirrored)
        elif annotated and svc is not None:
            if got != ORIGIN_ENDPOINTS:
                problems.append(f"{name}: mirror publishes {got}, expected {ORIGIN_ENDPOINTS}")
            if any(not _owned_by(s, svc["metadata"]["uid"]) for s in slices):
                problems.append(f"{name}: a mirrored slice is not owned by its Service")
            problems += _check_endpoints(name, endpoints.get(name), svc["metadata"]["uid"], ORIGIN_ENDPOINTS,
                                         mirrored)
        else:
            if got:
                problems.append(f"{name}: nobody should write this Service, yet it has endpoints {got}")
            if ours_endpoints:
                problems.append(f"{name}: nobody should write this Service, yet epctl's Endpoints are there")
    for obj in ours:
        service = obj["metadata"]["labels"].get("kubernetes.io/service-name")
        if service not in covered:
            problems.append(f"slice {obj['metadata']['name']} belongs to no managed Service ({service})")
    return problems


def _check_clusterendpoint(name: str, item: Obj, svc: Obj | None, slices: list[Obj],
                           got: dict[tuple[str, str], bool], up: dict[str, bool]) -> list[str]:
    uid = item["metadata"]["uid"]
    ports = item["spec"]["ports"]
    out = drained(item)
    # drained: ready=false, serving=<probe>, terminating=true; nothing else is ever terminating
    want = {(p["name"], h): (up[h] and h not in out, up[h], h in out) for p in ports for h in p["hosts"]}
    got_conditions = _conditions(slices)
    problems = []
    if svc is None or not _owned_by(svc, uid):
        problems.append(f"{name}: Service missing or not owned by the live ClusterEndpoint")
    elif [(p["name"], p["port"]) for p in svc["spec"]["ports"]] != [(p["name"], p["port"]) for p in ports]:
        problems.append(f"{name}: Service ports {svc['spec']['ports']} differ from the spec")
    if got_conditions != want:
        problems.append(f"{name}: published (ready, serving, terminating) {got_conditions}, expected {want}")
    if any(not _owned_by(s, uid) for s in slices):
        problems.append(f"{name}: a slice is not owned by the live ClusterEndpoint")
    return problems


def _check_status(name: str, item: Obj, up: dict[str, bool], synced: bool, conflict: str) -> list[str]:
    """Every ClusterEndpoint's status settles: phase from its hosts' health (it probes even while
    another front-end holds its Service), Synced True or, if it does not hold it, ServiceConflict
    with the message naming why (``conflict`` is a part of it)."""
    out = drained(item)
    listed = [h for p in item["spec"]["ports"] for h in p["hosts"]]
    want = [up[h] for h in listed if h not in out]  # a drained host is neither healthy nor unhealthy
    status = item.get("status") or {}
    phase = "Healthy" if all(want) else ("Degraded" if any(want) else "Unhealthy")
    sync = {c["type"]: c for c in status.get("conditions") or []}.get("Synced", {})
    got = (status.get("phase"), status.get("healthy"), status.get("total"), status.get("draining"),
           status.get("observedGeneration"), sync.get("status"),
           sync.get("reason") if sync.get("status") == "False" else None)
    if not synced and conflict not in sync.get("message", ""):
        return [f"{name}: Synced message {sync.get('message')!r} does not say {conflict!r}"]
    named = {(h.get("host"), h.get("matched")) for h in status.get("drainingHosts") or []}
    if named != {(h, h in listed) for h in out}:
        return [f"{name}: status drainingHosts {named}, the annotation names {out} (listed: {listed})"]
    expected = (phase, sum(want), len(listed), sum(1 for h in listed if h in out), item["metadata"].get("generation"),
                "True" if synced else "False", None if synced else "ServiceConflict")
    return [] if got == expected else [f"{name}: status (phase, healthy, total, draining, generation, Synced, "
                                       "reason) is "
                                       f"{got}, expected {expected}"]


# --- the world: API server, backends, controller replicas ------------------------------------------

@dataclass
class Replica:
    name: str
    client: KubeClient
    controller: Controller


@dataclass
class Stats:
    walks: int = 0
    steps: int = 0
    faults: int = 0
    checks: int = 0
    restarts: int = 0
    relists: int = 0
    unlisted: int = 0  # hosts a ClusterEndpoint stopped listing while they were published (grace walks)
    graced: int = 0  # of those, dropped after their grace was checked (a takeover within it: taken_over)
    taken_over: int = 0
    seconds: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)


class World:
    def __init__(self, api: KubeAPIServer, client: KubeClient, port: int, shard: bool = False,
                 grace: float = 0.0, stats: Stats | None = None) -> None:
        self.api, self.client, self.port, self.shard, self.grace = api, client, port, shard, grace
        self.stats = stats or Stats()
        self.backends = {a: TCPBackend(port, host=a) for a in ADDRESSES}
        self.up = dict.fromkeys(ADDRESSES, True)
        # leader election: two, one writes, one stands by; shard mode: three members sharing the targets
        self.replicas: list[Replica] = []
        self._names = (f"r{n}" for n in itertools.count())
        self.sharing: list[str] = []  # moments two members' write fences were open for one target
        self.reopened: list[str] = []  # a host published ready after not ready while its backend stayed down
        self._published_down: set[tuple[str, ...]] = set()  # ([kind,] service, port, address): not ready, down
        self._foreign_edit = False  # the fuzzer itself is editing a slice (not epctl's publication)
        self._sampler: asyncio.Task[None] | None = None
        # grace walks: (name, port, host) -> (when the spec stopped listing it, the ClusterEndpoint's uid,
        # the generation before that edit), for hosts published when they were unlisted
        self.unlisted: dict[tuple[str, str, str], tuple[float, str, int]] = {}
        self.owners: dict[str, tuple[str, float]] = {}  # target -> (replica whose fence is open, since)
        self.dropped_early: list[str] = []  # a leaving host gone before its grace, or published ready
        self.deleted_by_us: set[tuple[str, str]] = set()  # (service, port) whose slice the fuzzer deleted

    async def start(self) -> None:
        for backend in self.backends.values():
            await backend.start()
        await install_crd(self.client)
        await source_service(self.client, "origin", ("db", 5432, 5432), {"10.1.0.1": True})
        for _ in range(3 if self.shard else 2):
            await self.start_replica()
        if self.shard or self.grace > 0:
            self.api.store.listeners.append(self._on_stored)
            self._sampler = asyncio.create_task(self._sample_fences())

    async def start_replica(self) -> None:
        name = next(self._names)
        client = await KubeClient.connect(self.api.kubeconfig_path, user_agent=f"{CONTROLLER_AGENT}/{name}")
        election = {"shard": True} if self.shard else {"leader_elect": True}
        controller = Controller(client, ControllerSettings(
            batch_delay=0.05, max_batch_delay=0.3, allow_loopback_hosts=True, metrics_addr=None,
            resolve_interval=3600, leader_election_namespace="default", identity=name,
            terminating_grace=self.grace, write_concurrency=WRITE_CONCURRENCY,
            **election, **LEASE))  # type: ignore[arg-type]
        await controller.start()
        self.replicas.append(Replica(name, client, controller))

    async def stop_replica(self, replica: Replica, killed: bool = False) -> None:
        """Stop one replica: gracefully (flush, release), or killed: its connection goes first, so
        nothing more of it reaches the API server and its Lease is never released."""
        self.replicas.remove(replica)
        cut = (self.api.inject_fault(FaultRule(user_agent=f"{CONTROLLER_AGENT}/{replica.name}", code=503,
                                               count=10**9)) if killed else None)
        await replica.controller.stop(flush_timeout=0.5 if killed else 8.0)
        await replica.client.close()
        if cut is not None:
            self.api.faults.remove(cut)

    # --- shard-mode invariants, watched all the time -------------------------------------------------

    async def _sample_fences(self) -> None:
        """No two members may send a write for one target at the same moment (every few ms, all walk);
        and when a replica other than the last one opens its fence for a target, it has taken it over."""
        while True:
            for name in (*NAMES, "h", *MIRRORS):
                key = ("default", name)
                open_for = [r.name for r in self.replicas if r.controller.fence.remaining(key) > 0]
                if len(open_for) > 1 and self.shard:
                    self.sharing.append(f"{name}: {open_for}")
                if len(open_for) == 1 and self.owners.get(name, ("", 0.0))[0] != open_for[0]:
                    self.owners[name] = (open_for[0], time.monotonic())
            await asyncio.sleep(0.005)  # a sampling interval, not synchronisation

    def _on_stored(self, rt: Any, obj: Obj) -> None:
        """Every stored slice version: once published not ready while its backend is down, a host must
        not be published ready before its backend comes back (no passing probe can have happened)."""
        labels = obj.get("metadata", {}).get("labels") or {}
        if getattr(rt, "plural", "") == "endpoints" and labels.get(MANAGED_ENDPOINTS[0]) == MANAGED_ENDPOINTS[1]:
            if self.shard:
                self._check_reopened_endpoints(obj)
            return
        if getattr(rt, "plural", "") != "endpointslices" or labels.get(MANAGED[0]) != MANAGED[1]:
            return
        service = labels.get("kubernetes.io/service-name", "")
        port = (obj.get("ports") or [{}])[0].get("name", "")
        if self.grace > 0:
            if ("default", obj["metadata"]["name"]) in self.api.store.objects[("discovery.k8s.io", "endpointslices")]:
                self.deleted_by_us.discard((service, port))  # that port's slice is written again (not a delete)
            self._check_leaving(service, obj)
        if not self.shard:
            return
        for endpoint in obj.get("endpoints") or []:
            address = endpoint["addresses"][0]
            if address not in self.up or self.up[address]:
                continue
            slot = (service, port, address)
            if not endpoint["conditions"].get("ready"):
                self._published_down.add(slot)
            elif slot in self._published_down and not self._foreign_edit:
                self.reopened.append(f"{service} {port} {address}: ready again while down")

    def _check_reopened_endpoints(self, obj: Obj) -> None:
        """The same rule for epctl's v1 Endpoints copy (older consumers route by it): once it says a
        host is not ready while its backend is down, no later version may say ready before it is up
        (a new owner's stale cache, or a write planned before a fresh read, republished it)."""
        service = obj["metadata"]["name"]
        for (port, address), ready in endpoints_readiness(obj).items():
            if address not in self.up or self.up[address]:
                continue
            slot = ("Endpoints", service, port, address)
            if not ready:
                self._published_down.add(slot)
            elif slot in self._published_down:
                self.reopened.append(f"Endpoints {service} {port} {address}: ready again while down")

    # --- grace walks: a host a ClusterEndpoint stops listing leaves only after its grace -----------

    def _slices_of(self, name: str) -> list[Obj]:
        return [o for o in self.objects()["endpointslices"].values()
                if (o["metadata"].get("labels") or {}).get(MANAGED[0]) == MANAGED[1]
                and o["metadata"]["labels"].get("kubernetes.io/service-name") == name]

    def _forget_settled(self, name: str, item: Obj | None) -> None:
        """Entries that stopped applying: the ClusterEndpoint is gone or re-created, no longer holds its
        Service, lists the host again (once the edit that unlisted it is in), or lost the port (a removed
        port's endpoints leave at once)."""
        svc = self._get("services", name)
        for key, (_, uid, generation) in list(self.unlisted.items()):
            if key[0] != name:
                continue
            if item is None or item["metadata"]["uid"] != uid or not holds(item, svc):
                del self.unlisted[key]
                continue
            ports = {p["name"]: p["hosts"] for p in item["spec"]["ports"]}
            edited = item["metadata"].get("generation", 0) > generation
            if key[1] not in ports or (edited and key[2] in ports[key[1]]):
                del self.unlisted[key]

    def _check_leaving(self, name: str, stored: Obj | None = None) -> None:
        """At every stored version of a slice: a host the spec stopped listing is still published until
        a whole grace has passed since it was unlisted and since the target was last taken over (a
        restart, a handover, a start after an edit made while none ran: the new owner cannot know when
        it left, so it gives it a whole grace from then); and once the status says the edit was seen,
        it is published not ready and terminating (before that, the slices are not yet rewritten)."""
        if not any(key[0] == name for key in self.unlisted):
            return  # most stored slices: nothing of theirs is leaving (no copies of the objects read)
        item = self._get("clusterendpoints", name)
        self._forget_settled(name, item)
        entries = [(key, left, generation) for key, (left, _, generation) in self.unlisted.items() if key[0] == name]
        if not entries or item is None:
            return
        seen = ((item.get("status") or {}).get("observedGeneration") or 0)
        slices = self._slices_of(name)
        published = _conditions(slices)
        # the conditions check judges only the slice this version wrote (another slice of the Service may
        # be one whose write is failing or was not needed: stale, not wrong)
        meta = (stored or {}).get("metadata") or {}
        written = _conditions([stored]) if stored is not None and any(
            o["metadata"]["name"] == meta.get("name") and o["metadata"].get("resourceVersion") == meta.get(
                "resourceVersion") for o in slices) else {}
        now = time.monotonic()
        for key, left, generation in entries:
            conditions = published.get((key[1], key[2]))
            taken_over = self.owners.get(name, ("", 0.0))[1]
            if conditions is None and (name, key[1]) in self.deleted_by_us:
                continue  # the fuzzer deleted that port's slice: judged when the controller writes it again
            if conditions is None:
                bound = max(left + self.grace - 0.05, taken_over + self.grace - TAKEOVER_SLACK)
                if now < bound:
                    self.dropped_early.append(
                        f"{name} {key[1]} {key[2]}: dropped {now - left:.2f} s after it was unlisted and "
                        f"{now - taken_over:.2f} s after the last takeover, grace {self.grace} s")
                else:
                    self.stats.graced += 1
                    self.stats.taken_over += taken_over > left
                del self.unlisted[key]
            elif (seen > generation and (key[1], key[2]) in written and (conditions[0] or not conditions[2])
                  and not self._foreign_edit):
                self.dropped_early.append(f"{name} {key[1]} {key[2]}: leaving, yet published (ready, serving, "
                                          f"terminating) {conditions} {now - left:.2f} s after it was unlisted")

    def _still_ready(self) -> list[str]:
        """Polled while quiescing: a leaving host whose ClusterEndpoint's status shows the edit was seen,
        whose target one replica holds (fence open, in its desired state) and no replica has left to
        write, is published not ready and terminating. (Checked at each slice version alone, this was
        almost never armed: the routing write goes before the status that shows the edit was seen.)"""
        problems = []
        for (name, port, host), (left, _, generation) in list(self.unlisted.items()):
            item = self._get("clusterendpoints", name)
            seen = ((item or {}).get("status") or {}).get("observedGeneration") or 0
            key = ("default", name)
            holders = [r for r in self.replicas
                       if r.controller.fence.remaining(key) > 0 and key in r.controller.state.targets]
            idle = len(holders) == 1 and all(key not in r.controller.writer._pending
                                             and key not in r.controller.writer._in_flight for r in self.replicas)
            conditions = _conditions(self._slices_of(name)).get((port, host))
            if item is not None and seen > generation and idle and conditions and (conditions[0] or not conditions[2]):
                problems.append(f"{name} {port} {host}: leaving, yet published (ready, serving, terminating) "
                                f"{conditions} {time.monotonic() - left:.2f} s after it was unlisted")
        return problems

    async def _put_clusterendpoint(self, obj: Obj) -> None:
        """PUT a ClusterEndpoint whose spec changed; in a grace walk, first note which published hosts
        it stops listing (the time is taken before the write, so the bound is never too strict)."""
        name = obj["metadata"]["name"]
        current = self._get("clusterendpoints", name)
        noted: list[tuple[str, str, str]] = []
        generation = 0
        if self.grace > 0 and current is not None and holds(current, self._get("services", name)):
            listed = {(p["name"], h) for p in obj["spec"]["ports"] for h in p["hosts"]}
            kept_ports = {p["name"] for p in obj["spec"]["ports"]}
            generation = current["metadata"].get("generation", 0)
            for port, host in _conditions(self._slices_of(name)):
                key = (name, port, host)
                if port in kept_ports and (port, host) not in listed and key not in self.unlisted:
                    self.unlisted[key] = (time.monotonic(), current["metadata"]["uid"], generation)
                    noted.append(key)
        await self._try("PUT", CLUSTERENDPOINTS.path("default", name), obj)
        stored = self._get("clusterendpoints", name)
        if noted and (stored is None or stored["metadata"].get("generation", 0) == generation):
            for key in noted:  # the edit did not land (a conflict): nothing left
                self.unlisted.pop(key, None)
        else:
            self.stats.unlisted += len(noted)

    def leader(self) -> Replica | None:
        return next((r for r in self.replicas if r.controller.leading), None)

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        for replica in list(self.replicas):
            await self.stop_replica(replica)
        for backend in self.backends.values():
            await backend.stop()

    # --- reading --------------------------------------------------------------------------------

    def objects(self) -> dict[str, dict[tuple[str, str], Obj]]:
        store = self.api.store.objects
        return {"clusterendpoints": dict(store[("epctl.io", "clusterendpoints")]),
                "services": dict(store[("", "services")]),
                "endpoints": dict(store[("", "endpoints")]),
                "endpointslices": dict(store[("discovery.k8s.io", "endpointslices")])}

    def _get(self, plural: str, name: str) -> Obj | None:
        kind = {"clusterendpoints": ("epctl.io", "clusterendpoints"), "services": ("", "services")}[plural]
        obj = self.api.store.objects[kind].get(("default", name))
        return copy.deepcopy(obj) if obj is not None else None

    # --- steps ----------------------------------------------------------------------------------

    async def run(self, step: Step, stats: Stats) -> None:
        stats.kinds[step["kind"]] = stats.kinds.get(step["kind"], 0) + 1
        await getattr(self, f"_{step['kind']}")(step, stats)

    async def _try(self, method: str, path: str, body: Obj | None = None, **kw: Any) -> None:
        try:
            await self.client.request(method, path, body=body, **kw)
        except ApiError as err:
            if err.code not in (404, 409):
                raise

    def _body(self, step: Step, name: str | None = None) -> Obj:
        body = cep(name or step["name"], step["spec"]["ports"])
        if step.get("adopt"):
            body["metadata"]["annotations"] = {"epctl.io/adopt": "true"}
        return body

    async def _apply(self, step: Step, stats: Stats) -> None:
        current = self._get("clusterendpoints", step["name"])
        if current is None:
            await self._try("POST", CLUSTERENDPOINTS.path("default"), self._body(step))
            return
        current["spec"] = step["spec"]
        annotations = current["metadata"].setdefault("annotations", {})
        if step["adopt"]:
            annotations["epctl.io/adopt"] = "true"
        else:
            annotations.pop("epctl.io/adopt", None)
        await self._put_clusterendpoint(current)

    async def _delete(self, step: Step, stats: Stats) -> None:
        await self._try("DELETE", CLUSTERENDPOINTS.path("default", step["name"]))

    def _recreated(self, step: Step, old: Obj | None) -> Obj:
        """The new object: a new spec, the old one's annotations (re-applying a manifest keeps them)."""
        body = self._body(step)
        if old is not None:
            body["metadata"]["annotations"] = (old["metadata"].get("annotations") or {})
        return body

    async def _recreate(self, step: Step, stats: Stats) -> None:
        old = self._get("clusterendpoints", step["name"])
        await self._delete(step, stats)
        await self._try("POST", CLUSTERENDPOINTS.path("default"), self._recreated(step, old))

    async def _recreate_relist(self, step: Step, stats: Stats) -> None:
        """Delete and re-create while the controller sees nothing; it learns of both from one relist."""
        old = self._get("clusterendpoints", step["name"])
        self.api.stall_watches()
        await self._delete(step, stats)
        if old is not None:  # let garbage collection finish, as it would during a long outage
            await eventually(lambda: not any(_owned_by(o, old["metadata"]["uid"])
                                             for kind in self.objects().values() for o in kind.values()),
                             message="GC of the old incarnation's objects")
        await self._try("POST", CLUSTERENDPOINTS.path("default"), self._recreated(step, old))
        await self._compact(step, stats)

    async def _unlist(self, step: Step, stats: Stats) -> None:
        """A host leaves a ClusterEndpoint (one of a port's hosts goes; a port's only host is swapped for
        another address), then something else happens within its grace. With no ClusterEndpoint of that
        name, one listing every address is created and published first."""
        current = self._get("clusterendpoints", step["name"])
        if current is None and self.replicas:  # none to leave from: one with every address, published first
            await self._try("POST", CLUSTERENDPOINTS.path("default"), self._body(
                {"name": step["name"], "adopt": True, "spec": {"ports": [{
                    "name": "p0", "port": 8000, "targetPort": self.port, "hosts": list(ADDRESSES), "tcpSocket": {},
                    "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1, "successThreshold": 1}]}}))
            current = self._get("clusterendpoints", step["name"])
            if holds(current, self._get("services", step["name"])):
                try:
                    await eventually(lambda: len(_endpoints(self._slices_of(step["name"]))) == len(ADDRESSES),
                                     timeout=10, message="published")
                except AssertionError:
                    pass  # a step within the grace is still worth walking
            current = self._get("clusterendpoints", step["name"])
        if current is not None:
            ports = current["spec"]["ports"]
            port = ports[step["pick"] % len(ports)]
            gone = port["hosts"][(step["pick"] >> 4) % len(port["hosts"])]
            others = [a for a in ADDRESSES if a not in port["hosts"]]
            port["hosts"] = ([h for h in port["hosts"] if h != gone] if len(port["hosts"]) > 1
                             else [others[(step["pick"] >> 8) % len(others)]])
            await self._put_clusterendpoint(current)
        if "then" in step:
            await self.run(step["then"], stats)

    async def _drain(self, step: Step, stats: Stats) -> None:
        """Hosts into (and out of) maintenance, as kubectl annotate writes it: a merge patch."""
        value = ",".join(step["hosts"]) or None
        await self._try("PATCH", CLUSTERENDPOINTS.path("default", step["name"]),
                        {"metadata": {"annotations": {DRAIN: value}}}, content_type=MERGE_PATCH)

    async def _backend(self, step: Step, stats: Stats) -> None:
        self.up[step["address"]] = step["up"]
        if step["up"]:  # a passing probe is possible from now on
            self._published_down = {s for s in self._published_down if s[-1] != step["address"]}
        await self.backends[step["address"]].set_mode("accepting" if step["up"] else "closed")

    async def _flap(self, step: Step, stats: Stats) -> None:
        """A backend flips and flips back while the status patch saying so is in flight (the API server
        applies it at once, answers a second later) and before the controller's watch shows it (its
        watches run 2 s late): the status set back to what the cached object still shows must be
        written after all, not taken as already there (found by review, 2026-12-04)."""
        stats.faults += 2
        self.api.inject_fault(FaultRule(user_agent=CONTROLLER_AGENT, verb="patch", resource="clusterendpoints",
                                        subresource="status", code=0, respond_after=1.0, count=2))
        self.api.lag_watches(CONTROLLER_AGENT, 2.0)
        try:
            address = step["address"]
            await self._backend({"address": address, "up": not self.up[address]}, stats)
            try:
                await eventually(lambda: any(r.controller.status.in_flight() > 0 for r in self.replicas),
                                 timeout=3, message="a status patch in flight")
            except AssertionError:
                pass  # no ClusterEndpoint lists that host: the flip back is still a step
            await self._backend({"address": address, "up": not self.up[address]}, stats)
            try:  # the flip back decided and its status set while the watches are still behind
                await eventually(lambda: all(r.controller.status.in_flight() == 0 for r in self.replicas),
                                 timeout=4, message="status patches answered")
            except AssertionError:
                pass
        finally:
            self.api.lag_watches(CONTROLLER_AGENT, 0)

    def _ours(self) -> list[Obj]:
        return sorted((o for o in self.objects()["endpointslices"].values()
                       if (o["metadata"].get("labels") or {}).get(MANAGED[0]) == MANAGED[1]),
                      key=lambda o: o["metadata"]["name"])

    async def _delete_slice(self, step: Step, stats: Stats) -> None:
        ours = self._ours()
        if ours:
            victim = ours[step["pick"] % len(ours)]
            service = victim["metadata"]["labels"].get("kubernetes.io/service-name", "")
            self.deleted_by_us.add((service, (victim.get("ports") or [{}])[0].get("name", "")))
            await self._try("DELETE", ENDPOINTSLICES.path("default", victim["metadata"]["name"]))

    async def _edit_slice(self, step: Step, stats: Stats) -> None:
        ours = [o for o in self._ours() if o.get("endpoints")]
        if ours:
            victim = copy.deepcopy(ours[step["pick"] % len(ours)])
            conditions = victim["endpoints"][0]["conditions"]
            conditions["ready"] = conditions["serving"] = not conditions.get("ready")
            self._foreign_edit = True
            try:
                await self._try("PUT", ENDPOINTSLICES.path("default", victim["metadata"]["name"]), victim)
            finally:
                self._foreign_edit = False

    async def _delete_service(self, step: Step, stats: Stats) -> None:
        await self._try("DELETE", SERVICES.path("default", step["name"]))

    async def _set_mirrored(self, name: str, mirrored: bool | None) -> None:
        """Service ``name`` asks to be mirrored (created so if missing), or stops asking; None: the other
        of what it does now."""
        svc = self._get("services", name)
        annotations = (svc or {}).get("metadata", {}).get("annotations") or {}
        if mirrored is None:
            mirrored = MIRROR not in annotations
        if svc is None:
            if mirrored:
                await self._try("POST", SERVICES.path("default"), {
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "annotations": {MIRROR: "default/origin"}},
                    "spec": {"ports": [{"name": "db", "port": 5432}]}})
            return
        if mirrored:
            svc["metadata"].setdefault("annotations", {})[MIRROR] = "default/origin"
        elif MIRROR in annotations:
            del svc["metadata"]["annotations"][MIRROR]
        else:
            return
        await self._try("PUT", SERVICES.path("default", name), svc)

    async def _annotate(self, step: Step, stats: Stats) -> None:
        await self._set_mirrored("m", True)

    async def _unannotate(self, step: Step, stats: Stats) -> None:
        await self._set_mirrored("m", False)

    async def _legacy_endpoints(self, step: Step, stats: Stats) -> None:
        """What endpoints-operator or kube-endpoint-manager would leave (or a person would write): a
        hand-made Endpoints object with a host that is not there any more. Over an existing one too."""
        body: Obj = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": step["name"]},
                     "subsets": [{"addresses": [{"ip": "10.9.9.9"}], "ports": [{"name": "p0", "port": self.port}]}]}
        current = self.api.store.objects[("", "endpoints")].get(("default", step["name"]))
        if current is None:
            await self._try("POST", ENDPOINTS.path("default"), body)
        else:
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            await self._try("PUT", ENDPOINTS.path("default", step["name"]), body)

    async def _stale_endpoints(self, step: Step, among: list[str] | None = None) -> None:
        """What a process killed between a slice write and its deferred Endpoints write leaves (routing
        first: the copy goes after the slices): a host ready in the slices, not ready in epctl's copy.
        The step's target if its copy lists a ready host, else the next one that does (of ``among``)."""
        names = NAMES[NAMES.index(step["name"]):] + NAMES[:NAMES.index(step["name"])]
        for name in (n for n in names if among is None or n in among):
            current = self.api.store.objects[("", "endpoints")].get(("default", name))
            labels = (current or {}).get("metadata", {}).get("labels") or {}
            ready = sorted({a.get("ip", "") for subset in (current or {}).get("subsets") or []
                            for a in subset.get("addresses") or []})
            if current is None or labels.get(MANAGED_ENDPOINTS[0]) != MANAGED_ENDPOINTS[1] or not ready:
                continue
            address = ready[step["pick"] % len(ready)]
            body = copy.deepcopy(current)
            for subset in body.get("subsets") or []:
                moved = [a for a in subset.get("addresses") or [] if a.get("ip") == address]
                if moved:
                    subset["addresses"] = [a for a in subset["addresses"] if a.get("ip") != address]
                    subset["notReadyAddresses"] = (subset.get("notReadyAddresses") or []) + moved
            await self._try("PUT", ENDPOINTS.path("default", name), body)
            return

    async def _mirror(self, step: Step, stats: Stats) -> None:
        """Service ``name`` asks to be mirrored (created so if missing) if it did not, and stops if it did."""
        await self._set_mirrored(step["name"], None)

    async def _burst(self, step: Step, stats: Stats) -> None:
        """Every object changed at once: with one write slot pair the targets contend, so Endpoints
        writes and deletes wait behind the others' slices."""
        await asyncio.gather(*(self.run(part, stats) for part in step["steps"]))

    async def _drop_watches(self, step: Step, stats: Stats) -> None:
        self.api.drop_watches()

    async def _compact(self, step: Step, stats: Stats) -> None:
        stats.relists += 1
        self.api.compact()
        self.api.drop_watches()

    async def _faults(self, step: Step, stats: Stats) -> None:
        stats.faults += step["rule"]["count"]
        self.api.inject_fault(FaultRule(**step["rule"], user_agent=CONTROLLER_AGENT))
        await self.run(step["then"], stats)

    async def _restart(self, step: Step, stats: Stats) -> None:
        """A replica (leader or standby) stops and a new one starts."""
        stats.restarts += 1
        await self.stop_replica(self.replicas[step["pick"] % len(self.replicas)])
        await self.start_replica()

    async def _leader_change(self, step: Step, stats: Stats) -> None:
        """The leader shuts down (releasing its Lease); the standby takes over; a new standby starts."""
        stats.restarts += 1
        leader = self.leader()
        if leader is not None:
            await self.stop_replica(leader)
        await self.start_replica()

    async def _partition(self, step: Step, stats: Stats) -> None:
        """The leader loses the API server (every request fails) until it steps down; then it heals."""
        leader = self.leader()
        if leader is None:
            return
        rule = self.api.inject_fault(FaultRule(user_agent=f"{CONTROLLER_AGENT}/{leader.name}", code=503,
                                               count=10**9))
        await eventually(lambda: not leader.controller.leading, timeout=10, message="partitioned leader steps down")
        await eventually(lambda: any(r.controller.leading for r in self.replicas if r is not leader), timeout=15,
                         message="the standby takes over")  # only then does the partition heal
        self.api.faults.remove(rule)

    # --- shard-mode steps --------------------------------------------------------------------------

    def _pick(self, step: Step) -> Replica:
        picked: Replica = self.replicas[step["pick"] % len(self.replicas)]
        return picked

    async def _join(self, step: Step, stats: Stats) -> None:
        if len(self.replicas) < MAX_MEMBERS:
            await self.start_replica()

    async def _leave(self, step: Step, stats: Stats) -> None:
        """A member shuts down gracefully (flushes, releases its Lease)."""
        if len(self.replicas) > 1:
            stats.restarts += 1
            await self.stop_replica(self._pick(step))

    async def _kill(self, step: Step, stats: Stats) -> None:
        """kill -9 of a member: nothing more of it reaches the API server; its Lease expires. Its
        Deployment starts a new one. ``stale_endpoints``: it died between a slice write and the
        Endpoints write deferred behind it (routing first)."""
        stats.restarts += 1
        victim = self._pick(step)
        held = [name for name in NAMES if victim.controller.fence.remaining(("default", name)) > 0]
        await self.stop_replica(victim, killed=True)
        if step.get("stale_endpoints") and held:  # what it left of a target it held
            await self._stale_endpoints(step, held)
        await self.start_replica()

    async def _pause(self, step: Step, stats: Stats) -> None:
        """A member is stopped longer than its Lease (SIGSTOP, a VM paused): everything it sends hangs
        and never lands, until the others have taken its targets; then it runs on and must notice."""
        victim = self._pick(step)
        if len(self.replicas) < 2:
            return
        rule = self.api.inject_fault(FaultRule(user_agent=f"{CONTROLLER_AGENT}/{victim.name}", code=503,
                                               delay=LEASE["lease_duration"] * 1.5, count=10**9))
        others = [r for r in self.replicas if r is not victim]
        await eventually(lambda: all(r.controller.member is not None
                                     and victim.name not in r.controller.member.ring.members for r in others),
                         timeout=15, message="the others count the paused member out")
        self.api.faults.remove(rule)

    async def _delete_lease(self, step: Step, stats: Stats) -> None:
        """kubectl delete lease (or a cascading delete) of a live member's Lease."""
        await self._try("DELETE", LEASES.path("default", lease_name(self._pick(step).name)))

    async def _edit_lease(self, step: Step, stats: Stats) -> None:
        """Someone edits a live member's Lease: clears its holder, or takes it out of the group."""
        edit = ({"spec": {"holderIdentity": None}} if step["edit"] == "holder"
                else {"metadata": {"labels": {GROUP_LABEL: None}}})
        await self._try("PATCH", LEASES.path("default", lease_name(self._pick(step).name)), edit,
                        content_type=MERGE_PATCH)

    async def _slow(self, step: Step, stats: Stats) -> None:
        """One member's next writes are applied at once but answered only after longer than a Lease
        lasts; a backend flips (so it has writes in flight) and the ring changes meanwhile: its
        handover waits on a write that outlives its Lease."""
        victim = self._pick(step)
        stats.faults += 4
        self.api.inject_fault(FaultRule(user_agent=f"{CONTROLLER_AGENT}/{victim.name}", code=0, count=4,
                                        respond_after=LEASE["lease_duration"] * 1.5,
                                        verb=("patch", "update", "create")[step["pick"] % 3]))
        await self._backend({"address": step["address"], "up": not self.up[step["address"]]}, stats)
        writing = victim.controller
        try:
            await eventually(lambda: bool(writing.writer._in_flight) or writing.status.in_flight() > 0,
                             timeout=3, message="a write in flight")
        except AssertionError:
            pass  # it owned nothing that changed: the handover below is still worth walking
        await self.run(step["then"], stats)

    async def _lag(self, step: Step, stats: Stats) -> None:
        """One member's watches run a second late while the next step happens."""
        self.api.lag_watches(f"{CONTROLLER_AGENT}/{self._pick(step).name}", 1.0)
        await self.run(step["then"], stats)

    async def _offline(self, step: Step, stats: Stats) -> None:
        """Every member stops (an upgrade); an edit is made while none runs; they start again. What no
        front-end claims must be gone before the garbage collector runs again. ``stale_endpoints``: one
        stopped as if killed between a slice write and its deferred Endpoints write, too."""
        count = len(self.replicas)
        for replica in list(self.replicas):
            await self.stop_replica(replica)
        stats.restarts += count
        edit, gone_uid = step["edit"], ""
        if edit == "unannotate":
            await self._unannotate(step, stats)
        elif edit in ("delete", "delete_slow_gc"):
            current = self._get("clusterendpoints", step["name"])
            gone_uid = current["metadata"]["uid"] if current and edit == "delete_slow_gc" else ""
            self.api.store.gc_paused = bool(gone_uid)
            await self._delete(step, stats)
        elif edit == "unlist":
            await self._unlist({"kind": "unlist", "name": step["name"], "pick": step["pick"]}, stats)
        else:
            await self._backend({"address": step["address"], "up": not self.up[step["address"]]}, stats)
        if step.get("stale_endpoints"):
            await self._stale_endpoints(step)
        for _ in range(count):
            await self.start_replica()
        if gone_uid:
            def swept() -> bool:
                return not any(_owned_by(o, gone_uid) for kind in ("endpointslices", "endpoints")
                               for o in self.objects()[kind].values())
            try:
                await eventually(swept, timeout=10, message="what the deleted ClusterEndpoint published is swept")
            except AssertionError as err:
                raise InvariantViolation(str(err)) from None
            finally:
                self.api.store.resume_gc()

    async def _hostile(self, step: Step, stats: Stats) -> None:
        body = cep("h", [{"name": "p0", "port": 8000, "targetPort": self.port, "hosts": [step["host"]],
                          "tcpSocket": {}, "periodSeconds": 1}])
        await self._try("DELETE", CLUSTERENDPOINTS.path("default", "h"))
        await self._try("POST", CLUSTERENDPOINTS.path("default"), body)

    # --- invariants -----------------------------------------------------------------------------

    def converged(self) -> list[str]:
        """Shard mode: every member sees the same ring of every member, and it converged."""
        rings = {r.controller.member.ring.members for r in self.replicas if r.controller.member is not None}
        names = tuple(sorted(r.name for r in self.replicas))
        if rings != {names} or not all(r.controller.leading for r in self.replicas):
            return [f"ring not converged: members {names}, rings seen {sorted(rings)}"]
        return []

    def writers(self) -> list[str]:
        """Problems with who wrote: at most one replica writes at any time. Only the Lease holder renews
        or acquires the Lease, so in the server's commit order (its request log) every write must come
        from the replica whose successful Lease write is the latest before it; a deposed leader that
        writes after another one acquired the Lease breaks this, a leader that later leads again not."""
        holder = ""
        for r in self.api.request_log:
            if not (r.is_write and r.code < 400 and r.user_agent.startswith(CONTROLLER_AGENT)):
                continue
            if r.resource == "leases":
                holder = r.user_agent
            elif r.resource != "events" and r.user_agent != holder:
                return [f"{r.user_agent} wrote {r.verb} {r.resource}/{r.name} while {holder or 'nobody'} held the "
                        "Lease"]
        return []

    async def quiesce(self, stats: Stats) -> None:
        """Wait for the state the objects and backends call for; then an idle window writes nothing."""
        self.api.faults.clear()  # a burst lasts one step
        self.api.watch_lag.clear()

        def problems() -> list[str]:
            if self.shard:
                return (violations(self.objects(), self.up) + self.converged() + self.sharing[:3]
                        + self.reopened[:3] + self.dropped_early[:3])
            return (violations(self.objects(), self.up) + self.writers() + self.dropped_early[:3]
                    + ([] if self.leader() is not None else ["no leader"]))

        failed_now: list[str] = []

        def settled() -> bool:
            failed_now[:] = self.sharing[:3] + self.reopened[:3] + self.dropped_early[:3] + self._still_ready()[:3]
            return bool(failed_now) or not problems()  # a violation seen on the way fails at once

        if self.sharing or self.reopened or self.dropped_early:
            raise InvariantViolation("; ".join(self.sharing[:3] + self.reopened[:3] + self.dropped_early[:3]))
        try:
            await eventually(settled, timeout=QUIESCE_TIMEOUT, interval=0.05)
        except AssertionError:
            raise InvariantViolation("did not converge: " + "; ".join(problems())) from None
        if failed_now:
            raise InvariantViolation("; ".join(failed_now))
        stats.checks += 1
        self.unlisted.clear()  # settled: every leaving host is gone (the oracle lists only listed hosts)
        self.deleted_by_us.clear()
        mark, since = len(self.api.request_log), time.monotonic()
        await asyncio.sleep(IDLE_WINDOW)  # a measurement window, not synchronisation: nothing may happen in it
        # by arrival: a write applied before the window whose answer was slow is logged during it
        writes = [f"{r.verb} {r.resource}/{r.name}" for r in self.api.writes(since=mark)
                  if r.resource not in ("events", "leases") and r.user_agent.startswith(CONTROLLER_AGENT)
                  and r.time >= since]
        if writes:
            raise InvariantViolation(f"an idle system wrote: {writes}")
        stats.checks += 1


# --- walks, shrinking, reporting -------------------------------------------------------------------

@dataclass
class Failure:
    seed: int
    steps: list[Step]
    failed_at: int
    error: str


async def run_walk(steps: list[Step], port: int, stats: Stats, shard: bool = False,
                   grace: float = 0.0) -> Failure | None:
    """Run ``steps`` in a fresh world; the first violation, or None."""
    started = time.monotonic()
    async with KubeAPIServer(allow_loopback=True, bookmark_interval=0.5) as api:
        client = await KubeClient.connect(api.kubeconfig_path, user_agent="fuzzer")
        world = World(api, client, port, shard, grace, stats)
        done = 0
        try:
            await world.start()
            await world.quiesce(stats)
            for step in steps:
                await world.run(step, stats)
                stats.steps += 1
                await world.quiesce(stats)
                done += 1
        except InvariantViolation as err:
            return Failure(0, steps, done, str(err))
        finally:
            await world.stop()
            await client.close()
            stats.walks += 1
            stats.seconds += time.monotonic() - started
    return None


def generate(seed: int, count: int, port: int, shard: bool = False, grace: bool = False) -> list[Step]:
    rng = random.Random(seed)
    more = random.Random(f"{seed}/more")  # what the world gained later: rng's walks stay as they were
    steps = [random_burst(more, port) if more.random() < BURST_SHARE else random_step(rng, port, shard, grace, more)
             for _ in range(count)]
    if random.Random(f"{seed}/thresholds").random() >= VARIED_THRESHOLDS:
        for step in steps:
            _thresholds_of_one(step)
    return steps


def _thresholds_of_one(step: Step) -> None:
    """Every probe of ``step`` (and of the steps it holds) decides on one result, as before 2026-12-05."""
    for port in step.get("spec", {}).get("ports", []):
        port["failureThreshold"] = port["successThreshold"] = 1
    for inner in ([step["then"]] if "then" in step else []) + step.get("steps", []):
        _thresholds_of_one(inner)


async def shrink(failure: Failure, port: int, budget: float, shard: bool = False, grace: float = 0.0) -> Failure:
    """Drop runs of steps while the walk still fails: halves first, then quarters, down to single
    steps (delta debugging), bounded by ``budget`` seconds. Any failure counts as the same failure."""
    deadline = time.monotonic() + budget
    best = Failure(failure.seed, failure.steps[:failure.failed_at + 1], failure.failed_at, failure.error)
    chunk = max(1, len(best.steps) // 2)
    while time.monotonic() < deadline:
        start = len(best.steps) - 1 - chunk  # the failing step itself stays
        while start >= 0 and time.monotonic() < deadline:
            candidate = best.steps[:start] + best.steps[start + chunk:]
            result = await run_walk(candidate, port, Stats(), shard, grace)
            if result is not None:
                best = Failure(failure.seed, candidate[:result.failed_at + 1], result.failed_at, result.error)
            start = min(start, len(best.steps) - 1) - chunk
        if chunk == 1:
            break
        chunk //= 2
    return best


def report(failure: Failure) -> str:
    lines = [f"seed {failure.seed}: invariant violated after step {failure.failed_at + 1}: {failure.error}",
             "steps (replay with run_walk):"]
    lines += [f"  {n + 1}. {describe(s)}" for n, s in enumerate(failure.steps[:failure.failed_at + 1])]
    return "\n".join(lines)


async def fuzz(seeds: list[int], steps: int, *, shrink_budget: float = 0.0, stats: Stats | None = None,
               shard: bool = False, grace: float = 0.0) -> Failure | None:
    """Walk each seed; with ``grace`` (seconds), every replica keeps a host a ClusterEndpoint stops
    listing published terminating that long, and the walks unlist hosts and change owners within it."""
    stats = stats or Stats()
    port = free_port()
    for seed in seeds:
        failure = await run_walk(generate(seed, steps, port, shard, grace > 0), port, stats, shard, grace)
        if failure is not None:
            failure.seed = seed
            return await shrink(failure, port, shrink_budget, shard, grace) if shrink_budget else failure
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="soak the controller with random walks")
    parser.add_argument("--seeds", type=int, default=10, help="how many random seeds")
    parser.add_argument("--first-seed", type=int, default=None, help="default: random")
    parser.add_argument("--steps", type=int, default=40, help="steps per walk")
    parser.add_argument("--shrink-seconds", type=float, default=300.0)
    parser.add_argument("--shard", action="store_true", help="three --shard members and ownership's failures")
    parser.add_argument("--grace", type=float, default=0.0, metavar="SECONDS",
                        help="replicas' --terminating-grace-period; hosts leave and owners change within it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the controller's warnings are expected here: faults, refusals
    first = args.first_seed if args.first_seed is not None else random.randrange(1 << 30)
    stats = Stats()
    failure = asyncio.run(fuzz(list(range(first, first + args.seeds)), args.steps,
                               shrink_budget=args.shrink_seconds, stats=stats, shard=args.shard,
                               grace=args.grace))
    print(f"walks {stats.walks}  steps {stats.steps}  seeds {first}..{first + args.seeds - 1}  "
          f"faults injected {stats.faults}  relists forced {stats.relists}  restarts {stats.restarts}  "
          f"invariant checks passed {stats.checks}  time {stats.seconds:.0f} s")
    if args.grace > 0:
        print(f"hosts unlisted while published {stats.unlisted}  dropped after their grace {stats.graced}"
              f" (a takeover within it: {stats.taken_over})")
    print("steps by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.kinds.items())))
    if failure is not None:
        print(report(failure), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
