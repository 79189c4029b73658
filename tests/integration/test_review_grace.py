"""Review 3: grace across takeover, drainingHosts since, takeover status."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from epctl.kube.client import MERGE_PATCH, KubeClient
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import (
    CLUSTERENDPOINTS,
    cep,
    cep_of,
    install_crd,
    running_controller,
    slices_of,
)


def conditions_of(api: KubeAPIServer, service: str) -> dict[str, tuple[bool, bool, bool]]:
    return {e["addresses"][0]: (e["conditions"]["ready"], e["conditions"]["serving"], e["conditions"]["terminating"])
            for s in slices_of(api, service) for e in s["endpoints"]}


def by_port(api: KubeAPIServer, service: str) -> dict[tuple[str, str], tuple[bool, bool, bool]]:
    return {(s["ports"][0]["name"], e["addresses"][0]):
            (e["conditions"]["ready"], e["conditions"]["serving"], e["conditions"]["terminating"])
            for s in slices_of(api, service) for e in s["endpoints"]}


async def put_spec(client: KubeClient, name: str, ports: list[dict[str, Any]]) -> None:
    current = await client.request("GET", CLUSTERENDPOINTS.path("default", name))
    current["spec"]["ports"] = ports
    await client.request("PUT", CLUSTERENDPOINTS.path("default", name), body=current)


def since_of(api: KubeAPIServer, name: str) -> str | None:
    hosts = ((cep_of(api, name) or {}).get("status") or {}).get("drainingHosts") or []
    return hosts[0].get("since") if hosts else None


async def test_a_host_undrained_and_drained_again_gets_a_new_since(api: KubeAPIServer, client: KubeClient) -> None:
    """The drain began again at the second annotate: since must move (the Draining Event says so too)."""
    await install_crd(client)
    body = cep("db", [{"name": "pg", "port": 5432, "hosts": ["10.0.0.1", "10.0.0.2"]}])
    body["metadata"]["annotations"] = {"epctl.io/drain": "10.0.0.2"}
    await client.request("POST", CLUSTERENDPOINTS.path("default"), body=body)
    path = CLUSTERENDPOINTS.path("default", "db")
    async with running_controller(api, client) as controller:
        first = await eventually(lambda: since_of(api, "db"), message="draining since")
        await eventually(lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) > first, message="later second")
        await client.request("PATCH", path, content_type=MERGE_PATCH,
                             body={"metadata": {"annotations": {"epctl.io/drain": None}}})
        await client.request("PATCH", path, content_type=MERGE_PATCH,
                             body={"metadata": {"annotations": {"epctl.io/drain": "10.0.0.2"}}})
        await eventually(lambda: (since := since_of(api, "db")) is not None and since > first, message="a new since")
        await controller.status.flush()


async def test_takeover_then_idle_writes_nothing_after_the_grace(api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    ports = [{"name": "pg", "port": 5432, "hosts": ["10.0.0.1", "10.0.0.2"]}]
    await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("pg", ports))
    async with running_controller(api, client):
        await eventually(lambda: set(conditions_of(api, "pg")) == {"10.0.0.1", "10.0.0.2"}, message="published")
        await eventually(lambda: ((cep_of(api, "pg") or {}).get("status") or {}).get("total") == 2, message="st")
    await put_spec(client, "pg", [{**ports[0], "hosts": ["10.0.0.1"]}])
    async with running_controller(api, client, terminating_grace=1.0) as controller:
        await eventually(lambda: conditions_of(api, "pg").get("10.0.0.2") == (False, True, True), message="leaving")
        await eventually(lambda: conditions_of(api, "pg") == {"10.0.0.1": (True, True, False)}, message="gone")
        await eventually(lambda: ((cep_of(api, "pg") or {}).get("status") or {}).get("draining") == 0, message="st")
        assert await controller.writer.flush(10.0)
        await controller.status.flush()
        mark = len(api.request_log)
        await asyncio.sleep(2.0)  # a measurement window, not synchronisation: nothing may be written in it
        assert [(r.verb, r.resource, r.name) for r in api.writes(since=mark)] == []


async def test_a_port_removed_while_no_controller_ran_leaves_at_once(api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    ports = [{"name": "pg", "port": 5432, "hosts": ["10.0.0.1"]},
             {"name": "web", "port": 80, "hosts": ["10.0.0.1", "10.0.0.2"]}]
    await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("pg", ports))
    async with running_controller(api, client):
        await eventually(lambda: len(by_port(api, "pg")) == 3, message="published")
    await put_spec(client, "pg", ports[:1])
    async with running_controller(api, client, terminating_grace=30) as controller:
        await eventually(lambda: ("default", "pg") in controller.state.targets, message="held")
        assert await controller.writer.flush(10.0)
        assert by_port(api, "pg") == {("pg", "10.0.0.1"): (True, True, False)}


async def test_the_last_ipv6_host_removed_while_no_controller_ran_leaves_with_its_grace(
        api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    ports = [{"name": "pg", "port": 5432, "hosts": ["10.0.0.1", "fd00::1"]}]
    await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("pg", ports))
    async with running_controller(api, client):
        await eventually(lambda: set(conditions_of(api, "pg")) == {"10.0.0.1", "fd00::1"}, message="published")
    await put_spec(client, "pg", [{**ports[0], "hosts": ["10.0.0.1"]}])
    async with running_controller(api, client, terminating_grace=30) as controller:
        await eventually(lambda: ("default", "pg") in controller.state.targets, message="held")
        assert await controller.writer.flush(10.0)
        assert conditions_of(api, "pg") == {"10.0.0.1": (True, True, False), "fd00::1": (False, True, True)}


async def test_a_host_re_added_within_the_resumed_grace_is_ready_again(api: KubeAPIServer,
                                                                         client: KubeClient) -> None:
    from epctl.testing.backends import TCPBackend
    from tests.integration.test_drain import edit_hosts, second_host_leaving

    await install_crd(client)
    async with TCPBackend() as db, TCPBackend(db.port, host="127.0.0.2"):
        async with running_controller(api, client, terminating_grace=600):
            await second_host_leaving(api, client, db.port)
        async with running_controller(api, client, terminating_grace=600) as controller:
            await eventually(lambda: ("default", "pg") in controller.state.leaving, message="leaving again")
            await edit_hosts(client, "pg", ["127.0.0.1", "127.0.0.2"])
            await eventually(lambda: conditions_of(api, "pg") == {"127.0.0.1": (True, True, False),
                                                                  "127.0.0.2": (True, True, False)},
                             timeout=8, message="back and ready")
            await eventually(lambda: ((cep_of(api, "pg") or {}).get("status") or {}).get("healthy") == 2,
                             message="status")


async def mirrored_then_claimed(client: KubeClient, port: int) -> None:
    """Service db mirrors default/origin (127.0.0.2); a ClusterEndpoint db asks to adopt it and is
    refused while the mirror holds it."""
    from epctl.kube.client import SERVICES
    from tests.integration.controller_helpers import source_service

    await source_service(client, "origin", ("db", 5432, port), {"127.0.0.2": True})
    await client.request("POST", SERVICES.path("default"), body={
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "annotations": {"epctl.io/mirror-from": "default/origin"}},
        "spec": {"ports": [{"name": "db", "port": 5432}]}})
    claim = cep("db", [{"name": "db", "port": 5432, "targetPort": port, "hosts": ["127.0.0.1"], "tcpSocket": {},
                        "periodSeconds": 1}])
    claim["metadata"]["annotations"] = {"epctl.io/adopt": "true"}
    await client.request("POST", CLUSTERENDPOINTS.path("default"), body=claim)


def refused(api: KubeAPIServer) -> bool:
    conditions = {c["type"]: c for c in ((cep_of(api, "db") or {}).get("status") or {}).get("conditions") or []}
    return conditions.get("Synced", {}).get("reason") == "ServiceConflict"


async def unmirror(client: KubeClient) -> None:
    from epctl.kube.client import SERVICES

    svc = await client.request("GET", SERVICES.path("default", "db"))
    del svc["metadata"]["annotations"]["epctl.io/mirror-from"]
    await client.request("PUT", SERVICES.path("default", "db"), body=svc)


async def test_a_mirror_handed_over_to_a_clusterendpoint_with_a_grace(api: KubeAPIServer, client: KubeClient) -> None:
    """The mirror's copied endpoints are not the ClusterEndpoint's leaving hosts: with or without a grace
    the hand-over replaces them as it does with grace 0 (and the same way whatever order the two
    front-ends see the annotation go)."""
    from epctl.testing.backends import TCPBackend
    from tests.integration.controller_helpers import endpoints_of

    await install_crd(client)
    async with TCPBackend() as db, running_controller(api, client, terminating_grace=30) as controller:
        await mirrored_then_claimed(client, db.port)
        await eventually(lambda: endpoints_of(api, "db") == {("db", "127.0.0.2"): True} and refused(api),
                         message="mirrored, the claim refused")
        await unmirror(client)
        await eventually(lambda: controller.state.holder(("default", "db")) == "ClusterEndpoint", message="held")
        await eventually(lambda: ("db", "127.0.0.1") in endpoints_of(api, "db"), timeout=15, message="ours")
        assert await controller.writer.flush(10.0)
        assert endpoints_of(api, "db") == {("db", "127.0.0.1"): True}


async def test_a_mirror_handed_over_while_no_controller_ran(api: KubeAPIServer, client: KubeClient) -> None:
    """As live (previous test): the copied endpoint goes at once, not kept terminating as the
    ClusterEndpoint's own leaving host."""
    from epctl.testing.backends import TCPBackend
    from tests.integration.controller_helpers import endpoints_of

    await install_crd(client)
    async with TCPBackend() as db:
        async with running_controller(api, client, terminating_grace=30):
            await mirrored_then_claimed(client, db.port)
            await eventually(lambda: endpoints_of(api, "db") == {("db", "127.0.0.2"): True} and refused(api),
                             message="mirrored, the claim refused")
        await unmirror(client)
        async with running_controller(api, client, terminating_grace=30) as controller:
            await eventually(lambda: controller.state.holder(("default", "db")) == "ClusterEndpoint", message="held")
            await eventually(lambda: ("db", "127.0.0.1") in endpoints_of(api, "db"), timeout=15, message="ours")
            assert await controller.writer.flush(10.0)
            assert endpoints_of(api, "db") == {("db", "127.0.0.1"): True}
