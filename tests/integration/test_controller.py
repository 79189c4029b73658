"""The ClusterEndpoint controller end to end: test API server + real backends + the real controller."""

from __future__ import annotations

import time
from typing import Any

from epctl.kube.client import ApiError, KubeClient
from epctl.testing.backends import HTTPBackend, TCPBackend
from epctl.testing.kubeapi import FaultRule, KubeAPIServer
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import (
    CLUSTERENDPOINTS,
    CRD,
    cep,
    cep_of,
    endpoints_of,
    install_crd,
    running_controller,
    service_of,
    slices_of,
)


async def test_create_makes_service_and_slices_with_probed_conditions(api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    async with TCPBackend() as db, HTTPBackend() as web, running_controller(api, client):
        dead = TCPBackend()  # never started: connection refused
        created = await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("shop", [
            {"name": "db", "port": 5432, "targetPort": db.port, "hosts": ["127.0.0.1"], "tcpSocket": {},
             "periodSeconds": 1},
            {"name": "web", "port": 80, "targetPort": web.port, "hosts": ["127.0.0.1"],
             "httpGet": {"path": "/healthz"}, "periodSeconds": 1},
            {"name": "dead", "port": 81, "targetPort": dead.port, "hosts": ["127.0.0.1"], "tcpSocket": {},
             "periodSeconds": 1},
        ]))
        await eventually(lambda: endpoints_of(api, "shop") == {
            ("db", "127.0.0.1"): True, ("web", "127.0.0.1"): True, ("dead", "127.0.0.1"): False},
            message="slices with probed conditions")
        svc = service_of(api, "shop")
        assert svc is not None and "selector" not in svc["spec"]
        assert [(p["name"], p["port"], p["targetPort"], p["protocol"]) for p in svc["spec"]["ports"]] == [
            ("db", 5432, db.port, "TCP"), ("web", 80, web.port, "TCP"), ("dead", 81, dead.port, "TCP")]
        owner = svc["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "ClusterEndpoint", "shop", created["metadata"]["uid"], True)
        for obj in slices_of(api, "shop"):
            assert obj["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "controller.epctl.io"
            assert obj["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
            port = obj["ports"][0]
            assert port["port"] in (db.port, web.port, dead.port)  # the hosts' port: what kube-proxy dials
        def synced() -> bool:
            conditions = (cep_of(api, "shop") or {}).get("status", {}).get("conditions", [])
            return any(c["type"] == "Synced" and c["status"] == "True" for c in conditions)

        status = await eventually(lambda: (cep_of(api, "shop") or {}).get("status", {}).get("phase") == "Degraded"
                                  and synced() and cep_of(api, "shop"), message="status written")
        assert status["status"]["healthy"] == 2 and status["status"]["total"] == 3
        dead_port = next(p for p in status["status"]["ports"] if p["name"] == "dead")
        assert dead_port["unhealthy"][0]["reason"] == "connection refused"
        ready = {c["type"]: c["status"] for c in status["status"]["conditions"]}
        assert ready == {"Ready": "False", "Degraded": "True", "Synced": "True"}


async def edit(api: KubeAPIServer, client: KubeClient, name: str, change: Any) -> int:
    """Read-modify-write a ClusterEndpoint's spec; return the request-log mark before the write. A
    409 (the controller patched the status in between: status is written after routing, later) reads
    again, as any client of an optimistically locked object does."""
    for _attempt in range(5):
        current = await client.request("GET", CLUSTERENDPOINTS.path("default", name))
        change(current["spec"])
        mark = len(api.request_log)
        try:
            await client.request("PUT", CLUSTERENDPOINTS.path("default", name), body=current)
            return mark
        except ApiError as err:
            if err.code != 409:
                raise
    raise AssertionError(f"{name}: five conflicting writes in a row")


def slice_writes(api: KubeAPIServer, since: int) -> list[str]:
    return [r.verb for r in api.writes("endpointslices", since)]


async def test_backend_death_and_recovery_flip_one_slice_within_the_thresholds(
        api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    async with TCPBackend() as db, running_controller(api, client):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("db", [
            {"name": "pg", "port": 5432, "targetPort": db.port, "hosts": ["127.0.0.1"], "tcpSocket": {},
             "periodSeconds": 1, "failureThreshold": 2, "successThreshold": 2}]))
        await eventually(lambda: endpoints_of(api, "db") == {("pg", "127.0.0.1"): True}, message="ready")
        mark = len(api.request_log)
        await db.set_mode("closed")
        died = time.monotonic()
        await eventually(lambda: endpoints_of(api, "db") == {("pg", "127.0.0.1"): False}, timeout=10,
                         message="not ready")
        assert time.monotonic() - died <= 2 * 1 + 1 + 1  # failureThreshold x period + timeout + 1 s
        assert slice_writes(api, mark) == ["update"]  # exactly one write of one slice
        mark = len(api.request_log)
        await db.set_mode("accepting")
        back = time.monotonic()
        await eventually(lambda: endpoints_of(api, "db") == {("pg", "127.0.0.1"): True}, timeout=10,
                         message="ready again")
        assert time.monotonic() - back <= 2 * 1 + 1  # successThreshold x period + 1 s
        assert slice_writes(api, mark) == ["update"]
        # Events go after the slices and status they explain (routing first): wait for them
        await eventually(lambda: {e["reason"] for e in api.store.objects[("", "events")].values()
                                  if e["involvedObject"]["name"] == "db"} >= {"EndpointUnhealthy", "EndpointHealthy"},
                         message="both Events")


async def test_250_hosts_make_3_slices_and_shrinking_does_not_churn(api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    hosts = [f"127.0.{i // 200}.{i % 200 + 1}" for i in range(250)]
    async with running_controller(api, client):
        body = cep("big", [{"name": "p", "port": 80, "hosts": hosts}])  # no probe: always ready
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=body)
        await eventually(lambda: len(endpoints_of(api, "big")) == 250, message="all hosts published")
        sizes = sorted(len(s["endpoints"]) for s in slices_of(api, "big"))
        assert sizes == [50, 100, 100]
        smallest = min(slices_of(api, "big"), key=lambda s: len(s["endpoints"]))
        keep = [h for h in hosts if h not in {e["addresses"][0] for e in smallest["endpoints"]}]
        mark = await edit(api, client, "big", lambda spec: spec["ports"][0].update({"hosts": keep}))
        await eventually(lambda: len(endpoints_of(api, "big")) == len(keep), message="shrunk")
        assert slice_writes(api, mark) == ["delete"]  # the other slices are untouched


async def test_spec_edits_take_effect_with_minimal_writes(api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    async with TCPBackend() as db, HTTPBackend() as web, running_controller(api, client):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("app", [
            {"name": "a", "port": 80, "targetPort": db.port, "hosts": ["127.0.0.1"], "tcpSocket": {},
             "periodSeconds": 1}]))
        await eventually(lambda: endpoints_of(api, "app") == {("a", "127.0.0.1"): True}, message="first")
        mark = await edit(api, client, "app", lambda spec: spec["ports"][0]["hosts"].append("127.0.0.2"))
        await eventually(lambda: ("a", "127.0.0.2") in endpoints_of(api, "app"), message="host added")
        await eventually(lambda: endpoints_of(api, "app")[("a", "127.0.0.2")] is False, message="probed: refused")
        assert set(slice_writes(api, mark)) == {"update"}
        mark = await edit(api, client, "app", lambda spec: spec["ports"].append(
            {"name": "b", "port": 81, "targetPort": web.port, "hosts": ["127.0.0.1"], "httpGet": {},
             "periodSeconds": 1}))
        await eventually(lambda: endpoints_of(api, "app").get(("b", "127.0.0.1")) is True, message="port added")
        assert slice_writes(api, mark).count("create") == 1 and "delete" not in slice_writes(api, mark)
        svc = service_of(api, "app")
        assert svc is not None and [p["name"] for p in svc["spec"]["ports"]] == ["a", "b"]
        await edit(api, client, "app", lambda spec: spec["ports"][0].update(
            {"tcpSocket": {"enable": False}, "httpGet": {"path": "/"}, "targetPort": web.port}))
        await eventually(lambda: any(s["ports"][0]["port"] == web.port and s["ports"][0]["name"] == "a"
                                     for s in slices_of(api, "app")), message="probe and port changed")
        await edit(api, client, "app", lambda spec: spec["ports"].pop())
        await eventually(lambda: all(k[0] == "a" for k in endpoints_of(api, "app")), message="port removed")
        await eventually(lambda: [p["name"] for p in service_of(api, "app")["spec"]["ports"]] == ["a"],  # type: ignore[index]
                         message="service port removed")


async def test_invalid_spec_is_reported_and_loses_nothing(api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    async with TCPBackend() as db, running_controller(api, client) as controller:
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("good", [
            {"name": "pg", "port": 5432, "targetPort": db.port, "hosts": ["127.0.0.1"], "tcpSocket": {}}]))
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("bad", [
            {"name": "pg", "port": 5432, "hosts": ["not a host!"], "tcpSocket": {}, "httpGet": {}}]))
        await eventually(lambda: endpoints_of(api, "good") == {("pg", "127.0.0.1"): True}, message="good works")

        def condition(name: str) -> dict[str, Any]:
            conditions = (cep_of(api, name) or {}).get("status", {}).get("conditions", [])
            return next((c for c in conditions if c["type"] == "Ready"), {})

        await eventually(lambda: condition("bad").get("reason") == "InvalidSpec", message="bad reported")
        assert "spec.ports[0].hosts[0]" in condition("bad")["message"]
        assert "at most one probe" in condition("bad")["message"]
        assert service_of(api, "bad") is None
        # a valid object turned invalid keeps serving its last valid state
        await edit(api, client, "good", lambda spec: spec["ports"][0].update({"hosts": ["bad host"]}))
        await eventually(lambda: condition("good").get("reason") == "InvalidSpec", message="turned invalid")
        assert endpoints_of(api, "good") == {("pg", "127.0.0.1"): True}
        await controller.events.drain()
        reasons = {(e["involvedObject"]["name"], e["reason"]) for e in api.store.objects[("", "events")].values()}
        assert ("bad", "InvalidSpec") in reasons and ("good", "InvalidSpec") in reasons


async def test_restart_with_steady_backends_writes_nothing(api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    async with TCPBackend() as db:
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("db", [
            {"name": "pg", "port": 5432, "targetPort": db.port, "hosts": ["127.0.0.1", "127.0.0.2"],
             "tcpSocket": {}, "periodSeconds": 1, "failureThreshold": 1}]))
        async with running_controller(api, client):
            await eventually(lambda: endpoints_of(api, "db") == {("pg", "127.0.0.1"): True,
                                                                ("pg", "127.0.0.2"): False}, message="settled")
            await eventually(lambda: (cep_of(api, "db") or {}).get("status", {}).get("phase") == "Degraded",
                             message="status settled")
        mark = len(api.request_log)
        async with running_controller(api, client) as controller:
            deadline = time.monotonic() + 3.5  # several probe periods with both checks re-probed
            await eventually(lambda: time.monotonic() > deadline, timeout=10, message="steady period")
            assert all(controller.scheduler.state(k).runs >= 2 for k in controller.scheduler.keys())  # type: ignore[union-attr]
        writes = [(r.verb, r.resource) for r in api.request_log[mark:] if r.is_write]
        assert writes == [], writes


async def test_api_faults_converge_without_losing_anything(api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    hosts = [f"127.0.1.{i}" for i in range(1, 40)]
    async with running_controller(api, client, write_concurrency=4) as controller:
        controller.writer.backoff_initial = 0.05
        api.inject_fault(FaultRule(verb="create", resource="endpointslices", code=500, count=3))
        api.inject_fault(FaultRule(verb="create", resource="services", code=429, count=2, retry_after=0))
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep(
            "flaky", [{"name": "p", "port": 80, "hosts": hosts}]))
        await eventually(lambda: len(endpoints_of(api, "flaky")) == 39, timeout=15, message="converged after 500s")
        api.inject_fault(FaultRule(verb="update", resource="endpointslices", code=409, count=5))
        api.compact()
        api.drop_watches()
        await edit(api, client, "flaky", lambda spec: spec["ports"][0].update({"hosts": hosts[:20]}))
        await eventually(lambda: len(endpoints_of(api, "flaky")) == 20, timeout=15, message="converged after 409s")
        assert sorted(a for _, a in endpoints_of(api, "flaky")) == sorted(hosts[:20])
        assert len({s["metadata"]["name"] for s in slices_of(api, "flaky")}) == len(slices_of(api, "flaky"))


async def test_deleting_the_clusterendpoint_garbage_collects_service_and_slices(
        api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    async with running_controller(api, client):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("tmp", [
            {"name": "p", "port": 80, "hosts": ["127.0.0.1"]}]))
        await eventually(lambda: endpoints_of(api, "tmp") and service_of(api, "tmp"), message="created")
        await client.request("DELETE", CLUSTERENDPOINTS.path("default", "tmp"))
        await eventually(lambda: not slices_of(api, "tmp") and service_of(api, "tmp") is None, message="GC")


async def test_existing_service_is_not_touched_unless_adoption_is_asked(api: KubeAPIServer,
                                                                        client: KubeClient) -> None:
    await install_crd(client)
    await client.request("POST", "/api/v1/namespaces/default/services", body={
        "metadata": {"name": "legacy"}, "spec": {"selector": {"app": "x"}, "ports": [{"port": 1}]}})
    async with running_controller(api, client):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("legacy", [
            {"name": "p", "port": 80, "hosts": ["127.0.0.1"]}]))

        def synced() -> dict[str, Any]:
            conditions = (cep_of(api, "legacy") or {}).get("status", {}).get("conditions", [])
            return next((c for c in conditions if c["type"] == "Synced"), {})

        await eventually(lambda: synced().get("reason") == "ServiceConflict", message="conflict reported")
        assert service_of(api, "legacy")["spec"]["selector"] == {"app": "x"}  # type: ignore[index]
        # only kube-controller-manager's (empty: no Pods) placeholder slice, none of ours
        assert [s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] for s in slices_of(api, "legacy")
                ] == ["endpointslice-controller.k8s.io"]
        obj = await client.request("GET", CLUSTERENDPOINTS.path("default", "legacy"))
        obj["metadata"]["annotations"] = {"epctl.io/adopt": "true"}
        await client.request("PUT", CLUSTERENDPOINTS.path("default", "legacy"), body=obj)
        await eventually(lambda: synced().get("status") == "True", message="adopted")
        svc = service_of(api, "legacy")
        assert svc is not None and "selector" not in svc["spec"]
        assert svc["metadata"]["ownerReferences"][0]["name"] == "legacy"
        assert endpoints_of(api, "legacy") == {("p", "127.0.0.1"): True}
        # someone edits our Service's ports by hand: the drift is repaired
        await client.request("PATCH", "/api/v1/namespaces/default/services/legacy",
                             body={"spec": {"ports": [{"port": 9, "targetPort": 9}]}},
                             content_type="application/merge-patch+json")
        await eventually(lambda: [p["port"] for p in service_of(api, "legacy")["spec"]["ports"]] == [80],  # type: ignore[index]
                         message="drift repaired")


