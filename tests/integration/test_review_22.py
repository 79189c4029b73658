"""Review of issue 22 (shard ownership fencing): failing reproductions, one per problem found.

Each test states the interleaving, what the issue promises and what happens instead. Proof from the
test API server (request log, stored objects) or from the replicas' own write fences sampled the way
tests/integration/test_shards.py samples them."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

import pytest

from epctl.app import Controller
from epctl.kube.client import LEASES, MERGE_PATCH, SERVICES, KubeClient, Resource
from epctl.shard.member import GROUP_LABEL, lease_name
from epctl.testing.backends import TCPBackend, free_port
from epctl.testing.kubeapi import FaultRule, KubeAPIServer
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import (
    CLUSTERENDPOINTS,
    cep,
    cep_of,
    install_crd,
    named_replica,
    slices_of,
    two_open_fences,
)

Obj = dict[str, Any]
NAME = "lag-1"  # owned by a in the shard ring {a, b} (rendezvous hashing): a is the one that hands over
KEYS = [("default", f"svc-{i}") for i in range(8)]


def replica(api: KubeAPIServer, name: str, **settings: Any) -> AbstractAsyncContextManager[Controller]:
    return named_replica(api, name, **settings)


# --- 1. --leader-elect: a deleted leader Lease makes a second leader at once -------------------------

LEADER = {"leader_elect": True, "lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.3}


@pytest.mark.parametrize("edit", ["delete", "clear-holder", "shorten-duration"])
async def test_leader_elect_deleted_or_edited_lease_makes_two_leaders(api: KubeAPIServer, edit: str) -> None:
    """The issue's case 2 for --leader-elect (the brief: "anything in the leader-election path"). The
    leader Lease is deleted (kubectl delete lease, a cascading delete), or edited by hand (holder
    cleared; leaseDurationSeconds shortened to 1: LeaderElector._try judges expiry by the duration the
    Lease says *now*, from when it first saw the renewTime, so the standby takes over at once, where
    ring.Members keeps the longer one); a's next renewal is slow (1.6 s,
    well inside its 2 s renew deadline, the slow API server a leader must ride out). The standby's next
    attempt finds no Lease, creates it and leads *at once*: a deletion is treated as an expiry-free
    release. a keeps its fence open until its deadline: two leaders for ~1 s (at default timing: up to
    the 10 s renew deadline when a's API is slow, a retry period otherwise)."""
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(replica(api, "a", **LEADER))
        await eventually(lambda: a.leading, message="a leads")
        b = await stack.enter_async_context(replica(api, "b", **LEADER))
        await asyncio.sleep(0)
        sharing = await stack.enter_async_context(two_open_fences({"a": a, "b": b}, KEYS))
        api.inject_fault(FaultRule(user_agent="epctl/a", resource="leases", verb="get", code=0, delay=1.6))
        path = LEASES.path("default", "epctl-controller")
        if edit == "delete":
            await setup.request("DELETE", path)
        elif edit == "clear-holder":
            await setup.request("PATCH", path, body={"spec": {"holderIdentity": None}}, content_type=MERGE_PATCH)
        else:
            await setup.request("PATCH", path, body={"spec": {"leaseDurationSeconds": 1}}, content_type=MERGE_PATCH)
        mark = len(api.request_log)
        # a leader again (a, after stepping down and campaigning again, or b), its Lease written anew
        await eventually(lambda: any(r.resource == "leases" and r.verb in ("create", "update") and r.code < 300
                                     for r in api.request_log[mark:]) and (a.leading or b.leading),
                         timeout=10, message="a leader after the edit")
        assert sharing == [], f"two leaders' fences open at once: {sharing[:3]} ({len(sharing)} samples)"
    await setup.close()


# --- 2. --shard: a member that joins after another's Lease vanished never heard of it ---------------

SHARD = {"shard": True, "lease_duration": 6.0, "renew_deadline": 4.0, "retry_period": 0.3}


@pytest.mark.parametrize("edit", ["delete", "clear-holder", "remove-group-label"])
async def test_a_member_joining_after_a_lease_vanished_takes_everything_while_the_holder_writes(
        api: KubeAPIServer, edit: str) -> None:
    """Members.observe keeps a vanished or edited Lease alive only in a process that saw it before.
    A member that starts (a rollout, a restart, a scale-up) after a's Lease was deleted, its holder
    cleared (a first sight of a holder-less Lease counts as *released*, and is then deleted by the new
    member) or its group label removed never counts a at all: alone in its ring it converges at once
    and takes every target, while a -- whose renewal is slow, inside its renew deadline -- still holds
    everything until it notices. Two writers for every target."""
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(replica(api, "a", **SHARD))
        await eventually(lambda: a.member is not None and a.leading, timeout=15, message="a alone converged")
        # a's next look at the member Leases is slow (3 s, inside its 4 s renew deadline)
        api.inject_fault(FaultRule(user_agent="epctl/a", resource="leases", verb="list", code=0, delay=3.0))
        path = LEASES.path("default", lease_name("a"))
        if edit == "delete":
            await setup.request("DELETE", path)
        elif edit == "clear-holder":
            await setup.request("PATCH", path, body={"spec": {"holderIdentity": None}}, content_type=MERGE_PATCH)
        else:
            await setup.request("PATCH", path, body={"metadata": {"labels": {GROUP_LABEL: None}}},
                                content_type=MERGE_PATCH)
        c = await stack.enter_async_context(replica(api, "c", **SHARD))
        sharing_c = await stack.enter_async_context(two_open_fences({"a": a, "c": c}, KEYS))
        await eventually(lambda: c.leading or (a.member is not None and a.member.step_downs > 0), timeout=15,
                         message="c converged or a stepped down")
        await eventually(lambda: a.member is not None and (a.member.step_downs > 0 or not a.leading), timeout=15,
                         message="a lets go")
        assert sharing_c == [], f"a and c both may write: {sharing_c[:3]} ({len(sharing_c)} samples)"
    await setup.close()


# --- 3. a dead host published ready again: the writer's 409 re-plan ----------------------------------

async def _dead_host_ready_again(api: KubeAPIServer, settings: dict[str, Any], lag: float) -> list[str]:
    """One ClusterEndpoint, one port, two hosts on one slice: h1 (127.0.0.1) up, h2 (127.0.0.2) down.
    h1 goes down; a publishes it not ready. b's watches lag; a hands over gracefully; b's checks start
    from b's stale cache (h1 ready, no probe of b's yet; failureThreshold 5, so b's own probes take
    ~4 s to say so). h2 comes up: its first passing probe makes b write the slice, planned from the
    stale cache; the update 409s; the writer re-lists and re-plans from the desired state, which still
    holds h1 ready, and writes it: h1 routed again. Returns the addresses published ready after not
    ready without a passing probe in between (only h1 can be: its backend never comes back), in a
    slice or in the v1 Endpoints copy."""
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    port = free_port()
    flips: list[str] = []
    down: set[str] = set()

    def watch(rt: object, obj: Obj) -> None:
        if getattr(rt, "plural", "") == "endpoints" and obj.get("metadata", {}).get("name") == NAME:
            # the v1 Endpoints copy (older consumers read it): the same rule
            for subset in obj.get("subsets") or []:
                if any(a.get("ip") == "127.0.0.1" for a in subset.get("notReadyAddresses") or []):
                    down.add("endpoints")
                elif any(a.get("ip") == "127.0.0.1" for a in subset.get("addresses") or []) and "endpoints" in down:
                    flips.append("127.0.0.1 in the Endpoints")
            return
        if getattr(rt, "plural", "") != "endpointslices":
            return
        if (obj.get("metadata", {}).get("labels") or {}).get("kubernetes.io/service-name") != NAME:
            return
        for e in obj.get("endpoints") or []:
            address = e["addresses"][0]
            if address != "127.0.0.1":
                continue
            if e["conditions"].get("ready") is False:
                down.add(address)
            elif address in down:
                flips.append(address)

    api.store.listeners.append(watch)
    async with AsyncExitStack() as stack:
        h1 = await stack.enter_async_context(TCPBackend(port=port, host="127.0.0.1"))
        h2 = await stack.enter_async_context(TCPBackend(port=port, host="127.0.0.2", mode="closed"))
        leaving = replica(api, "a", **settings)
        a = await leaving.__aenter__()
        stopped = False
        try:
            # b starts once a leads: started together, either could win the first election
            await eventually(lambda: a.leading, timeout=15, message="a leads")
            b = await stack.enter_async_context(replica(api, "b", **settings))
            if settings.get("shard"):
                await eventually(lambda: all(c.member is not None and len(c.member.ring.members) == 2
                                             for c in (a, b)), timeout=15, message="a and b converged")
            await setup.request("POST", CLUSTERENDPOINTS.path("default"), body=cep(NAME, [
                {"name": "p", "port": 80, "targetPort": port, "hosts": ["127.0.0.1", "127.0.0.2"], "tcpSocket": {},
                 "periodSeconds": 1, "failureThreshold": 5}]))

            def published(h1_ready: bool) -> bool:
                ready = {e["addresses"][0]: e["conditions"]["ready"] for s in slices_of(api, NAME)
                         for e in s.get("endpoints") or []}
                return ready == {"127.0.0.1": h1_ready, "127.0.0.2": False}

            await eventually(lambda: published(True), timeout=20, message="h1 ready, h2 not ready")
            api.lag_watches("epctl/b", lag)
            await h1.set_mode("closed")
            await eventually(lambda: published(False), timeout=20, message="a publishes h1 not ready")
            await leaving.__aexit__(None, None, None)  # a hands over
            stopped = True
            await eventually(lambda: b.leading and b.owns(("default", NAME)), timeout=10, message="b takes over")
            await h2.set_mode("accepting")  # h2's first passing probe makes b write the slice
            await eventually(lambda: any(e["addresses"][0] == "127.0.0.2" and e["conditions"]["ready"]
                                         for s in slices_of(api, NAME) for e in s.get("endpoints") or []),
                             timeout=15, message="b publishes h2 ready")
            settled = {"127.0.0.1": False, "127.0.0.2": True}
            await eventually(lambda: {e["addresses"][0]: e["conditions"]["ready"] for s in slices_of(api, NAME)
                                      for e in s.get("endpoints") or []} == settled, timeout=15,
                             message="h1 not ready, h2 ready")
            api.lag_watches("epctl/b", 0)
        finally:
            if not stopped:
                await leaving.__aexit__(None, None, None)
    await setup.close()
    assert cep_of(api, NAME) is not None
    return flips


async def test_leader_elect_takeover_with_a_lagging_cache_publishes_a_dead_host_ready(api: KubeAPIServer) -> None:
    """Issue 22 case 4 for --leader-elect ("failover takes the same path"): the new leader does not
    wait for its caches (only a shard member waits for converged_at_rv), and the _on_slice guard acts
    only when the lagging watch delivers -- the writer's 409 re-plan from the desired state does not
    ask it."""
    flips = await _dead_host_ready_again(api, {**LEADER}, lag=3.5)
    assert flips == [], f"a dead host was published ready again: {flips}"


async def test_shard_takeover_lagging_past_the_renew_deadline_publishes_a_dead_host_ready(
        api: KubeAPIServer) -> None:
    """The same with --shard when the watch lags longer than the renew deadline: caught_up gives up
    after renew_deadline and the takeover goes on from the stale cache ("taking over from caches
    older than the handover" is only logged); the 409 re-plan then writes h1 ready."""
    flips = await _dead_host_ready_again(api, {"shard": True, "lease_duration": 3.0, "renew_deadline": 2.0,
                                               "retry_period": 0.3}, lag=6.0)
    assert flips == [], f"a dead host was published ready again: {flips}"


# --- 4. graceful handover speed against an API server that bookmarks as kube-apiserver does -----------

async def test_graceful_handover_waits_the_renew_deadline_when_bookmarks_are_as_rare_as_kube_apiservers(
        caplog: pytest.LogCaptureFixture) -> None:
    """kube-apiserver sends a watch bookmark about once a minute (the watch cache's bookmarkFrequency;
    the test server's default of 60 s; only the shared fixture uses 0.5 s), and a quiet resource's
    watch gets no event either. _follow_ownership waits for *every* informer to pass the resourceVersion
    of the Lease listing that showed convergence -- an etcd revision the Lease renewals keep moving --
    so a quiet informer (Services, Nodes, often the slices) never gets there: every takeover, even
    after a signed release, waits the full renew deadline and then goes on from the same caches anyway
    ("taking over from caches older than the handover"). Before this change a graceful handover took
    a retry period or two; now it takes renew_deadline more (10 s at default timing)."""
    timing = {"shard": True, "lease_duration": 9.0, "renew_deadline": 6.0, "retry_period": 0.3}
    async with KubeAPIServer(allow_loopback=True) as api:  # bookmarks every 60 s, as kube-apiserver
        setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
        await install_crd(setup)
        async with AsyncExitStack() as stack:
            up = await stack.enter_async_context(TCPBackend())
            a = await stack.enter_async_context(replica(api, "a", **timing))
            leaving = replica(api, "b", **timing)
            b = await leaving.__aenter__()
            stopped = False
            try:
                await eventually(lambda: all(c.member is not None and len(c.member.ring.members) == 2 and c.leading
                                             for c in (a, b)), timeout=20, message="a and b converged")
                names = [f"g-{i}" for i in range(6)]
                for name in names:
                    await setup.request("POST", CLUSTERENDPOINTS.path("default"), body=cep(name, [
                        {"name": "p", "port": 80, "targetPort": up.port, "hosts": ["127.0.0.1"], "tcpSocket": {},
                         "periodSeconds": 1}]))
                await eventually(lambda: all((cep_of(api, n) or {}).get("status", {}).get("phase") == "Healthy"
                                             for n in names), timeout=20, message="all healthy")
                theirs = {n for n in names if not a.owns(("default", n))}
                assert theirs, "b owns none of them: pick other names"
                caplog.clear()
                await leaving.__aexit__(None, None, None)  # graceful: a signed release
                stopped = True
                gone = asyncio.get_running_loop().time()
                await eventually(lambda: all(a.owns(("default", n)) for n in names), timeout=20,
                                 message="a holds b's targets")
                await eventually(lambda: {k.target.split("/", 1)[1] for k in a.scheduler.keys()} >= theirs,
                                 timeout=20, message="a probes b's targets")
                took = asyncio.get_running_loop().time() - gone
            finally:
                if not stopped:
                    await leaving.__aexit__(None, None, None)
            stale = [r.getMessage() + str(getattr(r, "informers", "")) for r in caplog.records
                     if "taking over from caches older" in r.getMessage()]
            assert stale == [] and took < timing["renew_deadline"], (
                f"graceful handover took {took:.1f} s; gave up waiting for caches: {stale}")
        await setup.close()


# --- 5. the sweep deletes a live ClusterEndpoint's slices when the ClusterEndpoint cache is behind -----

async def test_sweep_on_takeover_deletes_the_slices_of_a_live_clusterendpoint_its_cache_has_not_seen(
        api: KubeAPIServer) -> None:
    """orphans.orphaned calls a slice owned by a ClusterEndpoint orphaned when that uid is not in *this
    replica's* ClusterEndpoint cache, and _follow_ownership sweeps at once on a --leader-elect takeover
    (no wait for caches at all; with --shard only up to the renew deadline). Caches of different
    resources are not in step: here b's ClusterEndpoint watch reconnects slowly (6 s) after the API
    server dropped the watches, while its slice watch is on time. A ClusterEndpoint created meanwhile is
    published by a; a hands over gracefully; b's sweep finds slices of a uid it has not seen and deletes
    a live, valid ClusterEndpoint's slices: its Service routes nowhere until the cache catches up."""
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    async with AsyncExitStack() as stack:
        leaving = replica(api, "a", **LEADER)
        a = await leaving.__aenter__()
        stopped = False
        try:
            await eventually(lambda: a.leading, message="a leads")
            b = await stack.enter_async_context(replica(api, "b", **LEADER))
            api.inject_fault(FaultRule(user_agent="epctl/b", resource="clusterendpoints", verb="watch", code=0,
                                       delay=6.0))
            api.drop_watches()
            await setup.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("fresh", [
                {"name": "p", "port": 80, "hosts": ["127.0.0.1"]}]))
            await eventually(lambda: slices_of(api, "fresh") and any(
                (o["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == "fresh"
                for o in b.slices.cache.values()), timeout=5, message="a published fresh; b's slice cache has it")
            assert b.ceps.get("default", "fresh") is None  # the slow watch: not seen yet
            mark = len(api.request_log)
            await leaving.__aexit__(None, None, None)
            stopped = True
            await eventually(lambda: b.leading, timeout=5, message="b leads")
            await eventually(lambda: b.ceps.get("default", "fresh") is not None, timeout=15,
                             message="b's ClusterEndpoint cache catches up")
            await b.writer.flush()
            deleted = [r for r in api.request_log[mark:] if r.user_agent == "epctl/b" and r.verb == "delete"
                       and r.resource == "endpointslices" and r.code < 400]
            assert deleted == [], f"b deleted a live ClusterEndpoint's slices: {[r.name for r in deleted]}"
        finally:
            if not stopped:
                await leaving.__aexit__(None, None, None)
    await setup.close()


# --- 6. adopting a Service with a selector: the Pod slices stay when the adopter goes ---------------

async def test_pod_slices_of_an_adopted_service_stay_forever_when_the_adopting_replica_goes(
        api: KubeAPIServer) -> None:
    """Writer._deselected -- "this Service had a selector we removed" -- lives only in the memory of the
    replica that removed it. If that replica goes (an upgrade, a crash, a shard handover) after the
    selector PATCH and before the EndpointSlice controller's slices were deleted (here: its deletes
    fail with 500 for a while), no later owner ever deletes them: the Service has no selector any more,
    the sweep ignores endpointslice-controller slices, and the Pod IPs stay routable beside our hosts."""
    pods = Resource("", "v1", "pods", "Pod")

    def pod_slices() -> list[Obj]:
        return [s for s in slices_of(api, "web") if (s["metadata"].get("labels") or {}).get(
            "endpointslice.kubernetes.io/managed-by") == "endpointslice-controller.k8s.io"]

    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    await setup.request("POST", SERVICES.path("default"), body={
        "metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"name": "p", "port": 80}]}})
    pod = await setup.request("POST", pods.path("default"), body={
        "metadata": {"name": "web-0", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}})
    pod["status"] = {"podIP": "10.244.0.5", "conditions": [{"type": "Ready", "status": "True"}]}
    await setup.request("PUT", pods.path("default", "web-0", "status"), body=pod)
    await eventually(lambda: len(pod_slices()) == 1, message="the Pod slice exists")
    api.inject_fault(FaultRule(user_agent="epctl/a", verb="delete", resource="endpointslices", code=500, count=1000))
    async with TCPBackend() as up:
        body = cep("web", [{"name": "p", "port": 80, "targetPort": up.port, "hosts": ["127.0.0.1"], "tcpSocket": {}}])
        body["metadata"]["annotations"] = {"epctl.io/adopt": "true"}
        await setup.request("POST", CLUSTERENDPOINTS.path("default"), body=body)
        async with replica(api, "a"):
            await eventually(lambda: not (api.store.objects[("", "services")][("default", "web")]["spec"]
                                          .get("selector")) and len(slices_of(api, "web")) == 2, timeout=20,
                             message="a adopted the Service (selector removed) and published its slice")
            await eventually(lambda: any(r.user_agent == "epctl/a" and r.verb == "delete" and r.code == 500
                                         for r in api.request_log), message="a tried to delete the Pod slice")
        api.faults.clear()
        async with replica(api, "b"):  # the next replica (an upgrade's, a restart's, a new shard owner's)
            await eventually(lambda: not pod_slices(), timeout=15,
                             message="the Pod slice of the adopted Service is deleted by the next owner")
    await setup.close()


# --- 7. rollouts between --leader-elect and --shard ----------------------------------------------

async def test_rollout_to_shard_a_deleted_leader_lease_lets_members_take_everything_beside_the_leader(
        api: KubeAPIServer) -> None:
    """A rollout from --leader-elect to --shard: a shard member waits while the single-leader Lease has
    a live holder (ShardMember._legacy_alive). But a *deleted* leader Lease counts as no leader at all
    (legacy None), so the member converges and takes every target; the old leader re-creates its Lease
    at its next renewal (LeaderElector._try: 404 -> POST) and keeps leading, and nothing makes the
    member let go again (_legacy_alive is asked only before convergence). Two writers for every target
    until the old leader's pod is gone."""
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    async with AsyncExitStack() as stack:
        old = await stack.enter_async_context(replica(api, "old", **LEADER))
        await eventually(lambda: old.leading, message="the old single leader leads")
        new = await stack.enter_async_context(replica(api, "new", shard=True, lease_duration=3.0,
                                                      renew_deadline=2.0, retry_period=0.3))
        sharing = await stack.enter_async_context(two_open_fences({"old": old, "new": new}, KEYS))
        await eventually(lambda: new.member is not None and new.member.member, message="new joined the ring")
        assert not new.leading  # waits for the old leader, as designed
        await setup.request("DELETE", LEASES.path("default", "epctl-controller"))
        await eventually(lambda: len(api.store.objects[("coordination.k8s.io", "leases")].get(
            ("default", "epctl-controller"), {}).get("spec", {}).get("holderIdentity") or "") > 0, timeout=10,
            message="the old leader re-created its Lease")
        await eventually(lambda: old.leading, timeout=10, message="the old leader leads again")
        await asyncio.sleep(1.0)  # both keep going: sample a while (not synchronisation)
        assert not new.leading, "the shard member took targets while a single leader writes them all"
        assert sharing == [], f"the old leader and a shard member both may write: {sharing[:2]} ({len(sharing)})"
    await setup.close()

