"""The discovery sidecar against the test API server, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from epctl.kube.backoff import Backoff
from epctl.kube.client import ENDPOINTSLICES, KubeClient
from epctl.sidecar import Sidecar
from epctl.testing.backends import free_port
from epctl.testing.kubeapi import FaultRule, KubeAPIServer
from epctl.testing.waiting import eventually


def slice_body(name: str, service: str, ips: dict[str, bool]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": r}} for ip, r in ips.items()]}


@pytest.fixture
async def sidecar(client: KubeClient) -> AsyncIterator[tuple[Sidecar, str]]:
    side = Sidecar(client, "default", "web", health_grace=0.3)
    side.informer.backoff = Backoff(0.05, 0.2)
    port = await side.start("127.0.0.1", 0)
    yield side, f"http://127.0.0.1:{port}"
    await side.stop()


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, CIMultiDict[str]]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers or {},
                                                                allow_redirects=False) as response:
        body = await response.json() if response.status != 304 else None
        return response.status, body, CIMultiDict(response.headers)


async def test_before_sync_503_then_data(api: KubeAPIServer, client: KubeClient) -> None:
    await client.request("POST", ENDPOINTSLICES.path("default"), body=slice_body("web-1", "web", {"10.0.0.1": True}))
    block = api.inject_fault(FaultRule(verb="list", resource="endpointslices", code=500, count=10**6))
    side = Sidecar(client, "default", "web")
    side.informer.backoff = Backoff(0.05, 0.2)
    base = f"http://127.0.0.1:{await side.start('127.0.0.1', 0)}"
    try:
        status, body, _ = await get(f"{base}/endpoints")
        assert status == 503 and body["error"] == "endpoints not synced yet"
        assert (await get(f"{base}/health"))[0] == 503
        api.faults.remove(block)
        status, body, _ = await eventually(_ok(f"{base}/endpoints"), message="synced")
        assert body["subsets"][0]["addresses"] == [{"ip": "10.0.0.1"}]
    finally:
        await side.stop()


def _ok(url: str, headers: dict[str, str] | None = None) -> Any:
    async def check() -> Any:
        result = await get(url, headers)
        return result if result[0] == 200 else None
    return check


async def test_endpoints_shape_changes_etag_and_paths(api: KubeAPIServer, client: KubeClient,
                                                      sidecar: tuple[Sidecar, str]) -> None:
    _, base = sidecar
    status, body, headers = await eventually(_ok(f"{base}/endpoints"), message="synced, no endpoints yet")
    assert body["subsets"] == [] and headers["ETag"]
    await client.request("POST", ENDPOINTSLICES.path("default"),
                         body=slice_body("web-1", "web", {"10.0.0.2": True, "10.0.0.3": False}))
    await client.request("POST", ENDPOINTSLICES.path("default"), body=slice_body("other", "db", {"10.9.9.9": True}))
    changed = time.monotonic()

    async def has_endpoints() -> Any:
        result = await get(f"{base}/endpoints/")  # trailing slash: same answer, no redirect
        return result if result[0] == 200 and result[1]["subsets"] else None

    status, body, headers = await eventually(has_endpoints, message="slice visible")
    assert time.monotonic() - changed < 1.0
    assert body["subsets"] == [{"addresses": [{"ip": "10.0.0.2"}], "notReadyAddresses": [{"ip": "10.0.0.3"}],
                                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]
    etag = headers["ETag"]
    assert (await get(f"{base}/endpoints", {"If-None-Match": etag}))[0] == 304
    status, listed, _ = await get(f"{base}/endpointslices")
    assert status == 200 and [s["metadata"]["name"] for s in listed["items"]] == ["web-1"]
    status, updated, _ = await get(f"{base}/endpoints/last_updated")
    assert status == 200 and updated["lastUpdated"].endswith("Z")


async def test_long_poll_wakes_on_change_and_times_out_cleanly(api: KubeAPIServer, client: KubeClient,
                                                               sidecar: tuple[Sidecar, str]) -> None:
    side, base = sidecar
    _, _, headers = await eventually(_ok(f"{base}/endpoints"), message="synced")
    etag = headers["ETag"]
    start = time.monotonic()
    assert (await get(f"{base}/endpoints?wait=0.5", {"If-None-Match": etag}))[0] == 304
    assert 0.5 <= time.monotonic() - start < 2.0
    waiter = asyncio.create_task(get(f"{base}/endpoints?wait=30", {"If-None-Match": etag}))
    await eventually(lambda: side._changed._waiters, message="long-poll waiting")  # type: ignore[attr-defined]
    start = time.monotonic()
    await client.request("POST", ENDPOINTSLICES.path("default"), body=slice_body("web-1", "web", {"10.0.0.7": True}))
    status, body, headers = await asyncio.wait_for(waiter, 10)
    assert status == 200 and body["subsets"][0]["addresses"] == [{"ip": "10.0.0.7"}] and headers["ETag"] != etag
    assert time.monotonic() - start < 2.0
    assert (await get(f"{base}/endpoints?wait=soon"))[0] == 400


async def test_health_follows_the_watch(api: KubeAPIServer, client: KubeClient, sidecar: tuple[Sidecar, str]) -> None:
    side, base = sidecar
    await eventually(lambda: side.informer.watching, message="watching")
    assert (await get(f"{base}/health"))[1] == {"status": "ok"}
    block = api.inject_fault(FaultRule(verb="watch", resource="endpointslices", code=503, count=10**6))
    api.drop_watches()

    async def down() -> bool:
        status, body, _ = await get(f"{base}/health")
        return status == 503 and body["reason"] == "watch is down"

    await eventually(down, message="health reports the broken watch")
    api.faults.remove(block)

    async def up() -> bool:
        return (await get(f"{base}/health"))[0] == 200

    await eventually(up, message="health recovers")


async def test_sidecar_command_with_seed_environment(api: KubeAPIServer, client: KubeClient) -> None:
    await client.request("POST", ENDPOINTSLICES.path("default"), body=slice_body("api-1", "api", {"10.1.1.1": True}))
    port = free_port()
    env = {**os.environ, "KUBERNETES_POD_DISCOVERY_SERVICE_NAME": "api", "KUBERNETES_POD_DISCOVERY_NAMESPACE":
           "default", "KUBERNETES_POD_DISCOVERY_LISTEN_PORT": str(port), "NO_PROXY": "*"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "epctl.cli", "sidecar", "--kubeconfig",
                                                api.kubeconfig_path, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        _, body, _ = await eventually(_ok(f"http://127.0.0.1:{port}/endpoints"), timeout=20,
                                           message="sidecar process serves")
        assert body["subsets"][0]["addresses"] == [{"ip": "10.1.1.1"}]
        assert (await get(f"http://127.0.0.1:{port}/health"))[0] == 200
    finally:
        proc.terminate()
        await proc.wait()


async def test_a_relist_never_serves_a_half_updated_state(
        api: KubeAPIServer, client: KubeClient, sidecar: tuple[Sidecar, str]) -> None:
    """Slices replaced while the watch was down arrive in one relist, one object at a time: what the
    sidecar serves (and wakes long-polls with) goes from the old state straight to the new one, never
    through the empty state between the old slice's deletion and the new one's addition."""
    side, base = sidecar
    await client.request("POST", ENDPOINTSLICES.path("default"), body=slice_body("web-1", "web", {"10.0.0.1": True}))
    await eventually(_ok(f"{base}/endpoints"), message="first state")
    served: list[Any] = []
    side.informer.subscribe(lambda _event: served.append(json.loads(side.body)["subsets"]))  # after the sidecar's
    side.informer.on_synced(lambda: served.append(json.loads(side.body)["subsets"]))
    # stall_watches silences open watches only: wait for the informer's watch to be open (after its list)
    await eventually(lambda: any(w.storage_key[1] == "endpointslices" for w in api.store.watchers),
                     message="the sidecar's watch is open")
    api.stall_watches()
    await client.request("DELETE", ENDPOINTSLICES.path("default", "web-1"))
    await client.request("POST", ENDPOINTSLICES.path("default"), body=slice_body("web-2", "web", {"10.0.0.2": True}))
    api.compact()
    api.drop_watches()
    await eventually(lambda: served and served[-1] and served[-1][0]["addresses"] == [{"ip": "10.0.0.2"}],
                     message="the new state")
    assert all(subsets for subsets in served), f"an empty state was served during the relist: {served}"