async def test_conflict_clears_when_the_foreign_service_goes_away(api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    await client.request("POST", "/api/v1/namespaces/default/services", body={
        "metadata": {"name": "taken"}, "spec": {"ports": [{"port": 1}]}})
    async with running_controller(api, client):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("taken", [
            {"name": "p", "port": 80, "hosts": ["127.0.0.1"]}]))
        await eventually(lambda: not slices_of(api, "taken") and any(
            c["reason"] == "ServiceConflict" for c in (cep_of(api, "taken") or {}).get("status", {}).get(
                "conditions", [])), message="conflict")
        await client.request("DELETE", "/api/v1/namespaces/default/services/taken")
        await eventually(lambda: endpoints_of(api, "taken") == {("p", "127.0.0.1"): True}, message="recovered")


async def test_user_view_through_kubectl(api: KubeAPIServer, client: KubeClient, kubectl: Any) -> None:
    await kubectl("apply", "-f", str(CRD))
    await kubectl("wait", "--for=condition=established", "crd/clusterendpoints.epctl.io", "--timeout=10s")
    async with TCPBackend() as db, running_controller(api, client):
        manifest = f"""apiVersion: epctl.io/v1beta1
kind: ClusterEndpoint
metadata: {{name: pg}}
spec:
  ports:
  - {{name: pg, port: 5432, targetPort: {db.port}, hosts: [127.0.0.1, 127.0.0.2], tcpSocket: {{enable: true}},
      periodSeconds: 1, failureThreshold: 1}}
"""
        await kubectl("apply", "-f", "-", stdin=manifest)
        await kubectl("wait", "--for=jsonpath={.status.phase}=Degraded", "cep/pg", "--timeout=20s")
        table = (await kubectl("get", "cep")).stdout.splitlines()
        assert table[0].split() == ["NAME", "READY", "HEALTHY", "TOTAL", "PHASE", "DRAINING", "REASON", "AGE"]
        assert table[1].split()[:7] == ["pg", "True", "1", "2", "Degraded", "0", "EndpointsReady"]
        described = (await kubectl("describe", "cep", "pg")).stdout
        assert "connection refused" in described and "EndpointUnhealthy" in described
        slices = (await kubectl("get", "endpointslices", "-l", "kubernetes.io/service-name=pg", "-o", "json")).json()
        assert {e["addresses"][0]: e["conditions"]["ready"] for s in slices["items"] for e in s["endpoints"]} == {
            "127.0.0.1": True, "127.0.0.2": False}
        await kubectl("delete", "cep", "pg")
        await eventually(lambda: service_of(api, "pg") is None and not slices_of(api, "pg"), message="GC")


