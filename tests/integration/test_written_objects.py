"""What epctl writes passes kube-apiserver's validation as the test API server enforces it (Lease
specs, core/v1 Events); each test fails if epctl wrote what the real server refuses."""

from __future__ import annotations

import asyncio

from epctl.kube.client import EVENTS, LEASES, KubeClient
from epctl.kube.events import EventRecorder
from epctl.kube.lease import LeaderElector
from epctl.tasks import cancel_and_wait
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.waiting import eventually


async def test_a_sub_second_lease_duration_is_written_as_a_valid_whole_second(api: KubeAPIServer,
                                                                              client: KubeClient) -> None:
    """leaseDurationSeconds must be above 0 (ValidateLeaseSpec); int(0.8) was 0, and rounding down
    would let a standby take over before the holder's own deadline."""
    elector = LeaderElector(client, "default", "short", lease_duration=1.5, renew_deadline=0.8, retry_period=0.1)
    started = asyncio.Event()

    async def on_started() -> None:
        started.set()

    async def on_stopped() -> None:
        pass

    task = asyncio.create_task(elector.run(on_started, on_stopped))
    try:
        await asyncio.wait_for(started.wait(), 10)
        lease = await client.request("GET", LEASES.path("default", "short"))
        assert lease["spec"]["leaseDurationSeconds"] == 2  # rounded up, never down
    finally:
        await cancel_and_wait(task)
    tiny = LeaderElector(client, "default", "tiny", lease_duration=0.6, renew_deadline=0.4, retry_period=0.1)
    task = asyncio.create_task(tiny.run(on_started, on_stopped))
    try:
        await eventually(lambda: tiny.is_leader, message="a 0.6 s Lease is accepted (as 1 s)")
    finally:
        await cancel_and_wait(task)


async def test_recorded_events_pass_event_validation(api: KubeAPIServer, client: KubeClient) -> None:
    recorder = EventRecorder(client)
    recorder.start()
    try:
        for namespace in ("default", "kube-system"):
            recorder.record({"apiVersion": "epctl.io/v1beta1", "kind": "ClusterEndpoint",
                             "metadata": {"name": "db", "namespace": namespace, "uid": f"u-{namespace}"}},
                            "Warning", "ProbeFailed", "x" * 5000)
        await recorder.drain()
    finally:
        await recorder.stop()
    events = (await client.request("GET", EVENTS.path(None)))["items"]
    assert sorted(e["metadata"]["namespace"] for e in events) == ["default", "kube-system"]
    assert all(e["involvedObject"]["namespace"] == e["metadata"]["namespace"] for e in events)
