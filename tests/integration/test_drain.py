"""Maintenance: the epctl.io/drain annotation (kubectl annotate, epctl drain/undrain) and the grace a
removed host is published terminating for, end to end against the test API server."""

from __future__ import annotations

from typing import Any

from epctl.drain import drain
from epctl.kube.client import EVENTS, MERGE_PATCH, SERVICES, ApiError, KubeClient
from epctl.testing.backends import TCPBackend
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import (
    CLUSTERENDPOINTS,
    CRD,
    cep,
    cep_of,
    install_crd,
    named_replica,
    running_controller,
    slices_of,
)
from tests.test_import_cli import epctl


def conditions_of(api: KubeAPIServer, service: str) -> dict[str, tuple[bool, bool, bool]]:
    """address -> (ready, serving, terminating) across the Service's slices."""
    return {e["addresses"][0]: (e["conditions"]["ready"], e["conditions"]["serving"], e["conditions"]["terminating"])
            for s in slices_of(api, service) for e in s["endpoints"]}


async def edit_hosts(client: KubeClient, name: str, hosts: list[str]) -> None:
    """Read-modify-write the first port's hosts, again on a conflict (the controller writes status)."""
    for _ in range(10):
        current = await client.request("GET", CLUSTERENDPOINTS.path("default", name))
        current["spec"]["ports"][0]["hosts"] = hosts
        try:
            await client.request("PUT", CLUSTERENDPOINTS.path("default", name), body=current)
            return
        except ApiError as err:
            if err.code != 409:
                raise
    raise AssertionError("kept conflicting")


async def events_of(client: KubeClient, reason: str) -> list[str]:
    items = (await client.request("GET", EVENTS.path("default")))["items"]
    return [e["message"] for e in items if e["reason"] == reason]


async def test_kubectl_annotate_drains_a_host_that_stays_probed(api: KubeAPIServer, client: KubeClient,
                                                                 kubectl: Any) -> None:
    await kubectl("apply", "-f", str(CRD))
    await kubectl("wait", "--for=condition=established", "crd/clusterendpoints.epctl.io", "--timeout=10s")
    async with TCPBackend() as db, running_controller(api, client):
        other = await TCPBackend(db.port, host="127.0.0.2").start()
        manifest = f"""apiVersion: epctl.io/v1beta1
kind: ClusterEndpoint
metadata: {{name: pg}}
spec:
  ports:
  - {{name: pg, port: 5432, targetPort: {db.port}, hosts: [127.0.0.1, 127.0.0.2], tcpSocket: {{}},
      periodSeconds: 1, failureThreshold: 1}}
"""
        await kubectl("apply", "-f", "-", stdin=manifest)
        await eventually(lambda: conditions_of(api, "pg") == {"127.0.0.1": (True, True, False),
                                                              "127.0.0.2": (True, True, False)}, message="published")
        await kubectl("annotate", "cep", "pg", "epctl.io/drain=127.0.0.2")
        await eventually(lambda: conditions_of(api, "pg") == {"127.0.0.1": (True, True, False),
                                                              "127.0.0.2": (False, True, True)}, message="drained")
        status = await eventually(lambda: (cep_of(api, "pg") or {}).get("status", {}).get("draining") == 1
                                  and cep_of(api, "pg")["status"], message="status")
        assert status["phase"] == "Healthy" and status["healthy"] == 1 and status["total"] == 2
        assert status["ports"][0] == {"name": "pg", "ready": 1, "total": 2, "draining": 1}  # not listed unhealthy
        assert [(h["host"], h["matched"], h["manager"]) for h in status["drainingHosts"]] == [
            ("127.0.0.2", True, "kubectl-annotate")]
        table = (await kubectl("get", "cep", "pg")).stdout.splitlines()
        assert table[0].split() == ["NAME", "READY", "HEALTHY", "TOTAL", "PHASE", "DRAINING", "REASON", "AGE"]
        assert table[1].split()[:6] == ["pg", "True", "1", "2", "Healthy", "1"]
        messages = await eventually(lambda: events_of(client, "Draining"), message="Event")
        assert messages[0].startswith("127.0.0.2 drained") and "by kubectl-annotate at 20" in messages[0]

        # still probed: the backend going away turns serving off, ready stays false
        await other.stop()
        await eventually(lambda: conditions_of(api, "pg") == {"127.0.0.1": (True, True, False),
                                                              "127.0.0.2": (False, False, True)}, message="failing")
        await other.start()
        await eventually(lambda: conditions_of(api, "pg")["127.0.0.2"] == (False, True, True), message="serving")

        # epctl undrain writes what kubectl would: the annotation goes, with epctl-drain as the manager
        code, out, err = await epctl("undrain", "pg", "127.0.0.2", kubeconfig=api.kubeconfig_path)
        assert (code, out.strip()) == (0, "clusterendpoint.epctl.io/pg undrained: 127.0.0.2"), err
        obj = (await kubectl("get", "cep", "pg", "-o", "json")).json()
        assert "epctl.io/drain" not in (obj["metadata"].get("annotations") or {})
        await eventually(lambda: conditions_of(api, "pg") == {"127.0.0.1": (True, True, False),
                                                              "127.0.0.2": (True, True, False)}, message="back")
        # the annotation is gone, and with it its managedFields entry: who removed it is in the audit log only
        assert (await eventually(lambda: events_of(client, "Undrained"), message="Undrained")) == [
            "127.0.0.2 back in service"]
        await other.stop()


