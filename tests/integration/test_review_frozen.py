"""Review of the frozen caches (epctl.kube.frozen) and what was built on them: reproductions."""

from __future__ import annotations

from typing import Any

from epctl.kube.backoff import Backoff
from epctl.kube.client import CONFIGMAPS, KubeClient
from epctl.kube.informer import Informer
from epctl.testing.backends import TCPBackend, free_port
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import (
    CLUSTERENDPOINTS,
    cep,
    endpoints_of,
    install_crd,
    running_controller,
)


async def test_queued_events_each_hold_a_fresh_decoded_copy_of_the_clusterendpoint(
        api: KubeAPIServer, client: KubeClient) -> None:
    """Before the change every Event queued about a ClusterEndpoint referenced the one cached dict
    (entry.obj). Now entry.obj decodes the frozen record on every read, and EventRecorder.record keeps
    the whole object it is given until the Event is written: a burst of transitions (an outage, exactly
    when Events wait behind routing and status writes) queues one full copy of the ClusterEndpoint,
    spec and status, per Event (up to 10,000 queued). The recorder only needs apiVersion, kind and
    name/namespace/uid/resourceVersion."""
    await install_crd(client)
    port = free_port()
    hosts = [f"127.0.0.{i}" for i in range(1, 5)]
    backends = [await TCPBackend(port, host=h).start() for h in hosts]
    try:
        async with running_controller(api, client) as controller:
            await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("burst", [
                {"name": "db", "port": 5432, "targetPort": port, "hosts": hosts, "tcpSocket": {},
                 "periodSeconds": 1, "failureThreshold": 1}]))
            await eventually(lambda: endpoints_of(api, "burst") == {("db", h): True for h in hosts},
                             timeout=20, message="all hosts ready")
            await controller.events.drain(10)
            await controller.events.stop()  # Events now wait in the queue, as behind a busy writer
            for backend in backends:
                await backend.set_mode("closed")
            queue: Any = controller.events._queue
            await eventually(lambda: queue.qsize() >= len(hosts), timeout=20, message="one Event per host queued")
            involved = [item[0] for item in list(queue._queue)]
            assert all(i["metadata"]["name"] == "burst" for i in involved)
            full_copies = {id(i) for i in involved if "spec" in i or "status" in i}
            assert len(full_copies) <= 1, (
                f"{len(full_copies)} separate full copies of the ClusterEndpoint held by {len(involved)} queued Events")
    finally:
        for backend in backends:
            await backend.stop()


async def test_a_lone_surrogate_becomes_u_fffd_as_in_kube_apiserver_and_no_cache_wedges(
        api: KubeAPIServer, client: KubeClient) -> None:
    """The review found that a string with a lone surrogate (JSON "\\ud800") stopped a frozen informer
    for good: strict UTF-8 encoding raised, the informer relisted, the relist failed at the same object.
    kube-apiserver decodes JSON as Go does and stores U+FFFD for it, so it cannot reach a cache from a
    real server; the server here now does the same (a pair still decodes to its character), and the
    frozen cache encodes with surrogatepass anyway (tests/unit/test_frozen.py)."""
    inf = Informer(client, CONFIGMAPS, "default", frozen=True, backoff=Backoff(0.02, 0.1))
    inf.start()
    try:
        await inf.wait_synced(10)
        created = await client.request("POST", CONFIGMAPS.path("default"), body=b'{"metadata": {"name": "a-odd"}, '
                                       b'"data": {"v": "x\\ud800y", "pair": "\\ud83d\\ude00"}}')
        assert created["data"] == {"v": "x\ufffdy", "pair": "\U0001f600"}
        await client.request("POST", CONFIGMAPS.path("default"), body={"metadata": {"name": "z-good"},
                                                                       "data": {"v": "1"}})
        await eventually(lambda: inf.get("default", "z-good") is not None, timeout=10,
                         message="a later object reaches the cache")
        assert inf.get("default", "a-odd")["data"] == created["data"]  # type: ignore[index]
    finally:
        await inf.stop()