async def test_flush_returns_only_after_the_writes(api: KubeAPIServer, client: KubeClient) -> None:
    """Regression: a reconcile spawned but not yet started counted as neither pending nor in flight,
    so wait_idle()/flush() (and so shutdown) could return before the write."""
    await install_crd(client)
    async with running_controller(api, client, batch_delay=5.0, max_batch_delay=10.0) as controller:
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("quick", [
            {"name": "db", "port": 5432, "hosts": ["10.0.0.1"]}]))
        await eventually(lambda: controller.state.get(("default", "quick")) is not None, message="desired")
        assert slices_of(api, "quick") == []  # still inside the (long) batch delay
        assert await controller.writer.flush(10.0)
        assert [e["addresses"] for s in slices_of(api, "quick") for e in s["endpoints"]] == [["10.0.0.1"]]


async def test_an_initial_delay_publishes_at_once_not_ready(api: KubeAPIServer, client: KubeClient) -> None:
    """A first publication waits for first probe results, but not for an initialDelaySeconds: during it
    the host is not ready (kubelet semantics), and the Service exists."""
    await install_crd(client)
    async with TCPBackend() as db, running_controller(api, client):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("slow", [
            {"name": "pg", "port": 5432, "targetPort": db.port, "hosts": ["127.0.0.1"], "tcpSocket": {},
             "periodSeconds": 1, "initialDelaySeconds": 300}]))
        await eventually(lambda: endpoints_of(api, "slow") == {("pg", "127.0.0.1"): False}, message="published")
        assert service_of(api, "slow") is not None