async def test_epctl_drain_adds_to_the_annotation_and_refuses_unknown_hosts(api: KubeAPIServer,
                                                                           client: KubeClient) -> None:
    await install_crd(client)
    await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("db", [
        {"name": "pg", "port": 5432, "hosts": ["10.0.0.1", "10.0.0.2", "db-3.example.com"]}]))
    assert (await drain(client, "default", "db", ["10.0.0.1"], False))[0] == 0
    assert (await drain(client, "default", "db", ["db-3.example.com", "10.0.0.1"], False))[0] == 0
    obj = await client.request("GET", CLUSTERENDPOINTS.path("default", "db"))
    assert obj["metadata"]["annotations"]["epctl.io/drain"] == "10.0.0.1,db-3.example.com"
    assert [m["manager"] for m in obj["metadata"]["managedFields"] if m["manager"] == "epctl-drain"] == ["epctl-drain"]
    code, message = await drain(client, "default", "db", ["10.0.0.9"], False)
    assert code == 1 and "10.0.0.9: not in any port's hosts of clusterendpoint default/db" in message
    code, message = await drain(client, "default", "nope", ["10.0.0.1"], False)
    assert code == 1 and "not found" in message
    assert (await drain(client, "default", "db", ["10.0.0.1"], True))[0] == 0
    obj = await client.request("GET", CLUSTERENDPOINTS.path("default", "db"))
    assert obj["metadata"]["annotations"]["epctl.io/drain"] == "db-3.example.com"


