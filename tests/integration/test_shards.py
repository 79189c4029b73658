"""Sharding (--shard): every member probes and writes its share; handovers never make two writers
and never flip a readiness. Proof from the test API server's request log, by client identity."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

from epctl.app import Controller, ControllerSettings
from epctl.kube.client import LEASES, MERGE_PATCH, SECRETS, SERVICES, KubeClient
from epctl.shard.member import GROUP_LABEL, lease_name
from epctl.shard.ring import owner
from epctl.testing.backends import TCPBackend, free_port
from epctl.testing.kubeapi import FaultRule, KubeAPIServer, RequestRecord
from epctl.testing.openstack import FakeOpenStack
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import (
    CLUSTERENDPOINTS,
    cep,
    cep_of,
    install_crd,
    named_replica,
    slices_of,
    source_service,
    two_open_fences,
)

Obj = dict[str, Any]
TIMING = {"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.3}
NAMES = [f"svc-{i}" for i in range(12)]
KEYS = [("default", name) for name in NAMES]
WRITES = ("create", "update", "patch", "delete")


def member(api: KubeAPIServer, name: str, **timing: float) -> AbstractAsyncContextManager[Controller]:
    return named_replica(api, name, shard=True, **{**TIMING, **timing})


def target_writes(api: KubeAPIServer, since: int = 0) -> list[RequestRecord]:
    """Successful writes of the controllers about targets (their own Leases excluded)."""
    return [r for r in api.request_log[since:] if r.verb in WRITES and r.code < 400
            and r.user_agent.startswith("epctl/") and r.resource != "leases"]


def assert_one_writer_at_a_time(records: Iterable[RequestRecord]) -> dict[str, list[str]]:
    """Per target, the writers in time order; a writer that was followed by another never writes again
    (one handover per phase of a test: an interleaving is two writers at once). Returns the runs."""
    runs: dict[str, list[str]] = {}
    for record in sorted(records, key=lambda r: r.time):
        writers = runs.setdefault(record.concerns, [])
        if not writers or writers[-1] != record.user_agent:
            assert record.user_agent not in writers, f"{record.concerns}: writers interleaved {writers}"
            writers.append(record.user_agent)
    return runs


async def populate(api: KubeAPIServer, setup: KubeClient, up: TCPBackend, down_port: int) -> None:
    """Twelve ClusterEndpoints: port "up" healthy, port "down" refused (so each has both readinesses)."""
    for name in NAMES:
        await setup.request("POST", CLUSTERENDPOINTS.path("default"), body=cep(name, [
            {"name": "up", "port": 80, "targetPort": up.port, "hosts": ["127.0.0.1"], "tcpSocket": {},
             "periodSeconds": 1, "failureThreshold": 1},
            {"name": "down", "port": 81, "targetPort": down_port, "hosts": ["127.0.0.1"], "tcpSocket": {},
             "periodSeconds": 1, "failureThreshold": 1}]))

    def published() -> bool:
        for name in NAMES:
            status = (cep_of(api, name) or {}).get("status") or {}
            ready = {e["conditions"]["ready"] for s in slices_of(api, name) for e in s.get("endpoints") or []}
            if status.get("phase") != "Degraded" or ready != {True, False}:
                return False
        return True

    await eventually(published, timeout=30, message="every ClusterEndpoint published with both readinesses")


def owners(members: list[str]) -> dict[str, str]:
    return {name: f"epctl/{owner(('default', name), members)}" for name in NAMES}


def probed_targets(controller: Controller) -> set[str]:
    return {key.target.split("/", 1)[1] for key in controller.scheduler.keys()}


async def settled(controllers: list[Controller], members: int) -> None:
    await eventually(lambda: all(c.member is not None and len(c.member.ring.members) == members and c.leading
                                 for c in controllers), timeout=15, message=f"{members} members converged")


async def quiet(controllers: list[Controller]) -> None:
    """Let every owner probe its targets twice more and write whatever that changes."""
    runs = {(id(c), k): c.scheduler.state(k).runs for c in controllers for k in c.scheduler.keys()}  # type: ignore[union-attr]

    def probed() -> bool:
        return all((c.scheduler.state(k) is None or c.scheduler.state(k).runs >= runs.get((id(c), k), 0) + 2)  # type: ignore[union-attr]
                   for c in controllers for k in c.scheduler.keys())

    await eventually(probed, timeout=15, message="every check ran twice more")
    for c in controllers:
        await c.writer.flush()
        await c.status.flush()


def snapshot(api: KubeAPIServer) -> dict[str, object]:
    """What the targets publish (readiness per address and port), to compare across a handover."""
    out: dict[str, object] = {}
    for name in NAMES:
        out[name] = sorted((s["ports"][0]["name"], e["addresses"][0], e["conditions"]["ready"])
                           for s in slices_of(api, name) for e in s.get("endpoints") or [])
    return out


async def test_members_share_the_targets_and_a_new_member_takes_only_its_share(api: KubeAPIServer) -> None:
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    async with AsyncExitStack() as stack:
        up = await stack.enter_async_context(TCPBackend())
        a = await stack.enter_async_context(member(api, "a"))
        b = await stack.enter_async_context(member(api, "b"))
        c = await stack.enter_async_context(member(api, "c"))
        await settled([a, b, c], 3)
        await populate(api, setup, up, free_port())
        expected = owners(["a", "b", "c"])
        assert set(expected.values()) == {"epctl/a", "epctl/b", "epctl/c"}  # every member has a share
        runs = assert_one_writer_at_a_time(target_writes(api))
        assert {t: w for t, w in runs.items() if t in NAMES} == {t: [w] for t, w in expected.items()}
        for controller, name in ((a, "a"), (b, "b"), (c, "c")):
            assert probed_targets(controller) == {t for t, w in expected.items() if w == f"epctl/{name}"}
        await quiet([a, b, c])
        before, mark = snapshot(api), len(api.request_log)

        d = await stack.enter_async_context(member(api, "d"))
        await settled([a, b, c, d], 4)
        after = owners(["a", "b", "c", "d"])
        moved = {t for t in NAMES if after[t] != expected[t]}
        assert moved and all(after[t] == "epctl/d" for t in moved) and len(moved) < len(NAMES) / 2
        await eventually(lambda: probed_targets(d) == moved, message="d probes exactly what moved to it")
        assert all(not (probed_targets(x) & moved) for x in (a, b, c))
        await quiet([a, b, c, d])
        writes = [r for r in target_writes(api, mark) if r.resource != "events"]
        assert writes == [], f"a steady handover wrote {[(r.user_agent, r.verb, r.resource) for r in writes]}"
        assert snapshot(api) == before
        assert all(x.ready()[0] for x in (a, b, c, d))  # /readyz stayed true
    await setup.close()


async def test_partitioned_member_stops_before_its_lease_expires_then_is_replaced(api: KubeAPIServer) -> None:
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    async with AsyncExitStack() as stack:
        up = await stack.enter_async_context(TCPBackend())
        a = await stack.enter_async_context(member(api, "a"))
        b = await stack.enter_async_context(member(api, "b"))
        c = await stack.enter_async_context(member(api, "c"))
        await settled([a, b, c], 3)
        await populate(api, setup, up, free_port())
        theirs = {t for t, w in owners(["a", "b", "c"]).items() if w == "epctl/c"}
        mark = len(api.request_log)
        api.inject_fault(FaultRule(user_agent="epctl/c", code=503, count=10**6))
        partitioned = time.monotonic()
        await eventually(lambda: not c.leading and not probed_targets(c), timeout=10, message="c steps down")
        stepped_down = time.monotonic() - partitioned
        assert stepped_down < TIMING["lease_duration"]
        await eventually(lambda: (probed_targets(a) | probed_targets(b)) == set(NAMES), timeout=15,
                         message="a and b take c's targets")
        took_over = time.monotonic() - partitioned
        assert stepped_down < TIMING["lease_duration"] <= took_over + TIMING["retry_period"]
        assert took_over < TIMING["lease_duration"] + 3 * TIMING["retry_period"] + 1.0
        await up.set_mode("closed")  # now c's targets must change, written by their new owners
        await eventually(lambda: all((cep_of(api, t) or {}).get("status", {}).get("phase") == "Unhealthy"
                                     for t in NAMES), timeout=15, message="every target follows the flip")
        c_writes = [r.time for r in target_writes(api, mark) if r.user_agent == "epctl/c"]
        others = [r.time for r in target_writes(api, mark) if r.concerns in theirs and r.user_agent != "epctl/c"]
        assert others and (not c_writes or max(c_writes) < min(others))
        assert_one_writer_at_a_time(target_writes(api, mark))
        api.faults.clear()
        await settled([a, b, c], 3)  # c comes back and gets its share again
        await eventually(lambda: probed_targets(c) == theirs, message="c probes its share again")
    await setup.close()


async def test_a_slow_api_server_does_not_cost_a_member_its_targets(api: KubeAPIServer) -> None:
    """Lease requests of one member answered in 0.6 s, twice the retry period (list + renew take
    1.2 s): an attempt may take until the renew deadline, so the member keeps its Lease and the ring
    never changes. (Bounded by the retry period, busy members stepped down and took over from each
    other every few seconds under load: found by benchmarks/shards.py.)"""
    timing = {"lease_duration": 6.0, "renew_deadline": 4.0, "retry_period": 0.3}
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    async with member(api, "a", **timing) as a, member(api, "b", **timing) as b:
        await settled([a, b], 2)
        api.inject_fault(FaultRule(user_agent="epctl/a", resource="leases", code=0, delay=0.6, count=10**6))
        mark = len(api.request_log)
        await eventually(lambda: sum(r.user_agent == "epctl/a" and r.resource == "leases" and r.verb == "update"
                                     and r.code == 200 for r in api.request_log[mark:]) >= 4,
                         timeout=20, message="four slow renewals")
        assert a.member is not None and b.member is not None
        assert a.member.step_downs == 0 and a.leading
        assert a.member.ring.members == b.member.ring.members == ("a", "b")
        api.faults.clear()
    await setup.close()


async def test_graceful_shutdown_hands_over_at_once_without_a_write(api: KubeAPIServer) -> None:
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    async with AsyncExitStack() as stack:
        up = await stack.enter_async_context(TCPBackend())
        a = await stack.enter_async_context(member(api, "a"))
        leaving = member(api, "b")
        b = await leaving.__aenter__()
        try:
            await settled([a, b], 2)
            await populate(api, setup, up, free_port())
            await quiet([a, b])
            before, mark = snapshot(api), len(api.request_log)
        finally:
            await leaving.__aexit__(None, None, None)  # SIGTERM path: flush, then delete the member Lease
        stopped = time.monotonic()
        await eventually(lambda: probed_targets(a) == set(NAMES), timeout=10, message="a owns everything")
        assert time.monotonic() - stopped < TIMING["lease_duration"]  # not an expiry: the Lease was deleted
        await quiet([a])
        writes = [r for r in target_writes(api, mark) if r.resource != "events"]
        assert writes == [] and snapshot(api) == before
        leases = await setup.request("GET", LEASES.path("default"), query={"labelSelector": GROUP_LABEL})
        assert [x["spec"]["holderIdentity"] for x in leases["items"]] == ["a"]
    await setup.close()


async def test_killed_member_process_is_replaced_within_the_lease_duration(api: KubeAPIServer) -> None:
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    args = ["--shard", "--leader-election-namespace", "default", "--lease-duration", "3", "--renew-deadline", "2",
            "--retry-period", "0.3", "--metrics-addr", "", "--allow-loopback", "--batch-delay", "0.05"]
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "epctl.cli", "controller", "--kubeconfig",
                                                api.kubeconfig_path, *args, stderr=asyncio.subprocess.DEVNULL,
                                                env={**os.environ, "NO_PROXY": "*"})
    try:
        async with AsyncExitStack() as stack:
            up = await stack.enter_async_context(TCPBackend())
            a = await stack.enter_async_context(member(api, "a"))
            await settled([a], 2)
            process = next(m for m in a.member.ring.members if m != "a")  # type: ignore[union-attr]
            await populate(api, setup, up, free_port())
            theirs = {t for t, w in owners(["a", process]).items() if w == f"epctl/{process}"}
            assert theirs and theirs != set(NAMES)
            await quiet([a])
            before, mark = snapshot(api), len(api.request_log)
            proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await eventually(lambda: probed_targets(a) == set(NAMES), timeout=15, message="a takes everything")
            assert time.monotonic() - killed < TIMING["lease_duration"] + 2 * TIMING["retry_period"] + 1.0
            await quiet([a])
            writes = [r for r in target_writes(api, mark) if r.resource != "events"]
            assert writes == [] and snapshot(api) == before  # taken over warm: no readiness changed
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await setup.close()


async def test_a_new_owner_waits_until_the_old_owner_let_go(api: KubeAPIServer) -> None:
    """b cannot list the member Leases (so it never sees d join, never acks, and keeps writing its
    targets until it steps down). d must write none of them before b is out of its ring, even though
    the hosts flip meanwhile; the old owner writes the flip."""
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    async with AsyncExitStack() as stack:
        up = await stack.enter_async_context(TCPBackend())
        slow = {"lease_duration": 8.0, "renew_deadline": 6.0}
        blind = {"lease_duration": 14.0, "renew_deadline": 12.0}  # b keeps writing 12 s after it went blind,
        a = await stack.enter_async_context(member(api, "a", **slow))  # longer than d watches before joining
        b = await stack.enter_async_context(member(api, "b", **blind))
        await settled([a, b], 2)
        await populate(api, setup, up, free_port())
        moving = {t for t in NAMES if owner(("default", t), "ab") == "b" and owner(("default", t), "abd") == "d"}
        assert moving
        mark = len(api.request_log)
        api.inject_fault(FaultRule(user_agent="epctl/b", verb="list", resource="leases", code=503, count=10**6))
        d = await stack.enter_async_context(member(api, "d", **slow))
        await eventually(lambda: len(d.member.ring.members) == 3, timeout=25,  # type: ignore[union-attr]
                         message="d sees the ring with itself (it watches one lease duration first)")
        await up.set_mode("closed")  # every target changes now: b writes its share while it holds it
        await eventually(lambda: "b" not in d.member.ring.members, timeout=25,  # type: ignore[union-attr]
                         message="b's Lease expires for d")
        b_gone = time.monotonic()
        early = [r for r in target_writes(api, mark) if r.user_agent == "epctl/d" and r.time < b_gone]
        assert early == [], f"d wrote before b let go: {[(r.concerns, r.verb, r.resource) for r in early]}"
        assert any(r.user_agent == "epctl/b" and r.concerns in moving for r in target_writes(api, mark))
        await eventually(lambda: all((cep_of(api, t) or {}).get("status", {}).get("phase") == "Unhealthy"
                                     for t in NAMES), timeout=15, message="every target published the flip")
        assert_one_writer_at_a_time(target_writes(api, mark))
        api.faults.clear()
    await setup.close()


async def test_mirrors_and_openstack_pollers_follow_ownership(api: KubeAPIServer) -> None:
    """Mirror targets are written only by their owner; an OpenStack poller runs only on the member that
    owns one of its ClusterEndpoints."""
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    mirrors = [f"copy-{i}" for i in range(6)]
    vms = [f"vms-{i}" for i in range(4)]
    async with AsyncExitStack() as stack:
        cloud = await stack.enter_async_context(FakeOpenStack())
        cloud.add_server("vm-1", fixed=["10.0.0.7"])
        a = await stack.enter_async_context(member(api, "a"))
        b = await stack.enter_async_context(member(api, "b"))
        await settled([a, b], 2)
        await source_service(setup, "src", ("https", 443, 6443), {"10.0.0.1": True})
        for name in mirrors:
            await setup.request("POST", SERVICES.path("default"), body={
                "metadata": {"name": name, "annotations": {"epctl.io/mirror-from": "default/src"}},
                "spec": {"ports": [{"name": "https", "port": 443, "targetPort": "https"}]}})
        await setup.request("POST", SECRETS.path("default"), body={"metadata": {"name": "os"}, "stringData": {
            "OS_AUTH_URL": cloud.auth_url, "OS_APPLICATION_CREDENTIAL_ID": cloud.credentials.app_credential_id,
            "OS_APPLICATION_CREDENTIAL_SECRET": cloud.credentials.app_credential_secret}})
        for i, name in enumerate(vms):  # a distinct poll interval each: one poller per ClusterEndpoint
            await setup.request("POST", CLUSTERENDPOINTS.path("default"), body=cep(
                name, [{"name": "ssh", "port": 22}],
                discovery={"openstack": {"secretRef": {"name": "os"}, "pollSeconds": 1 + i}}))
        await eventually(lambda: all(slices_of(api, n) for n in mirrors + vms), timeout=20,
                         message="every mirror and discovered ClusterEndpoint written")
        expected = {n: f"epctl/{owner(('default', n), ['a', 'b'])}" for n in mirrors + vms}
        assert set(expected.values()) == {"epctl/a", "epctl/b"}
        runs = assert_one_writer_at_a_time(target_writes(api))
        assert {t: w for t, w in runs.items() if t in expected} == {t: [w] for t, w in expected.items()}
        for controller, name in ((a, "a"), (b, "b")):
            owned = sum(1 for n in vms if expected[n] == f"epctl/{name}")
            assert len(controller.discovery.pollers) == owned
    await setup.close()


async def two_published_members(stack: AsyncExitStack, api: KubeAPIServer, setup: KubeClient
                                ) -> tuple[TCPBackend, Controller, Controller]:
    """A backend, members a and b settled, the twelve targets published and quiet."""
    up = await stack.enter_async_context(TCPBackend())
    a = await stack.enter_async_context(member(api, "a"))
    b = await stack.enter_async_context(member(api, "b"))
    await settled([a, b], 2)
    await populate(api, setup, up, free_port())
    await quiet([a, b])
    return up, a, b


async def test_a_handover_waiting_on_a_slow_write_keeps_renewing_and_shares_nothing(api: KubeAPIServer) -> None:
    """Issue 22, case 1: a's status patches are applied at once but answered only after three lease
    durations. A third member joins, so a hands over while such a write is in flight. The handover
    waits at most the renew deadline for it; a renews meanwhile (it never steps down); nobody else
    may write a's targets before a acked; a flip in the window is written by one member per target.
    (Before the fence, a's handover blocked its renewals, its Lease expired, b and c took its targets
    and a wrote them too.)"""
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    async with AsyncExitStack() as stack:
        up, a, b = await two_published_members(stack, api, setup)
        mine = {t for t, w in owners(["a", "b"]).items() if w == "epctl/a"}
        mark = len(api.request_log)
        api.inject_fault(FaultRule(user_agent="epctl/a", resource="clusterendpoints", subresource="status",
                                   code=0, respond_after=3 * TIMING["lease_duration"], count=2))
        sharing = await stack.enter_async_context(two_open_fences({"a": a, "b": b}, KEYS))
        await up.set_mode("closed")  # every target's status changes: a's first patches hang in flight
        await eventually(lambda: a.status.in_flight() > 0, message="a status write in flight")
        c = await stack.enter_async_context(member(api, "c"))
        moved = {t for t in mine if owner(("default", t), ["a", "b", "c"]) == "c"}
        assert moved
        await eventually(lambda: probed_targets(c) == {t for t, w in owners(["a", "b", "c"]).items()
                                                       if w == "epctl/c"}, timeout=15, message="c takes its share")
        await up.set_mode("accepting")  # a flip in the window after the handover
        await eventually(lambda: all((cep_of(api, t) or {}).get("status", {}).get("phase") == "Degraded"
                                     for t in NAMES), timeout=20, message="every target follows the flip")
        assert a.member is not None and a.member.step_downs == 0, "a stopped renewing during its handover"
        assert sharing == []
        assert_one_writer_at_a_time(target_writes(api, mark))
    await setup.close()


async def test_a_deleted_member_lease_never_makes_two_writers(api: KubeAPIServer) -> None:
    """Issue 22, case 2: a's member Lease is deleted (kubectl delete lease, a cascading delete). b keeps
    counting a as alive until a's last renewal expires (a deletion is not a release), a finds its Lease
    gone at its next renewal and drops every target before it joins again. (Before: b converged
    without a at once and wrote a's targets while a, having re-created its Lease, kept them.)"""
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    async with AsyncExitStack() as stack:
        up, a, b = await two_published_members(stack, api, setup)
        assert a.member is not None
        mark = len(api.request_log)
        sharing = await stack.enter_async_context(two_open_fences({"a": a, "b": b}, KEYS))
        await setup.request("DELETE", LEASES.path("default", lease_name("a")))
        await up.set_mode("closed")  # a flip right in the window
        await eventually(lambda: a.member is not None and a.member.step_downs == 1, message="a drops everything")
        await settled([a, b], 2)  # and joins again
        await eventually(lambda: all((cep_of(api, t) or {}).get("status", {}).get("phase") == "Unhealthy"
                                     for t in NAMES), timeout=20, message="every target follows the flip")
        assert sharing == []
        assert_one_writer_at_a_time(target_writes(api, mark))
        # edited by hand: holder cleared without our release signature, then the group label removed
        for edit in ({"spec": {"holderIdentity": None}}, {"metadata": {"labels": {GROUP_LABEL: None}}}):
            drops = a.member.step_downs
            await setup.request("PATCH", LEASES.path("default", lease_name("a")), body=edit,
                                content_type=MERGE_PATCH)
            await eventually(lambda d=drops: a.member is not None and a.member.step_downs == d + 1,  # type: ignore[misc]
                             message="a drops everything after its Lease was edited")
            await settled([a, b], 2)
        assert sharing == []
    await setup.close()


async def test_lease_durations_are_published_rounded_up_and_never_owned_across_namespaces(
        api: KubeAPIServer) -> None:
    """Issue 22, case 3: 3.5 s is published as 4 (as 3, the others would expire us 0.5 s early); and a
    member Lease in another namespace than its Pod gets no owner reference (the garbage collector
    deletes an object with a cross-namespace owner at once)."""
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    async with member(api, "a", lease_duration=3.5) as a:
        await settled([a], 1)
        lease = await setup.request("GET", LEASES.path("default", lease_name("a")))
        assert lease["spec"]["leaseDurationSeconds"] == 4
    pods = {"name": "epctl-0", "uid": "u-1"}
    for namespace, owned in (("default", True), ("elsewhere", False)):
        controller = Controller(setup, ControllerSettings(
            metrics_addr=None, shard=True, identity="x", leader_election_namespace="default",
            pod_owner={**pods, "namespace": namespace}))
        assert controller.member is not None
        assert (controller.member.owner_reference is not None) == owned
    await setup.close()


async def test_a_new_owner_with_lagging_watches_never_publishes_a_dead_host_ready(api: KubeAPIServer) -> None:
    """Issue 22, case 4: a marks its hosts not ready; b's watches run 1.5 s late; a hands over (a
    graceful shutdown). b must start from caches at least as new as the handover: before, b's checks
    started from its stale cache (ready), and when its watch caught up the writer took a's not-ready
    slices for a foreign edit and "repaired" them to ready: a dead host routed again until b's own
    failures counted up."""
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    names = [f"lag-{i}" for i in range(6)]
    flips: list[str] = []  # a slice version that made the host ready again after it was published not ready
    seen_down: set[str] = set()

    def watch_slices(rt: object, obj: Obj) -> None:
        service = (obj.get("metadata", {}).get("labels") or {}).get("kubernetes.io/service-name", "")
        ready = [e["conditions"].get("ready") for e in obj.get("endpoints") or []]
        if service in names and ready:
            if ready == [False]:
                seen_down.add(service)
            elif service in seen_down:
                flips.append(service)

    api.store.listeners.append(lambda rt, obj: watch_slices(rt, obj) if getattr(rt, "plural", "") ==
                               "endpointslices" else None)
    async with AsyncExitStack() as stack:
        up = await stack.enter_async_context(TCPBackend())
        leaving = member(api, "a")
        a = await leaving.__aenter__()
        try:
            b = await stack.enter_async_context(member(api, "b"))
            await settled([a, b], 2)
            for name in names:
                await setup.request("POST", CLUSTERENDPOINTS.path("default"), body=cep(name, [
                    {"name": "up", "port": 80, "targetPort": up.port, "hosts": ["127.0.0.1"], "tcpSocket": {},
                     "periodSeconds": 1, "failureThreshold": 3}]))
            await eventually(lambda: all((cep_of(api, n) or {}).get("status", {}).get("phase") == "Healthy"
                                         for n in names), timeout=20, message="all healthy")
            api.lag_watches("epctl/b", 1.5)
            await up.set_mode("closed")
            await eventually(lambda: seen_down >= set(names), timeout=20, message="every host published not ready")
        finally:
            await leaving.__aexit__(None, None, None)  # a hands everything to b
        await eventually(lambda: probed_targets(b) == set(names), timeout=15, message="b takes over")
        await quiet([b])
        assert flips == [], f"a dead host was published ready again: {flips}"
        api.lag_watches("epctl/b", 0)
    await setup.close()