async def test_kubectl_get_says_what_is_wrong(api: KubeAPIServer, client: KubeClient, kubectl: Any) -> None:
    """An invalid spec, a Service conflict and a port without a ready endpoint each read differently in the
    default columns, and the wide view's message names the port."""
    await kubectl("apply", "-f", str(CRD))
    await kubectl("wait", "--for=condition=established", "crd/clusterendpoints.epctl.io", "--timeout=10s")
    await client.request("POST", "/api/v1/namespaces/default/services", body={
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken"}, "spec": {"ports": [{"port": 1}]}})
    async with TCPBackend() as db, running_controller(api, client):
        await db.set_mode("closed")
        manifest = f"""apiVersion: epctl.io/v1beta1
kind: ClusterEndpoint
metadata: {{name: bad}}
spec:
  ports: [{{name: pg, port: 5432, hosts: [127.0.0.1], tcpSocket: {{}}, periodSeconds: 1, timeoutSeconds: 5}}]
---
apiVersion: epctl.io/v1beta1
kind: ClusterEndpoint
metadata: {{name: taken}}
spec:
  ports: [{{name: pg, port: 5432, targetPort: {db.port}, hosts: [127.0.0.1]}}]
---
apiVersion: epctl.io/v1beta1
kind: ClusterEndpoint
metadata: {{name: down}}
spec:
  ports:
  - {{name: pg, port: 5432, targetPort: {db.port}, hosts: [127.0.0.1], tcpSocket: {{}}, periodSeconds: 1,
      failureThreshold: 1}}
  - {{name: web, port: 80, hosts: [127.0.0.1]}}
"""
        await kubectl("apply", "-f", "-", stdin=manifest)
        for name, reason in (("bad", "InvalidSpec"), ("taken", "ServiceConflict"), ("down", "NoReadyEndpoints")):
            await kubectl("wait", f"--for=jsonpath={{.status.conditions[?(@.type==\"Ready\")].reason}}={reason}",
                          f"cep/{name}", "--timeout=20s")
        rows = {line.split()[0]: line.split() for line in (await kubectl("get", "cep")).stdout.splitlines()[1:]}
        assert rows["bad"][1:7] == ["False", "0", "0", "Invalid", "0", "InvalidSpec"]
        assert rows["taken"][1] == "False" and rows["taken"][6] == "ServiceConflict"
        assert rows["down"][1:7] == ["False", "1", "2", "Degraded", "0", "NoReadyEndpoints"]
        wide = (await kubectl("get", "cep", "down", "bad", "-o", "wide")).stdout
        assert "no ready endpoint on port pg" in wide
        assert "spec.ports[0].timeoutSeconds: must not exceed periodSeconds" in wide
        bad = (await kubectl("get", "cep", "bad", "-o", "json")).json()
        degraded = {c["type"]: c for c in bad["status"]["conditions"]}["Degraded"]
        assert (degraded["status"], degraded["reason"]) == ("Unknown", "InvalidSpec")


async def test_overload_is_reported_on_every_clusterendpoint(api: KubeAPIServer, client: KubeClient) -> None:
    """Checks asking for more probes than the engine may start (here capped by --max-probe-rate) run at a
    stretched period; past 2x every ClusterEndpoint says so (ProbesDelayed) and no host is failed for it.
    That costs one status patch per ClusterEndpoint and nothing else: no Event, no slice (what the
    1,000 x 10 benchmark's "steady-state writes" of 2026-12-03 were, docs/design.md section 10)."""
    await install_crd(client)
    async with TCPBackend() as db, running_controller(api, client, max_probe_rate=20.0) as controller:
        controller.scheduler.delayed_sustain = (3600.0, 3600.0)  # not before everything is published
        for name in ("a", "b"):  # 2 x 30 checks at 1 s = 60 probes/s asked, 20/s admitted: ~3x
            await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep(name, [
                {"name": f"p{i}", "port": 5000 + i, "targetPort": db.port, "periodSeconds": 1,
                 "failureThreshold": 1, "tcpSocket": {}, "hosts": ["127.0.0.1"]} for i in range(30)]))

        def delayed(name: str) -> dict[str, Any]:
            conditions = (cep_of(api, name) or {}).get("status", {}).get("conditions", [])
            return next((c for c in conditions if c["type"] == "ProbesDelayed"), {})

        await eventually(lambda: len(endpoints_of(api, "a")) == len(endpoints_of(api, "b")) == 30, timeout=30,
                         message="published")
        await controller.writer.wait_idle(30)
        await controller.status.flush(30)
        await controller.events.drain(30)
        mark = len(api.request_log)
        controller.scheduler.delayed_sustain = (0.0, 0.0)  # the product waits 30 s / 60 s before flipping it
        await eventually(lambda: all(delayed(n).get("status") == "True" for n in ("a", "b")), timeout=30,
                         message="ProbesDelayed on both")
        await controller.status.flush(30)
        await controller.events.drain(30)
        writes = [(r.resource, r.subresource, r.name) for r in api.writes(since=mark)]
        assert sorted(writes) == [("clusterendpoints", "status", "a"), ("clusterendpoints", "status", "b")], writes
        assert "x their periodSeconds" in delayed("a")["message"]
        assert controller.scheduler.stretch.factor > 2.0
        assert all(e.ready for t in controller.state.targets.values() for g in t.groups.values()
                   for e in g.endpoints.values()), "stretching never fails a host"
