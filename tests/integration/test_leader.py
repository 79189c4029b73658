"""Leader election: two controllers, one writer; failover on SIGKILL, on SIGTERM, on a partition."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from contextlib import AbstractAsyncContextManager
from typing import Any

from epctl.app import Controller
from epctl.kube.client import KubeClient
from epctl.testing.backends import TCPBackend
from epctl.testing.kubeapi import FaultRule, KubeAPIServer
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import CLUSTERENDPOINTS, cep, cep_of, install_crd, named_replica, slices_of

TIMING = {"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.3}
WRITES = ("create", "update", "patch", "delete")


def replica(api: KubeAPIServer, name: str, **timing: float) -> AbstractAsyncContextManager[Controller]:
    return named_replica(api, name, leader_elect=True, **{**TIMING, **timing})


def writers(api: KubeAPIServer, since: int = 0) -> list[tuple[float, str]]:
    """(time, replica) of every successful write a replica made (lease writes excluded)."""
    return [(r.time, r.user_agent) for r in api.request_log[since:]
            if r.verb in WRITES and r.code < 400 and r.user_agent.startswith("epctl/") and r.resource != "leases"]


async def add_cep(api: KubeAPIServer, setup: KubeClient, name: str) -> None:
    await setup.request("POST", CLUSTERENDPOINTS.path("default"), body=cep(name, [
        {"name": "p", "port": 80, "hosts": ["127.0.0.1"]}]))
    await eventually(lambda: slices_of(api, name), timeout=15, message=f"{name} written by the leader")


async def test_one_leader_writes_and_graceful_stop_hands_over_at_once(api: KubeAPIServer) -> None:
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    first = replica(api, "a")
    a = await first.__aenter__()
    try:
        await eventually(lambda: a.leading, message="a leads")
        async with replica(api, "b") as b:
            await add_cep(api, setup, "one")
            assert not b.leading
            assert {ua for _, ua in writers(api)} == {"epctl/a"}  # the standby wrote nothing
            await first.__aexit__(None, None, None)  # SIGTERM path: flush, then release the Lease
            stopped = time.monotonic()
            await eventually(lambda: b.leading, timeout=5, message="standby takes over after a release")
            assert time.monotonic() - stopped < 2 * TIMING["retry_period"] + 1.0  # not the lease duration
            mark = len(api.request_log)
            await add_cep(api, setup, "two")
            assert {ua for _, ua in writers(api, mark)} == {"epctl/b"}
    finally:
        if not stopped:
            await first.__aexit__(None, None, None)
        await setup.close()


async def test_partitioned_leader_steps_down_before_the_lease_expires(api: KubeAPIServer) -> None:
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    async with replica(api, "a") as a:
        await eventually(lambda: a.leading, message="a leads")
        async with replica(api, "b") as b:
            await add_cep(api, setup, "one")
            api.inject_fault(FaultRule(user_agent="epctl/a", code=503, count=10**6))
            partitioned = time.monotonic()
            await eventually(lambda: not a.leading, timeout=10, message="a steps down")
            stepped_down = time.monotonic() - partitioned
            await eventually(lambda: b.leading, timeout=10, message="b takes over")
            took_over = time.monotonic() - partitioned
            assert stepped_down < TIMING["lease_duration"] <= took_over + TIMING["retry_period"]
            a_writes = [t for t, ua in writers(api) if ua == "epctl/a"]
            b_writes = [t for t, ua in writers(api) if ua == "epctl/b"]
            assert not b_writes or not a_writes or max(a_writes) < min(b_writes)  # never two writers
            api.faults.clear()
            mark = len(api.request_log)
            await add_cep(api, setup, "two")
            assert {ua for _, ua in writers(api, mark)} == {"epctl/b"}
    await setup.close()


async def test_killed_leader_process_is_replaced_within_the_lease_duration(api: KubeAPIServer) -> None:
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    args = ["--leader-elect", "--leader-election-namespace", "default", "--lease-duration", "3",
            "--renew-deadline", "2", "--retry-period", "0.3", "--metrics-addr", "", "--allow-loopback-hosts"]
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "epctl.cli", "controller", "--kubeconfig",
                                                api.kubeconfig_path, *args, stderr=asyncio.subprocess.DEVNULL,
                                                env={**os.environ, "NO_PROXY": "*"})
    try:
        await eventually(lambda: any(r.resource == "leases" and r.verb == "create" and r.code == 201
                                     for r in api.request_log), timeout=20, message="process leads")
        async with replica(api, "b") as b:
            await add_cep(api, setup, "one")
            assert not b.leading
            proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await eventually(lambda: b.leading, timeout=15, message="b takes over")
            assert time.monotonic() - killed < TIMING["lease_duration"] + 2 * TIMING["retry_period"] + 1.0
            mark = len(api.request_log)
            await add_cep(api, setup, "two")
            assert {ua for _, ua in writers(api, mark)} == {"epctl/b"}
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await setup.close()


def test_settings_are_validated() -> None:
    from epctl.kube.lease import LeaderElector

    try:
        LeaderElector(Any, "ns", lease_duration=5, renew_deadline=6, retry_period=1)  # type: ignore[arg-type]
    except ValueError:
        return
    raise AssertionError("renew deadline above the lease duration must be refused")


async def test_step_down_counts_from_when_the_last_renewal_was_sent(api: KubeAPIServer) -> None:
    """A partition that makes requests hang (not fail fast): the leader still steps down at
    renew_deadline after its last renewal reached the server, well before a standby may take over."""
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    timing = {"lease_duration": 4.0, "renew_deadline": 2.0, "retry_period": 1.0}
    async with replica(api, "slow", **timing) as controller:
        await eventually(lambda: controller.leading, message="leads")
        mark = len(api.request_log)
        await eventually(lambda: any(r.resource == "leases" and r.verb == "update" for r in api.request_log[mark:]),
                         message="a renewal")
        api.inject_fault(FaultRule(user_agent="epctl/slow", code=503, delay=30.0, count=10**6))
        await eventually(lambda: not controller.leading, timeout=10, message="steps down")
        stepped_down = time.monotonic()
        last_renewal = max(r.time for r in api.request_log
                           if r.resource == "leases" and r.verb == "update" and r.code == 200)
        assert stepped_down - last_renewal < timing["renew_deadline"] + 0.5 < timing["lease_duration"]
        api.faults.clear()
    await setup.close()


async def test_a_slow_api_server_does_not_cost_the_leader_its_lease(api: KubeAPIServer) -> None:
    """Lease requests answered in 0.6 s, twice the retry period (an API server busy with a cold
    start's writes): an attempt may take until the renew deadline, as client-go's does, so the
    leader keeps renewing and never steps down. (Bounded by the retry period, every attempt timed
    out and the leader stepped down over and over: found by benchmarks/shards.py.)"""
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    async with replica(api, "busy", lease_duration=6.0, renew_deadline=4.0, retry_period=0.3) as controller:
        await eventually(lambda: controller.leading, message="leads")
        api.inject_fault(FaultRule(user_agent="epctl/busy", resource="leases", code=0, delay=0.6, count=10**6))
        mark = len(api.request_log)
        await eventually(lambda: sum(r.resource == "leases" and r.verb == "update" and r.code == 200
                                     for r in api.request_log[mark:]) >= 4, timeout=20, message="four slow renewals")
        assert controller.elector is not None and controller.elector.step_downs == 0
        assert controller.leading
        api.faults.clear()
    await setup.close()


async def test_a_handover_writes_nothing_when_nothing_changed(api: KubeAPIServer) -> None:
    """Found by the fuzzer: the standby had adopted the status conditions once, when it first saw the
    ClusterEndpoint ("not written yet"); on taking over it republished that, then flipped it back."""
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    first = replica(api, "a")
    a = await first.__aenter__()
    stopped = False
    try:
        await eventually(lambda: a.leading, message="a leads")
        async with replica(api, "b") as b, TCPBackend() as db:  # b meets it before a has written its status
            await setup.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("one", [
                {"name": "p", "port": 80, "targetPort": db.port, "hosts": ["127.0.0.1"], "tcpSocket": {},
                 "periodSeconds": 1}]))
            await eventually(lambda: ((cep_of(api, "one") or {}).get("status") or {}).get("phase") == "Healthy",
                             message="status written by a")
            await a.writer.flush()
            await a.status.flush()
            stopped = True
            await first.__aexit__(None, None, None)  # graceful: a releases, b takes over
            mark = len(api.request_log)
            await eventually(lambda: b.leading, message="b takes over")
            check = next(iter(b.scheduler.keys()), None)
            if check is not None:
                runs = b.scheduler.state(check).runs  # type: ignore[union-attr]
                await eventually(lambda: b.scheduler.state(check).runs >= runs + 2,  # type: ignore[union-attr]
                                 message="b probed")
            await b.writer.flush()
            await b.status.flush()
            assert [(r.verb, r.resource) for r in api.writes(since=mark) if r.resource not in ("leases", "events")] \
                == [], "the new leader rewrote what had not changed"
    finally:
        if not stopped:
            await first.__aexit__(None, None, None)
        await setup.close()
