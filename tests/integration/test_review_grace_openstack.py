"""Review 3: drained discovered servers across a restart while the cloud is down."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from epctl.kube.client import SECRETS, KubeClient
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.openstack import FakeOpenStack
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import CLUSTERENDPOINTS, cep_of, install_crd, running_controller, slices_of
from tests.integration.test_openstack import FAST, cloud, discovering, os_secret  # noqa: F401


def published(api: KubeAPIServer) -> dict[str, tuple[bool, bool, bool]]:
    return {e["addresses"][0]: (e["conditions"]["ready"], e["conditions"]["serving"], e["conditions"]["terminating"])
            for s in slices_of(api, "db") for e in s["endpoints"]}


def matched(api: KubeAPIServer) -> list[Any]:
    return [(h["host"], h["matched"]) for h in ((cep_of(api, "db") or {}).get("status") or {}).get("drainingHosts")
            or []]


@pytest.mark.parametrize("grace", [0.0, 1.0])
async def test_a_drained_server_stays_drained_across_a_restart_with_the_cloud_down(
        api: KubeAPIServer, client: KubeClient, cloud: FakeOpenStack, grace: float) -> None:  # noqa: F811
    await install_crd(client)
    cloud.add_server("db-1", fixed=["10.0.0.1"])
    cloud.add_server("db-2", fixed=["10.0.0.2"])
    await client.request("POST", SECRETS.path("default"), body=os_secret(cloud))
    drained = {"10.0.0.1": (True, True, False), "10.0.0.2": (False, True, True)}
    async with running_controller(api, client, terminating_grace=grace, **FAST):
        body = discovering("db", nameRegex="^db-")
        body["metadata"]["annotations"] = {"epctl.io/drain": "db-2"}
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=body)
        await eventually(lambda: published(api) == drained, message="drained")
        await eventually(lambda: matched(api) == [("db-2", True)], message="matched")
    cloud.fail_next(10_000)
    async with running_controller(api, client, terminating_grace=grace, **FAST) as controller:
        await eventually(lambda: ("default", "db") in controller.state.targets, message="held again")
        assert await controller.writer.flush(10.0)
        await asyncio.sleep(grace + 1.5)  # a window in which nothing may change (a grace would end in it)
        assert await controller.writer.flush(10.0)
        await controller.status.flush()
        # the server is still there and still drained: the cloud is only unreachable
        assert published(api) == drained
        assert matched(api) == [("db-2", True)]