async def test_a_removed_host_is_published_terminating_for_the_grace_period(api: KubeAPIServer,
                                                                            client: KubeClient) -> None:
    await install_crd(client)
    async with TCPBackend() as db, TCPBackend(db.port, host="127.0.0.2"), \
            running_controller(api, client, terminating_grace=1.5):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("pg", [
            {"name": "pg", "port": 5432, "targetPort": db.port, "hosts": ["127.0.0.1", "127.0.0.2"],
             "tcpSocket": {}, "periodSeconds": 1}]))
        await eventually(lambda: conditions_of(api, "pg") == {"127.0.0.1": (True, True, False),
                                                              "127.0.0.2": (True, True, False)}, message="published")
        # the usual maintenance: drain, then remove the host from the list (the annotation is left behind)
        assert (await drain(client, "default", "pg", ["127.0.0.2"], False, allow_loopback=True))[0] == 0
        await eventually(lambda: conditions_of(api, "pg")["127.0.0.2"] == (False, True, True), message="drained")
        await edit_hosts(client, "pg", ["127.0.0.1"])
        status = await eventually(lambda: (cep_of(api, "pg") or {}).get("status", {}).get("total") == 1
                                  and cep_of(api, "pg")["status"], message="status")
        assert conditions_of(api, "pg") == {"127.0.0.1": (True, True, False), "127.0.0.2": (False, True, True)}
        assert status["phase"] == "Healthy" and status["draining"] == 1  # not InvalidSpec: a leftover is reported
        assert [(h["host"], h["matched"]) for h in status["drainingHosts"]] == [("127.0.0.2", False)]
        assert (await eventually(lambda: events_of(client, "DrainUnknownHost"), message="Event"))[0].startswith(
            "127.0.0.2 in epctl.io/drain name no host")
        await eventually(lambda: conditions_of(api, "pg") == {"127.0.0.1": (True, True, False)}, message="gone")
        await eventually(lambda: (cep_of(api, "pg") or {}).get("status", {}).get("draining") == 0,
                         message="status after the grace")



async def test_the_status_stops_counting_a_leaving_host_whose_service_is_someone_elses(
        api: KubeAPIServer, client: KubeClient) -> None:
    """A ClusterEndpoint whose Service belongs to someone else (no adoption) publishes nothing, yet
    its status counts a host removed within the grace as draining. The status was recounted only
    when a write succeeded, so it said draining 1 forever (found by the stateful fuzzer, --grace)."""
    await install_crd(client)
    await client.request("POST", SERVICES.path("default"), body={
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "pg"},
        "spec": {"ports": [{"name": "pg", "port": 5432}]}})
    async with TCPBackend() as db, TCPBackend(db.port, host="127.0.0.2"), \
            running_controller(api, client, terminating_grace=1.0):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("pg", [
            {"name": "pg", "port": 5432, "targetPort": db.port, "hosts": ["127.0.0.1", "127.0.0.2"],
             "tcpSocket": {}, "periodSeconds": 1}]))

        def status() -> dict[str, Any]:
            return dict((cep_of(api, "pg") or {}).get("status") or {})

        await eventually(lambda: status().get("healthy") == 2 and "ServiceConflict" in str(status()),
                         message="probed, not published")
        await edit_hosts(client, "pg", ["127.0.0.1"])
        await eventually(lambda: status().get("total") == 1 and status().get("draining") == 1,
                         message="leaving, within the grace")
        await eventually(lambda: status().get("draining") == 0, message="no longer counted after the grace")
        assert slices_of(api, "pg") == []


async def test_a_second_host_removed_within_the_first_ones_grace_leaves_too(api: KubeAPIServer,
                                                                               client: KubeClient) -> None:
    """Two hosts removed one after the other: the grace timer was armed for the earlier deadline only,
    so the second host stayed terminating forever in a quiet system (found by the stateful fuzzer's
    grace walks, seed 101)."""
    await install_crd(client)
    async with TCPBackend() as db, TCPBackend(db.port, host="127.0.0.2"), TCPBackend(db.port, host="127.0.0.3"), \
            running_controller(api, client, terminating_grace=3.0):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("pg", [
            {"name": "pg", "port": 5432, "targetPort": db.port, "hosts": ["127.0.0.1", "127.0.0.2", "127.0.0.3"],
             "tcpSocket": {}, "periodSeconds": 1}]))
        await eventually(lambda: len(conditions_of(api, "pg")) == 3, message="published")
        await edit_hosts(client, "pg", ["127.0.0.1", "127.0.0.3"])
        await eventually(lambda: conditions_of(api, "pg")["127.0.0.2"] == (False, True, True), message="first leaving")
        await edit_hosts(client, "pg", ["127.0.0.1"])
        both = {"127.0.0.1": (True, True, False), "127.0.0.2": (False, True, True), "127.0.0.3": (False, True, True)}
        # both leaving at once: the second went within the first one's grace (else the test proves nothing)
        await eventually(lambda: conditions_of(api, "pg") == both, message="second leaving within the first's grace")
        await eventually(lambda: conditions_of(api, "pg") == {"127.0.0.1": (True, True, False)}, timeout=15,
                         message="both gone after their grace")
        await eventually(lambda: (cep_of(api, "pg") or {}).get("status", {}).get("draining") == 0,
                         message="status after the grace")


