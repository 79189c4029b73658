"""OpenStack discovery end to end: fake Keystone+Nova (listed by the real openstacksdk), the test API
server, real local backends and the real controller."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from epctl.kube.client import EVENTS, SECRETS, KubeClient
from epctl.testing.backends import TCPBackend, free_port
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.openstack import FakeOpenStack
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import (
    CLUSTERENDPOINTS,
    cep,
    cep_of,
    endpoints_of,
    install_crd,
    running_controller,
    slices_of,
)

FAST = {"openstack_retry_base": 0.2, "openstack_retry_max": 1.0, "openstack_timeout": 2.0}


@pytest.fixture
async def cloud() -> AsyncIterator[FakeOpenStack]:
    async with FakeOpenStack() as fake:
        yield fake


def os_secret(cloud: FakeOpenStack, name: str = "os-creds", password: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default"},
            "stringData": {"OS_AUTH_URL": cloud.auth_url, "OS_USERNAME": "demo",
                           "OS_PASSWORD": password or cloud.credentials.password, "OS_PROJECT_NAME": "demo",
                           "OS_USER_DOMAIN_NAME": "Default", "OS_PROJECT_DOMAIN_NAME": "Default",
                           "OS_REGION_NAME": "RegionOne"}}


def discovering(name: str, port: int = 5432, hosts: list[str] | None = None, probe: dict[str, Any] | None = None,
                **openstack: Any) -> dict[str, Any]:
    spec = {"secretRef": {"name": "os-creds"}, "pollSeconds": 1, **openstack}
    return cep(name, [{"name": "db", "port": port, "hosts": hosts or [], **(probe or {})}],
               discovery={"openstack": spec})


def addresses(api: KubeAPIServer, service: str) -> set[str]:
    return {address for (_, address) in endpoints_of(api, service)}


def condition(api: KubeAPIServer, name: str, kind: str = "DiscoverySynced") -> dict[str, Any]:
    for item in ((cep_of(api, name) or {}).get("status") or {}).get("conditions") or []:
        if item["type"] == kind:
            return dict(item)
    return {}


async def test_vms_come_and_go(api: KubeAPIServer, client: KubeClient, cloud: FakeOpenStack) -> None:
    await install_crd(client)
    cloud.add_server("db-1", fixed=["10.0.0.1"])
    cloud.add_server("db-2", fixed=["10.0.0.2"])
    cloud.add_server("web-1", fixed=["10.0.0.9"])
    cloud.add_server("db-broken", fixed=["10.0.0.8"], status="ERROR")
    await client.request("POST", SECRETS.path("default"), body=os_secret(cloud))
    async with running_controller(api, client, **FAST):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=discovering("db", nameRegex="^db-"))
        await eventually(lambda: addresses(api, "db") == {"10.0.0.1", "10.0.0.2"}, message="VMs discovered")
        await eventually(lambda: condition(api, "db").get("status") == "True", message="DiscoverySynced")
        status = cep_of(api, "db")["status"]  # type: ignore[index]
        assert (status["discovery"]["servers"], status["discovery"]["addresses"]) == (2, 2)
        assert status["phase"] == "Healthy"  # no probe: every endpoint ready

        cloud.add_server("db-3", fixed=["10.0.0.3"])
        await eventually(lambda: addresses(api, "db") == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}, message="VM added")
        cloud.change_server("db-1", status="SHUTOFF")
        await eventually(lambda: addresses(api, "db") == {"10.0.0.2", "10.0.0.3"}, message="SHUTOFF VM removed")
        cloud.remove_server("db-2")
        await eventually(lambda: addresses(api, "db") == {"10.0.0.3"}, message="deleted VM removed")
        cloud.remove_server("db-3")  # an empty *successful* answer is the truth: the Service empties
        await eventually(lambda: addresses(api, "db") == set(), message="no VM left")
        assert condition(api, "db")["status"] == "True"


async def test_metadata_network_floating_and_ipv6(api: KubeAPIServer, client: KubeClient,
                                                  cloud: FakeOpenStack) -> None:
    await install_crd(client)
    a = cloud.add_server("a", fixed=["10.0.0.1", "fd00::0001"], floating=["192.0.2.1"], network="private",
                         metadata={"role": "primary", "env": "prod"}, tags=["blue", "db"])
    cloud.servers[a].addresses["public"] = cloud.address_list(fixed=["198.51.100.1"])
    cloud.add_server("b", fixed=["10.0.0.2"], floating=["192.0.2.2"], metadata={"role": "primary-old",
                                                                                 "env": "prod"})
    cloud.add_server("c", fixed=["10.0.0.3"], network="other", metadata={"role": "replica", "env": "prod"})
    await client.request("POST", SECRETS.path("default"), body=os_secret(cloud))
    async with running_controller(api, client, **FAST):
        for body in (discovering("primary", metadata={"role": "primary", "e.v": "prod"}),  # full match only
                     discovering("private", network="private"),
                     discovering("floating", addressKind="floating"),
                     discovering("everything", addressKind="any"),
                     discovering("six", ipVersion=6),
                     discovering("tagged", tags=["db", "blue"])):
            await client.request("POST", CLUSTERENDPOINTS.path("default"), body=body)
        await eventually(lambda: addresses(api, "primary") == {"10.0.0.1", "198.51.100.1"}, message="metadata")
        await eventually(lambda: addresses(api, "private") == {"10.0.0.1", "10.0.0.2"}, message="network")
        await eventually(lambda: addresses(api, "floating") == {"192.0.2.1", "192.0.2.2"}, message="floating")
        await eventually(lambda: addresses(api, "everything") == {
            "10.0.0.1", "10.0.0.2", "10.0.0.3", "192.0.2.1", "192.0.2.2", "198.51.100.1"}, message="any kind")
        await eventually(lambda: addresses(api, "six") == {"fd00::1"}, message="IPv6, normalised")
        await eventually(lambda: addresses(api, "tagged") == {"10.0.0.1", "198.51.100.1"}, message="tags")
        assert any("tags=blue%2Cdb" in r.path or "tags=blue,db" in r.path for r in cloud.requests)
        assert {s["addressType"] for s in slices_of(api, "six")} == {"IPv6"}


async def test_pagination_over_many_pages(api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    async with FakeOpenStack(max_limit=3) as cloud:
        for i in range(10):
            cloud.add_server(f"db-{i}", fixed=[f"10.0.1.{i + 1}"])
        await client.request("POST", SECRETS.path("default"), body=os_secret(cloud))
        async with running_controller(api, client, **FAST):
            await client.request("POST", CLUSTERENDPOINTS.path("default"), body=discovering("db"))
            await eventually(lambda: addresses(api, "db") == {f"10.0.1.{i + 1}" for i in range(10)},
                             message="all 10 servers over 4 pages")
        pages = [r.path for r in cloud.requests if "/servers/detail" in r.path]
        assert sum("marker=" in p for p in pages) >= 3  # pages 2, 3 and 4 of the first poll


async def test_outage_keeps_endpoints_and_recovers(api: KubeAPIServer, client: KubeClient,
                                                   cloud: FakeOpenStack) -> None:
    await install_crd(client)
    cloud.add_server("db-1", fixed=["10.0.0.1"])
    await client.request("POST", SECRETS.path("default"), body=os_secret(cloud))
    async with running_controller(api, client, **FAST) as controller:
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=discovering("db"))
        await eventually(lambda: addresses(api, "db") == {"10.0.0.1"} and condition(api, "db").get("status") == "True",
                         message="synced")
        mark = len(api.request_log)
        cloud.fail_next(10_000, 503, service="compute")
        cloud.remove_server("db-1")  # the truth changes, but nobody can see it
        await eventually(lambda: condition(api, "db").get("reason") == "ServerError", message="condition false")
        assert condition(api, "db")["status"] == "False"
        assert "HTTP 503" in condition(api, "db")["message"]
        assert addresses(api, "db") == {"10.0.0.1"}
        assert api.writes("endpointslices", since=mark) == []
        poller = controller.discovery.pollers[0]
        await eventually(lambda: poller.failures >= 3, message="retried with backoff")

        cloud.recover()
        cloud.fail_next(3, 0, delay=3.0, service="compute")  # slower than --openstack-timeout
        await eventually(lambda: condition(api, "db").get("reason") == "Timeout", timeout=20, message="timeout")
        assert addresses(api, "db") == {"10.0.0.1"}

        cloud.recover()
        cloud.add_server("db-2", fixed=["10.0.0.2"])
        await eventually(lambda: condition(api, "db").get("status") == "True", timeout=20, message="recovered")
        await eventually(lambda: addresses(api, "db") == {"10.0.0.2"}, message="the new truth")
        events = (await client.request("GET", EVENTS.path("default")))["items"]
        assert any(e["reason"] == "DiscoveryServerError" for e in events)


async def test_bad_credentials_remove_nothing_and_never_leak(api: KubeAPIServer, client: KubeClient,
                                                             cloud: FakeOpenStack,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await install_crd(client)
    cloud.add_server("db-1", fixed=["10.0.0.1"])
    await client.request("POST", SECRETS.path("default"), body=os_secret(cloud))
    async with running_controller(api, client, **FAST):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=discovering("db", hosts=["10.9.9.9"]))
        await eventually(lambda: addresses(api, "db") == {"10.0.0.1", "10.9.9.9"}, message="synced")
        wrong = "Wr0ng-Passw0rd-zzz"
        await client.request("PUT", SECRETS.path("default", "os-creds"), body=os_secret(cloud, password=wrong))
        await eventually(lambda: condition(api, "db").get("reason") == "AuthenticationFailed",
                         message="rejected credentials reported")
        assert addresses(api, "db") == {"10.0.0.1", "10.9.9.9"}  # nothing removed

        await client.request("DELETE", SECRETS.path("default", "os-creds"))
        await eventually(lambda: condition(api, "db").get("reason") == "SecretNotFound", message="missing Secret")
        assert addresses(api, "db") == {"10.0.0.1", "10.9.9.9"}

        await client.request("POST", SECRETS.path("default"), body={
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "os-creds"},
            "stringData": {"OS_AUTH_URL": cloud.auth_url, "OS_PASSWORD": wrong}})
        await eventually(lambda: condition(api, "db").get("reason") == "InvalidCredentials", message="bad Secret")
        assert "OS_USERNAME" in condition(api, "db")["message"]

        cloud.add_server("db-2", fixed=["10.0.0.2"])
        await client.request("PUT", SECRETS.path("default", "os-creds"), body=os_secret(cloud))  # fixed, no restart
        await eventually(lambda: addresses(api, "db") == {"10.0.0.1", "10.0.0.2", "10.9.9.9"}, message="fixed")
        await eventually(lambda: condition(api, "db")["status"] == "True", message="DiscoverySynced again")
        events = (await client.request("GET", EVENTS.path("default")))["items"]
    leaked = [r.getMessage() + repr(r.__dict__) for r in caplog.records
              if wrong in r.getMessage() + repr(r.__dict__) or cloud.credentials.password in r.getMessage()
              + repr(r.__dict__)]
    assert leaked == []
    for text in (repr(cep_of(api, "db")), repr(events)):
        assert wrong not in text and cloud.credentials.password not in text


async def test_application_credentials_and_clouds_yaml(api: KubeAPIServer, client: KubeClient,
                                                       cloud: FakeOpenStack) -> None:
    await install_crd(client)
    cloud.add_server("db-1", fixed=["10.0.0.1"])
    clouds = (f"clouds:\n  mine:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: {cloud.auth_url}\n"
              f"      application_credential_id: {cloud.credentials.app_credential_id}\n"
              f"      application_credential_secret: {cloud.credentials.app_credential_secret}\n"
              "    region_name: RegionOne\n  other:\n    auth: {auth_url: http://127.0.0.1:1/}\n")
    await client.request("POST", SECRETS.path("default"), body={
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "os-yaml"},
        "stringData": {"clouds.yaml": clouds, "cloud": "mine"}})
    await client.request("POST", SECRETS.path("default"), body={
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "os-creds"},
        "stringData": {"OS_AUTH_URL": cloud.auth_url,
                       "OS_APPLICATION_CREDENTIAL_ID": cloud.credentials.app_credential_id,
                       "OS_APPLICATION_CREDENTIAL_SECRET": cloud.credentials.app_credential_secret}})
    async with running_controller(api, client, **FAST):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=discovering("env"))
        body = discovering("yaml")
        body["spec"]["discovery"]["openstack"]["secretRef"]["name"] = "os-yaml"
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=body)
        await eventually(lambda: addresses(api, "env") == {"10.0.0.1"} and addresses(api, "yaml") == {"10.0.0.1"},
                         message="both credential shapes work")


async def test_shared_poller_and_no_writes_when_nothing_changes(api: KubeAPIServer, client: KubeClient,
                                                                cloud: FakeOpenStack) -> None:
    await install_crd(client)
    for i in range(4):
        cloud.add_server(f"db-{i}", fixed=[f"10.0.0.{i + 1}"])
    await client.request("POST", SECRETS.path("default"), body=os_secret(cloud))
    async with running_controller(api, client, **FAST) as controller:
        for name in ("a", "b", "c"):
            await client.request("POST", CLUSTERENDPOINTS.path("default"), body=discovering(name, nameRegex="^db-"))
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=discovering("d", nameRegex="^db-[02]"))
        await eventually(lambda: all(len(addresses(api, n)) == 4 for n in "abc") and len(addresses(api, "d")) == 2
                         and all(condition(api, n).get("status") == "True" for n in "abcd"), message="all synced")
        assert len(controller.discovery.pollers) == 2  # a, b and c share one; d asks something else
        await controller.writer.wait_idle()
        await controller.status.flush(2.0)
        mark, calls = len(api.request_log), cloud.calls("compute")
        await eventually(lambda: cloud.calls("compute") >= calls + 6, message="three more polls of each query")
        assert api.writes(since=mark) == []  # unchanged cloud: no slice, status or Event write

        cloud.change_server("db-1", addresses={"private": cloud.address_list(["10.0.0.99"])})
        await eventually(lambda: all("10.0.0.99" in addresses(api, n) for n in "abc"), message="changed address")
        await controller.writer.wait_idle()
        slice_writes = api.writes("endpointslices", since=mark)
        assert len(slice_writes) == 3  # one update per ClusterEndpoint that sees db-1; d does not


async def test_discovered_hosts_are_probed(api: KubeAPIServer, client: KubeClient, cloud: FakeOpenStack) -> None:
    await install_crd(client)
    port = free_port()
    cloud.add_server("db-up", fixed=["127.0.0.2"])
    cloud.add_server("db-down", fixed=["127.0.0.3"])
    await client.request("POST", SECRETS.path("default"), body=os_secret(cloud))
    async with TCPBackend(port, host="127.0.0.2"), running_controller(api, client, **FAST):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=discovering(
            "db", port=port, probe={"tcpSocket": {}, "periodSeconds": 1, "failureThreshold": 1}))
        await eventually(lambda: endpoints_of(api, "db") == {("db", "127.0.0.2"): True, ("db", "127.0.0.3"): False},
                         message="probed like static hosts")
        status = await eventually(lambda: cep_of(api, "db")["status"]["ports"][0].get("unhealthy"),  # type: ignore[index]
                                  message="status lists the unhealthy VM")
        assert [(u["host"], u["address"]) for u in status] == [("db-down", "127.0.0.3")]


async def test_restart_keeps_discovered_endpoints_and_writes_nothing(api: KubeAPIServer, client: KubeClient,
                                                                     cloud: FakeOpenStack) -> None:
    await install_crd(client)
    cloud.add_server("db-1", fixed=["10.0.0.1"])
    cloud.add_server("db-2", fixed=["10.0.0.2"])
    await client.request("POST", SECRETS.path("default"), body=os_secret(cloud))
    await client.request("POST", CLUSTERENDPOINTS.path("default"), body=discovering("db", hosts=["10.9.9.9"]))
    async with running_controller(api, client, **FAST) as first:
        await eventually(lambda: addresses(api, "db") == {"10.0.0.1", "10.0.0.2", "10.9.9.9"}
                         and condition(api, "db").get("status") == "True", message="published")
        await first.writer.wait_idle()
        await first.status.flush(2.0)

    cloud.fail_next(10_000, 503)  # the cloud is down while we restart
    mark = len(api.request_log)
    async with running_controller(api, client, **FAST) as second:
        await eventually(lambda: second.discovery.pollers and second.discovery.pollers[0].failures >= 2,
                         message="polls failing")
        await second.writer.wait_idle()
        assert addresses(api, "db") == {"10.0.0.1", "10.0.0.2", "10.9.9.9"}
        assert api.writes("endpointslices", since=mark) == []
        cloud.recover()
        await eventually(lambda: second.discovery.pollers[0].polls >= 2, message="answers again")
        await second.writer.wait_idle()
        await second.status.flush(2.0)
        assert api.writes("endpointslices", since=mark) == []
        assert condition(api, "db")["status"] == "True"


async def test_fake_openstack_serves_the_real_sdk() -> None:
    """The fake's fidelity: openstacksdk's own resource layer lists, filters and pages through it."""
    import asyncio

    import openstack
    from openstack.config import loader

    fake = FakeOpenStack(max_limit=2)
    async with fake:
        for i in range(5):
            fake.add_server(f"db-{i}", fixed=[f"10.0.0.{i + 1}"], tags=["x"] if i % 2 else [])
        fake.add_server("db-off", fixed=["10.0.0.9"], status="SHUTOFF")

        def list_with_sdk() -> tuple[list[str], list[str]]:
            region = loader.OpenStackConfig(load_yaml_config=False, load_envvars=False).get_one(
                auth_type="password", auth={"auth_url": fake.auth_url, "username": "demo",
                                            "password": fake.credentials.password, "project_name": "demo",
                                            "user_domain_name": "Default", "project_domain_name": "Default"})
            conn = openstack.connection.Connection(config=region)
            active = [s.name for s in conn.compute.servers(details=True, name="^db-", status="ACTIVE")]
            tagged = [s.name for s in conn.compute.servers(details=True, tags="x")]
            return active, tagged

        active, tagged = await asyncio.to_thread(list_with_sdk)
    assert active == ["db-4", "db-3", "db-2", "db-1", "db-0"]  # Nova's order: newest first, over 3 pages
    assert tagged == ["db-3", "db-1"]
    assert sum("marker=" in r.path for r in fake.requests) >= 2


async def test_private_cloud_ca_is_verified(api: KubeAPIServer, client: KubeClient) -> None:
    """HTTPS clouds are verified: against OS_CACERT (PEM in the Secret) when given, else the system
    trust store, which does not know our test CA."""
    await install_crd(client)
    async with FakeOpenStack(tls=True) as cloud:
        cloud.add_server("db-1", fixed=["10.0.0.1"])
        unverifiable = os_secret(cloud)
        await client.request("POST", SECRETS.path("default"), body=unverifiable)
        async with running_controller(api, client, **FAST):
            await client.request("POST", CLUSTERENDPOINTS.path("default"), body=discovering("db"))
            await eventually(lambda: condition(api, "db").get("reason") == "TLSVerificationFailed",
                             message="unknown CA refused")
            assert "OS_CACERT" in condition(api, "db")["message"]
            assert addresses(api, "db") == set()
            trusted = os_secret(cloud)
            trusted["stringData"]["OS_CACERT"] = cloud.ca_pem.decode()
            await client.request("PUT", SECRETS.path("default", "os-creds"), body=trusted)
            await eventually(lambda: addresses(api, "db") == {"10.0.0.1"}, message="verified against OS_CACERT")
            # status is written by its own writer, after or before the slices: wait for it too
            await eventually(lambda: condition(api, "db")["status"] == "True", message="DiscoverySynced")


async def test_zones_drain_by_server_name_and_a_deleted_server_leaves_terminating(
        api: KubeAPIServer, client: KubeClient, cloud: FakeOpenStack) -> None:
    """Discovered servers carry their availability zone; the drain annotation may name a server; a
    server gone from discovery stays published terminating for the grace period."""
    await install_crd(client)
    cloud.add_server("db-1", fixed=["10.0.0.1"], zone="az-1")
    cloud.add_server("db-2", fixed=["10.0.0.2"], zone="az-2")
    await client.request("POST", SECRETS.path("default"), body=os_secret(cloud))

    def published() -> dict[str, tuple[str | None, bool, bool, bool]]:
        return {e["addresses"][0]: (e.get("zone"), e["conditions"]["ready"], e["conditions"]["serving"],
                                    e["conditions"]["terminating"])
                for s in slices_of(api, "db") for e in s["endpoints"]}

    async with running_controller(api, client, terminating_grace=30.0, **FAST) as controller:
        body = discovering("db", nameRegex="^db-")
        body["metadata"]["annotations"] = {"epctl.io/drain": "db-2"}
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=body)
        await eventually(lambda: published() == {"10.0.0.1": ("az-1", True, True, False),
                                                 "10.0.0.2": ("az-2", False, True, True)}, message="zones, drained")
        cloud.remove_server("db-1")
        await eventually(lambda: published()["10.0.0.1"] == ("az-1", False, True, True), message="leaving")
        assert controller.state.expire() is not None  # still within its 30 s
        assert set(published()) == {"10.0.0.1", "10.0.0.2"}
        # the port's last server goes too: its port is still there, so it leaves with its grace as well
        cloud.remove_server("db-2")
        await eventually(lambda: ("default", "db") in controller.state.leaving
                         and len(controller.state.leaving[("default", "db")]) == 2, message="both leaving")
        assert await controller.writer.flush(10.0)
        assert published() == {"10.0.0.1": ("az-1", False, True, True), "10.0.0.2": ("az-2", False, True, True)}
    # a restart within the grace, with the cloud down: what the slices publish stands in for discovery,
    # but a server that was leaving is not a server to publish ready again: it stays leaving
    cloud.fail_next(10_000)
    async with running_controller(api, client, terminating_grace=30.0, **FAST) as controller:
        await eventually(lambda: ("default", "db") in controller.state.targets, message="held again")
        assert await controller.writer.flush(10.0)
        assert published() == {"10.0.0.1": ("az-1", False, True, True), "10.0.0.2": ("az-2", False, True, True)}
