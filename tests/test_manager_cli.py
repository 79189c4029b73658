"""``epctl manager`` as kube-endpoint-manager users run it: a real process, the seed's env vars."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import yaml

from epctl.kube.client import MERGE_PATCH, SERVICES, KubeClient
from epctl.sources.manager import parse_filter_metadata, parse_probe
from epctl.testing.backends import TCPBackend, free_port
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.openstack import FakeOpenStack
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import endpoints_of, epctl_slices_of, slices_of, v1_endpoints

ROOT = Path(__file__).resolve().parent.parent


def seed_env(api: KubeAPIServer, cloud: FakeOpenStack, ca_file: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "K8S_", "EPCTL_", "KUBECONFIG"))}
    return {**env, "NO_PROXY": "*", "ENDPOINT_TYPE": "openstack", "SYNC_PERIOD": "1", "K8S_NAMESPACE": "default",
            "K8S_ENDPOINT": "legacy-db", "K8S_API_SERVER": f"127.0.0.1:{api.port}", "K8S_API_TOKEN": api.token,
            "K8S_CA_FILE": str(ca_file), "OS_AUTH_URL": cloud.auth_url, "OS_USERNAME": "demo",
            "OS_PASSWORD": cloud.credentials.password, "OS_PROJECT": "demo", **extra}


async def test_manager_with_seed_env_vars(api: KubeAPIServer, client: KubeClient, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(api.certs.ca_pem)
    port = free_port()
    async with FakeOpenStack() as cloud, TCPBackend(port, host="127.0.0.2"):
        cloud.add_server("db-1", fixed=["127.0.0.2"], metadata={"role": "primary"})
        cloud.add_server("db-2", fixed=["127.0.0.3"], metadata={"role": "replica"})
        cloud.add_server("db-off", fixed=["127.0.0.5"], metadata={"role": "primary"}, status="SHUTOFF")
        cloud.add_server("web-1", fixed=["127.0.0.4"], metadata={"role": "primary"})
        await client.request("POST", "/api/v1/namespaces/default/endpoints", body={  # kube-endpoint-manager's
            "metadata": {"name": "legacy-db"}, "subsets": [{"addresses": [{"ip": "127.0.0.9"}],  # stale VM list
                                                            "ports": [{"name": "pg", "port": port}]}]})
        env = seed_env(api, cloud, ca_file, FILTER_NAME="db", FILTER_METADATA="role:prim")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "epctl.cli", "manager", "--probe", "tcp", "--probe-period", "1",
            "--probe-failure-threshold", "1", "--allow-loopback", "--metrics-addr", "", "--log-format", "json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        logs = b""

        async def read_logs() -> None:
            nonlocal logs
            assert proc.stderr is not None
            while line := await proc.stderr.readline():
                logs += line

        reader = asyncio.create_task(read_logs())
        try:
            await eventually(lambda: b"legacy-db not found" in logs, timeout=20,
                             message="a missing Service is a clear error")
            service = await client.request("POST", SERVICES.path("default"), body={
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "legacy-db"},
                "spec": {"ports": [{"name": "pg", "port": 5432, "targetPort": port}]}})
            await eventually(lambda: endpoints_of(api, "legacy-db") == {("pg", "127.0.0.2"): True}, timeout=20,
                             message="the Service appeared and got the matching ACTIVE VM; the stale VM of the "
                                     "old Endpoints (mirrored by the cluster) is gone")
            await eventually(lambda: [a["ip"] for s in (v1_endpoints(api, "legacy-db") or {}).get("subsets", [])
                                      for a in s.get("addresses", [])] == ["127.0.0.2"],
                             message="the old Endpoints object taken over")
            owner = slices_of(api, "legacy-db")[0]["metadata"]["ownerReferences"][0]
            assert (owner["kind"], owner["uid"]) == ("Service", service["metadata"]["uid"])
            assert slices_of(api, "legacy-db")[0]["ports"][0]["port"] == port

            cloud.change_server("db-2", metadata={"role": "primary"})
            await eventually(lambda: endpoints_of(api, "legacy-db") == {
                ("pg", "127.0.0.2"): True, ("pg", "127.0.0.3"): False}, timeout=20, message="probed: 127.0.0.3 down")

            await eventually(lambda: [a["ip"] for s in (v1_endpoints(api, "legacy-db") or {}).get("subsets", [])
                                      for a in s.get("notReadyAddresses", [])] == ["127.0.0.3"],
                             message="the Endpoints follow the slices (both written concurrently)")
            mark, calls = len(api.request_log), cloud.calls("compute")
            await eventually(lambda: cloud.calls("compute") >= calls + 3, timeout=20, message="three more polls")
            assert api.writes(since=mark) == []  # unchanged cloud: nothing written

            await client.request("PATCH", SERVICES.path("default", "legacy-db"), content_type=MERGE_PATCH, body={
                "spec": {"ports": [{"name": "postgres", "port": 5432, "targetPort": port}]}})
            expected = {("postgres", "127.0.0.2"): True, ("postgres", "127.0.0.3"): False}
            await eventually(lambda: endpoints_of(api, "legacy-db") == expected, timeout=20,
                             message="follows the Service's ports")

            cloud.fail_next(10_000, 503)
            await eventually(lambda: b"ServerError" in logs, timeout=20, message="outage logged")
            assert endpoints_of(api, "legacy-db") == expected
            assert proc.returncode is None  # the seed crashed here

            await client.request("PATCH", SERVICES.path("default", "legacy-db"), content_type=MERGE_PATCH, body={
                "spec": {"selector": {"app": "db"}}})  # now Kubernetes' own controllers manage it
            await eventually(lambda: not epctl_slices_of(api, "legacy-db") and v1_endpoints(api, "legacy-db") is None,
                             timeout=20, message="a Service with a selector is let go: our slices and Endpoints")
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 20)
            await reader
        assert code == 0, logs.decode()
        assert cloud.credentials.password.encode() not in logs and api.token.encode() not in logs
    used = {(r.group, r.resource, r.verb) for r in api.request_log if r.user_agent.startswith("epctl-manager/")}
    roles = [d for d in yaml.safe_load_all((ROOT / "manifests/examples/manager/rbac.yaml").read_text())
             if d["kind"] == "Role"]
    granted = {(g, res, verb) for role in roles for rule in role["rules"] for g in rule["apiGroups"]
               for res in rule["resources"] for verb in rule["verbs"]}
    assert used - granted == set(), "the example Role misses grants epctl manager needs"
    assert granted - used <= {("", "events", "create"), ("", "events", "patch")}, "unused grants"


async def test_manager_refuses_unverifiable_tls_and_bad_settings(api: KubeAPIServer, tmp_path: Path) -> None:
    async with FakeOpenStack() as cloud:
        env = seed_env(api, cloud, tmp_path / "missing-ca.crt")  # a CA that is not there
        for extra, expected in (({}, "cannot verify the API server's certificate"),
                                ({"FILTER_METADATA": "novalue"}, "is not keyregex:valueregex"),
                                ({"K8S_NAMESPACE": ""}, "K8S_NAMESPACE")):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "epctl.cli", "manager", stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env={**env, **extra})
            _, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 2 and expected in err.decode(), err.decode()


def test_seed_filter_semantics() -> None:
    import re

    (key, value), = parse_filter_metadata("endpoint.url:http://x:80")  # split on the first colon only
    assert re.fullmatch(key, "endpoint.url-extra") and re.fullmatch(value, "http://x:80/path")
    assert not re.fullmatch(value, "xhttp://x:80")  # re.match: anchored at the start
    assert parse_probe("http:/healthz").path == "/healthz"  # type: ignore[union-attr]
    assert parse_probe("none") is None


async def test_manager_leaves_the_seeds_endpoints_alone_until_the_cloud_answers(
        api: KubeAPIServer, client: KubeClient) -> None:
    """Switching from kube-endpoint-manager: its Service and Endpoints exist; epctl manager starts while
    OpenStack fails. The old Endpoints (mirrored by the cluster) must keep routing until the first
    answer; then epctl's truth replaces them, with no empty moment."""
    from epctl.sources.manager import Manager, ManagerSettings, seed_query
    from epctl.sources.openstack_auth import credentials_from_env
    from tests.integration.test_endpoints_ownership import managers

    async with FakeOpenStack() as cloud:
        cloud.add_server("db-1", fixed=["10.0.0.2"])
        await client.request("POST", SERVICES.path("default"), body={
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "legacy-db"},
            "spec": {"ports": [{"name": "pg", "port": 5432}]}})
        await client.request("POST", "/api/v1/namespaces/default/endpoints", body={
            "metadata": {"name": "legacy-db"}, "subsets": [{"addresses": [{"ip": "10.0.0.2"}, {"ip": "10.0.0.9"}],
                                                            "ports": [{"name": "pg", "port": 5432}]}]})
        await eventually(lambda: len(endpoints_of(api, "legacy-db")) == 2, message="mirrored by the cluster")
        routable: list[set[str]] = []
        api.store.listeners.append(lambda _rt, _obj: routable.append(
            {a for (_, a), ready in endpoints_of(api, "legacy-db").items() if ready}))
        cloud.fail_next(3, 503, service="compute")
        settings = ManagerSettings(namespace="default", service="legacy-db", sync_period=0.3, metrics_addr=None,
                                   openstack_retry_base=0.2)
        seed_query(settings)
        credentials = credentials_from_env({"OS_AUTH_URL": cloud.auth_url, "OS_USERNAME": "demo",
                                            "OS_PASSWORD": cloud.credentials.password, "OS_PROJECT": "demo"})
        manager = Manager(client, settings, credentials)
        await manager.start()
        try:
            await eventually(lambda: endpoints_of(api, "legacy-db") == {("pg", "10.0.0.2"): True}
                             and managers(api, "legacy-db") == {"controller.epctl.io"}, timeout=20,
                             message="the cloud's truth, in epctl's slices only")
        finally:
            await manager.stop()
        assert cloud.calls("compute") >= 4, "the first answers failed"
        assert routable and all(ready for ready in routable), "the Service was empty for a moment"