async def two_hosts_published(api: KubeAPIServer, client: KubeClient, port: int) -> None:
    """ClusterEndpoint pg with 127.0.0.1 and 127.0.0.2 (both listening on ``port``), published ready."""
    await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("pg", [
        {"name": "pg", "port": 5432, "targetPort": port, "hosts": ["127.0.0.1", "127.0.0.2"], "tcpSocket": {},
         "periodSeconds": 1}]))
    both = {"127.0.0.1": (True, True, False), "127.0.0.2": (True, True, False)}
    await eventually(lambda: conditions_of(api, "pg") == both, message="published")


async def second_host_leaving(api: KubeAPIServer, client: KubeClient, port: int) -> None:
    """:func:`two_hosts_published`, then 127.0.0.2 removed from the list and published leaving."""
    await two_hosts_published(api, client, port)
    await edit_hosts(client, "pg", ["127.0.0.1"])
    await eventually(lambda: conditions_of(api, "pg")["127.0.0.2"] == (False, True, True), message="leaving")


async def test_a_restart_within_the_grace_keeps_the_removed_host_terminating(api: KubeAPIServer,
                                                                              client: KubeClient) -> None:
    """The grace's deadline lives only in the replica that started it. The next one (a restart, a
    handover) found the host neither in the spec nor in its own state and dropped it at its first
    write; now it finds it in the slices and gives it a whole grace again (up to one grace longer,
    never shorter)."""
    await install_crd(client)
    async with TCPBackend() as db, TCPBackend(db.port, host="127.0.0.2"):
        async with running_controller(api, client, terminating_grace=600):
            await second_host_leaving(api, client, db.port)
        async with running_controller(api, client, terminating_grace=2.0) as controller:
            await eventually(lambda: ("default", "pg") in controller.state.targets, message="held again")
            assert ("default", "pg") in controller.state.leaving
            assert await controller.writer.flush(10.0)
            assert conditions_of(api, "pg") == {"127.0.0.1": (True, True, False), "127.0.0.2": (False, True, True)}
            await eventually(lambda: conditions_of(api, "pg") == {"127.0.0.1": (True, True, False)},
                             message="gone after the new replica's grace")


