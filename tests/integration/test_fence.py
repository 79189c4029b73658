"""The write fence (epctl.shard.fence): asked at the moment of sending, by every writer."""

from __future__ import annotations

import math

from epctl.kube.client import CONFIGMAPS, Fenced, KubeClient
from epctl.shard.fence import Fence
from epctl.testing.backends import TCPBackend
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import CLUSTERENDPOINTS, cep, cep_of, install_crd, running_controller


async def test_a_closed_fence_sends_nothing(api: KubeAPIServer) -> None:
    client = await KubeClient.connect(api.kubeconfig_path)
    mark = len(api.request_log)
    try:
        await client.request("POST", CONFIGMAPS.path("default"), body={"metadata": {"name": "x"}}, fence=lambda: 0.0)
        raise AssertionError("sent")
    except Fenced:
        pass
    assert api.request_log[mark:] == []
    await client.request("POST", CONFIGMAPS.path("default"), body={"metadata": {"name": "x"}}, fence=lambda: 5.0)
    assert [r.verb for r in api.request_log[mark:]] == ["create"]
    await client.close()


async def test_writes_refused_while_the_claim_lapsed_go_out_once_it_is_renewed(api: KubeAPIServer) -> None:
    """A claim can lapse and come back without a step-down (a renewal that lands just after the
    deadline, a leader whose Lease nobody took): what the fence refused meanwhile is written then,
    not lost."""
    client = await KubeClient.connect(api.kubeconfig_path)
    await install_crd(client)
    async with TCPBackend() as up, running_controller(api, client) as controller:
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("svc", [
            {"name": "p", "port": 80, "targetPort": up.port, "hosts": ["127.0.0.1"], "tcpSocket": {},
             "periodSeconds": 1, "failureThreshold": 1}]))
        await eventually(lambda: (cep_of(api, "svc") or {}).get("status", {}).get("phase") == "Healthy",
                         message="published healthy")
        await controller.writer.wait_idle(10)  # the first publication's writes (Endpoints too) are done
        await controller.status.flush()
        until = [0.0]  # lapsed
        fences = {name: Fence(controller.owns, lambda: until[0]) for name in ("writer", "status", "events")}
        controller.writer.fence, controller.status.fence = fences["writer"], fences["status"]
        controller.events.fence = fences["events"]
        mark = len(api.request_log)
        await up.set_mode("closed")
        await eventually(lambda: fences["writer"].refused >= 1 and fences["status"].refused >= 1
                         and not controller.writer._in_flight and controller.status.in_flight() == 0,
                         message="the lapsed fence refused the slice and the status write, nothing in flight")
        assert [r for r in api.writes(since=mark) if r.resource != "leases"] == []
        until[0] = math.inf  # renewed
        await eventually(lambda: (cep_of(api, "svc") or {}).get("status", {}).get("phase") == "Unhealthy",
                         timeout=15, message="the flip is written after all")
    await client.close()
