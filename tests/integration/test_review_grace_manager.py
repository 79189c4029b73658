"""Review 3: epctl manager and the grace across a restart."""

from __future__ import annotations

import asyncio
from typing import Any

from epctl.kube.client import SERVICES, KubeClient
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.openstack import FakeOpenStack
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import slices_of


def published(api: KubeAPIServer) -> dict[str, tuple[bool, bool, bool]]:
    return {e["addresses"][0]: (e["conditions"]["ready"], e["conditions"]["serving"], e["conditions"]["terminating"])
            for s in slices_of(api, "legacy-db") for e in s["endpoints"]
            if s["metadata"]["labels"].get("endpointslice.kubernetes.io/managed-by") == "controller.epctl.io"}


def manager_for(client: KubeClient, cloud: FakeOpenStack, **extra: Any) -> Any:
    from epctl.sources.manager import Manager, ManagerSettings, seed_query
    from epctl.sources.openstack_auth import credentials_from_env
    settings = ManagerSettings(namespace="default", service="legacy-db", sync_period=0.3, metrics_addr=None,
                               openstack_retry_base=0.2, **extra)
    seed_query(settings)
    credentials = credentials_from_env({"OS_AUTH_URL": cloud.auth_url, "OS_USERNAME": "demo",
                                        "OS_PASSWORD": cloud.credentials.password, "OS_PROJECT": "demo"})
    return Manager(client, settings, credentials)


async def test_manager_restart_gives_a_server_gone_meanwhile_its_grace_and_then_idles(
        api: KubeAPIServer, client: KubeClient) -> None:
    async with FakeOpenStack() as cloud:
        cloud.add_server("db-1", fixed=["10.0.0.1"])
        cloud.add_server("db-2", fixed=["10.0.0.2"])
        await client.request("POST", SERVICES.path("default"), body={
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "legacy-db"},
            "spec": {"ports": [{"name": "pg", "port": 5432}]}})
        manager = manager_for(client, cloud, terminating_grace=1.5)
        await manager.start()
        try:
            await eventually(lambda: published(api) == {"10.0.0.1": (True, True, False),
                                                        "10.0.0.2": (True, True, False)}, timeout=20, message="pub")
        finally:
            await manager.stop()
        cloud.remove_server("db-2")
        manager = manager_for(client, cloud, terminating_grace=1.5)
        await manager.start()
        try:
            await eventually(lambda: published(api).get("10.0.0.2") == (False, True, True), timeout=10,
                             message="leaving")
            await eventually(lambda: published(api) == {"10.0.0.1": (True, True, False)}, timeout=10, message="gone")
            # now the last server goes, live: it leaves with its grace too
            cloud.remove_server("db-1")
            await eventually(lambda: published(api).get("10.0.0.1") == (False, True, True), timeout=10,
                             message="last leaving")
            await eventually(lambda: published(api) == {}, timeout=10, message="all gone")
            assert await manager.writer.flush(10.0)
            mark = len(api.request_log)
            await asyncio.sleep(2.0)  # a measurement window, not synchronisation: nothing may be written in it
            assert [(r.verb, r.resource, r.name) for r in api.writes(since=mark)] == []
        finally:
            await manager.stop()