async def test_a_handover_within_the_grace_keeps_the_removed_host_terminating(api: KubeAPIServer,
                                                                              client: KubeClient) -> None:
    """Leader election: the standby that takes over did not hold the target, so it knew nothing of the
    grace under way; it finds the leaving host in the slices, as a restart does."""
    await install_crd(client)
    timing = {"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.3}
    async with TCPBackend() as db, TCPBackend(db.port, host="127.0.0.2"):
        first = named_replica(api, "a", leader_elect=True, terminating_grace=600, **timing)
        a = await first.__aenter__()
        stopped = False
        try:
            await eventually(lambda: a.leading, message="a leads")
            async with named_replica(api, "b", leader_elect=True, terminating_grace=2.0, **timing) as b:
                await two_hosts_published(api, client, db.port)
                await edit_hosts(client, "pg", ["127.0.0.1"])
                await eventually(lambda: conditions_of(api, "pg")["127.0.0.2"] == (False, True, True),
                                 message="leaving")
                assert ("default", "pg") not in b.state.targets  # the standby holds nothing
                await first.__aexit__(None, None, None)  # hands over at once
                stopped = True
                await eventually(lambda: b.leading and ("default", "pg") in b.state.targets, message="b holds it")
                assert ("default", "pg") in b.state.leaving
                assert await b.writer.flush(10.0)
                assert conditions_of(api, "pg") == {"127.0.0.1": (True, True, False),
                                                    "127.0.0.2": (False, True, True)}
                await eventually(lambda: conditions_of(api, "pg") == {"127.0.0.1": (True, True, False)},
                                 message="gone after b's grace")
        finally:
            if not stopped:
                await first.__aexit__(None, None, None)


async def test_a_host_removed_while_no_controller_ran_leaves_with_its_grace(api: KubeAPIServer,
                                                                            client: KubeClient) -> None:
    """An edit made while no controller ran: the next one publishes the host terminating for the
    grace, as if it had seen it go, rather than dropping it at once."""
    await install_crd(client)
    async with TCPBackend() as db, TCPBackend(db.port, host="127.0.0.2"):
        async with running_controller(api, client, terminating_grace=30):
            await two_hosts_published(api, client, db.port)
        await edit_hosts(client, "pg", ["127.0.0.1"])
        async with running_controller(api, client, terminating_grace=30) as controller:
            await eventually(lambda: ("default", "pg") in controller.state.targets, message="held")
            assert await controller.writer.flush(10.0)
            assert conditions_of(api, "pg") == {"127.0.0.1": (True, True, False), "127.0.0.2": (False, True, True)}


async def test_a_restart_does_not_announce_the_drained_hosts_again(api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    body = cep("db", [{"name": "pg", "port": 5432, "hosts": ["10.0.0.1", "10.0.0.2"]}])
    body["metadata"]["annotations"] = {"epctl.io/drain": "10.0.0.2"}
    await client.request("POST", CLUSTERENDPOINTS.path("default"), body=body)

    async def announced() -> int:
        items = (await client.request("GET", EVENTS.path("default")))["items"]
        return sum(e.get("count", 1) for e in items if e["reason"] == "Draining")

    for _ in range(2):
        async with running_controller(api, client) as controller:
            await eventually(lambda: [h["host"] for h in ((cep_of(api, "db") or {}).get("status") or {}).get(
                "drainingHosts") or []] == ["10.0.0.2"], message="status")
            assert await controller.writer.flush(10.0)
            await controller.events.drain()
        assert await announced() == 1  # the second start found it in the status: not news


async def test_an_unrelated_edit_by_the_same_manager_does_not_move_the_drains_since(api: KubeAPIServer,
                                                                                   client: KubeClient) -> None:
    """The managedFields time the since comes from moves whenever its manager edits any field it owns.
    The status followed it at its next recomputation (here a restart), a patch saying nothing new:
    the stateful fuzzer found it as a write in an idle system, long after the edit."""
    import time

    await install_crd(client)
    body = cep("db", [{"name": "pg", "port": 5432, "hosts": ["10.0.0.1", "10.0.0.2"]}])
    body["metadata"]["annotations"] = {"epctl.io/drain": "10.0.0.2"}
    await client.request("POST", CLUSTERENDPOINTS.path("default"), body=body)

    def since() -> str | None:
        hosts = ((cep_of(api, "db") or {}).get("status") or {}).get("drainingHosts") or []
        return hosts[0].get("since") if hosts else None

    async with running_controller(api, client):
        first = await eventually(since, message="draining since")
    await eventually(lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) > first,
                     message="a later second")  # managedFields times are whole seconds
    await client.request("PATCH", CLUSTERENDPOINTS.path("default", "db"), content_type=MERGE_PATCH,
                         body={"metadata": {"annotations": {"team": "storage"}}})
    entry = next(e for e in cep_of(api, "db")["metadata"]["managedFields"] if "f:team" in str(e["fieldsV1"]))
    assert entry["time"] > first  # the same manager's entry: its time moved
    async with running_controller(api, client) as controller:
        await eventually(lambda: ("default", "db") in controller.state.targets, message="held")
        await controller.status.flush()
        assert since() == first
