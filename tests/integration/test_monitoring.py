"""The monitoring overlay as a platform team uses it: the ServiceMonitor selects the metrics Service, the
alerts fire when and only when they should (promtool), and a real Prometheus scraping real controller
processes (two --shard members and a single replica) answers every dashboard query and alert expression
with what the scenario did — not merely "some data".

Prometheus is Debian's ``prometheus`` package (.ci/run installs it): our own process on a loopback port
with a temporary storage directory, scraping static targets labelled the way the Prometheus Operator
labels a ServiceMonitor's targets, with ``honor_labels`` as the ServiceMonitor says.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from epctl.kube.client import NAMESPACES, SECRETS, SERVICES, KubeClient
from epctl.testing.backends import TCPBackend, free_port
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.kubectl import Kubectl
from epctl.testing.openstack import FakeOpenStack
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import CLUSTERENDPOINTS, cep, install_crd

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "manifests" / "overlays" / "monitoring"
RULES_TEST = ROOT / "tests" / "data" / "monitoring" / "rules-test.yaml"
SCRAPE = 1.0  # seconds: scrape and rule evaluation interval of the test's Prometheus
RATE_WINDOW = "10s"  # what the dashboard's $__rate_interval stands for here (Grafana: at least 4 scrapes)


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: install Debian's prometheus package (.ci/run does)"
    return path


async def overlay(kubectl: Kubectl) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((await kubectl("kustomize", str(OVERLAY))).stdout))


def rule_groups(built: list[dict[str, Any]]) -> dict[str, Any]:
    """The PrometheusRule's groups as a Prometheus rule file (what the Operator generates from it)."""
    rule = next(d for d in built if d["kind"] == "PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


def dashboard_of(built: list[dict[str, Any]]) -> dict[str, Any]:
    config_map = next(d for d in built if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("dashboard"))
    return json.loads(config_map["data"]["epctl-dashboard.json"])  # type: ignore[no-any-return]


# --- the overlay, rendered ---------------------------------------------------------------------------------


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


async def test_the_service_monitor_selects_the_metrics_service_in_the_readme_namespace(kubectl: Kubectl) -> None:
    built = await overlay(kubectl)
    readme = (ROOT / "README.md").read_text()
    namespace = "epctl-system"
    assert f"kubectl apply -k manifests/overlays/monitoring   # into {namespace}" in readme
    monitor = next(d for d in built if d["kind"] == "ServiceMonitor")
    rule = next(d for d in built if d["kind"] == "PrometheusRule")
    assert monitor["metadata"]["namespace"] == rule["metadata"]["namespace"] == namespace
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [namespace]}
    services = [d for d in built if d["kind"] == "Service"
                and d["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
                and matches(monitor["spec"]["selector"]["matchLabels"], d["metadata"].get("labels") or {})]
    assert [s["metadata"]["name"] for s in services] == ["epctl-metrics"], "exactly the metrics Service"
    service = services[0]
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True, "epctl's namespace/service labels name the managed Services"
    port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    deployment = next(d for d in built if d["kind"] == "Deployment")
    assert deployment["metadata"]["namespace"] == namespace
    pod = deployment["spec"]["template"]
    assert matches(service["spec"]["selector"], pod["metadata"]["labels"]), "the Service selects the replicas"
    container_ports = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert port["targetPort"] in container_ports
    args = pod["spec"]["containers"][0].get("args", [])
    assert f"--metrics-addr=:{container_ports[port['targetPort']]}" in args or not any(
        a.startswith("--metrics-addr") for a in args), "the controller serves /metrics on that port"
    for d in built:
        if d["kind"] in ("ServiceMonitor", "PrometheusRule"):
            assert d["metadata"]["labels"]["release"] == "kube-prometheus-stack"


# --- the alerts, unit-tested ---------------------------------------------------------------------------------


async def test_every_alert_fires_after_its_for_and_stays_silent_otherwise(kubectl: Kubectl, tmp_path: Path) -> None:
    built = await overlay(kubectl)
    groups = rule_groups(built)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    (tmp_path / "rules-test.yaml").write_text(RULES_TEST.read_text())
    tested = yaml.safe_load(RULES_TEST.read_text())["tests"]
    alerts = {r["alert"] for g in groups["groups"] for r in g["rules"]}
    fired = {a["alertname"] for t in tested for a in t["alert_rule_test"] if a["exp_alerts"]}
    silent = {a["alertname"] for t in tested for a in t["alert_rule_test"] if not a["exp_alerts"]}
    assert fired == alerts and silent == alerts, "every alert has a firing and a silent case"
    check = await asyncio.create_subprocess_exec(tool("promtool"), "check", "rules", "rules.yaml", cwd=tmp_path,
                                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await check.communicate())[0].decode()
    assert check.returncode == 0, out
    run = await asyncio.create_subprocess_exec(tool("promtool"), "test", "rules", "rules-test.yaml", cwd=tmp_path,
                                               stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await run.communicate())[0].decode()
    assert run.returncode == 0 and "SUCCESS" in out, out


# --- a real Prometheus against real controllers ------------------------------------------------------------


class Prometheus:
    """Our own Prometheus process: static targets carrying the labels a ServiceMonitor's targets get."""

    def __init__(self, workdir: Path, targets: list[dict[str, Any]], rules: dict[str, Any]) -> None:
        self.workdir, self.port = workdir, free_port()
        (workdir / "rules.yaml").write_text(yaml.safe_dump(rules))
        config = {
            "global": {"scrape_interval": f"{SCRAPE:g}s", "evaluation_interval": f"{SCRAPE:g}s",
                       "scrape_timeout": f"{SCRAPE:g}s"},
            "rule_files": ["rules.yaml"],
            # the Operator's job for endpoint 0 of ServiceMonitor epctl-system/epctl; the job label is the
            # Service's name, as the Operator relabels it
            "scrape_configs": [{"job_name": "serviceMonitor/epctl-system/epctl/0", "honor_labels": True,
                                "static_configs": targets}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = (workdir / "log").open("wb")  # its own warnings, shown when it dies
        self.proc: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Prometheus:
        (self.workdir / "data").mkdir()
        self.proc = await asyncio.create_subprocess_exec(
            tool("prometheus"), f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn", stdout=asyncio.subprocess.DEVNULL, stderr=self.log)
        self.session = aiohttp.ClientSession(trust_env=False)

        async def ready() -> bool:
            assert self.proc is not None and self.proc.returncode is None, (self.workdir / "log").read_text()
            async with self.session.get(f"{self.base}/-/ready") as response:  # type: ignore[union-attr]
                return response.status == 200

        await eventually(ready, timeout=30, interval=0.1, message="prometheus ready")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.log.close()

    async def query(self, expr: str) -> list[dict[str, Any]]:
        assert self.session is not None
        async with self.session.get(f"{self.base}/api/v1/query", params={"query": expr}) as response:
            body = await response.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]  # type: ignore[no-any-return]

    async def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        assert self.session is not None
        async with self.session.get(f"{self.base}/api/v1/query_range", params={
                "query": expr, "start": str(start), "end": str(end), "step": str(step)}) as response:
            body = await response.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]  # type: ignore[no-any-return]


async def dump_dashboard(prom: Prometheus, dashboard: dict[str, Any], start: float, phases: list[tuple[str, float]],
                         path: str) -> None:
    """Every panel's series over the scenario, for tests/integration/render_dashboard.py (a PNG to look at
    the dashboard as a user does). Only with EPCTL_DASHBOARD_DUMP=FILE; the assertions never need it."""
    end = time.time()
    panels = []
    for p in dashboard["panels"]:
        overrides = {o["matcher"]["options"]: next(x["value"] for x in o["properties"] if x["id"] == "unit")
                     for o in p["fieldConfig"]["overrides"]}
        targets = []
        for t in p["targets"]:
            expr = t["expr"].replace("$__rate_interval", RATE_WINDOW).replace("$namespace", ".*")
            targets.append({"refId": t["refId"], "legendFormat": t["legendFormat"],
                            "unit": overrides.get(t["refId"], p["fieldConfig"]["defaults"]["unit"]),
                            "result": await prom.query_range(expr, start, end, 1.0)})
        panels.append({"title": p["title"], "targets": targets})
    await asyncio.to_thread(Path(path).write_text, json.dumps({"start": start, "phases": phases, "panels": panels}))


Result = dict[tuple[str, ...], float]


def by(result: list[dict[str, Any]], *labels: str) -> Result:
    """A query's answer as {label values: value}; NaN (an empty histogram) dropped as no answer."""
    out: Result = {}
    for sample in result:
        key = tuple(sample["metric"].get(label, "") for label in labels)
        assert key not in out, f"two series for {key}: not aggregated as the title says"
        value = float(sample["value"][1])
        if not math.isnan(value):
            out[key] = value
    return out


@asynccontextmanager
async def controller_process(api: KubeAPIServer, port: int, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "epctl.cli", "controller", "--kubeconfig", api.kubeconfig_path, "--allow-loopback",
        "--batch-delay", "0.05", "--metrics-addr", f"127.0.0.1:{port}", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env={**os.environ, "NO_PROXY": "*"})
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def target(port: int, namespace: str, pod: str) -> dict[str, Any]:
    """What the Operator's relabelling gives an endpoint of the epctl-metrics Service."""
    return {"targets": [f"127.0.0.1:{port}"], "labels": {
        "job": "epctl-metrics", "namespace": namespace, "service": "epctl-metrics", "endpoint": "metrics",
        "pod": pod, "container": "epctl"}}


def port_spec(name: str, port: int, target_port: int) -> dict[str, Any]:
    return {"name": name, "port": port, "targetPort": target_port, "hosts": ["127.0.0.1"], "tcpSocket": {},
            "periodSeconds": 1, "failureThreshold": 1}


WEB = [f"web-{i}" for i in range(6)]  # apps (the shard pair): port "up" healthy, port "down" refused


async def test_a_real_prometheus_answers_every_panel_and_alert_with_the_scenarios_truth(
        api: KubeAPIServer, kubectl: Kubectl, tmp_path: Path) -> None:
    built = await overlay(kubectl)
    dashboard = dashboard_of(built)
    groups = rule_groups(built)
    setup = await KubeClient.connect(api.kubeconfig_path, user_agent="setup")
    await install_crd(setup)
    for namespace in ("apps", "legacy", "epctl-system"):
        await setup.request("POST", NAMESPACES.path(), body={"metadata": {"name": namespace}})
    ports = {"epctl-a": free_port(), "epctl-b": free_port(), "epctl-single": free_port()}
    shard = ["--shard", "--namespace", "apps", "--leader-election-namespace", "epctl-system", "--lease-duration",
             "3", "--renew-deadline", "2", "--retry-period", "0.3"]
    targets = [target(ports["epctl-a"], "epctl-system", "epctl-a"),
               target(ports["epctl-b"], "epctl-system", "epctl-b"),
               target(ports["epctl-single"], "epctl-dev", "epctl-single")]
    async with AsyncExitStack() as stack:
        up = await stack.enter_async_context(TCPBackend())
        down = free_port()
        # a Service someone else owns: the ClusterEndpoint of the same name is a ServiceConflict
        await setup.request("POST", SERVICES.path("apps"), body={
            "metadata": {"name": "taken"}, "spec": {"ports": [{"name": "up", "port": 80}]}})
        for name in WEB:
            await setup.request("POST", CLUSTERENDPOINTS.path("apps"), body=cep(
                name, [port_spec("up", 80, up.port), port_spec("down", 81, down)], namespace="apps"))
        await setup.request("POST", CLUSTERENDPOINTS.path("apps"), body=cep(
            "taken", [port_spec("up", 80, up.port)], namespace="apps"))
        await setup.request("POST", CLUSTERENDPOINTS.path("legacy"), body=cep(
            "db", [port_spec("up", 80, up.port)], namespace="legacy"))
        await setup.request("POST", CLUSTERENDPOINTS.path("legacy"), body=cep(
            "cache", [port_spec("down", 81, down)], namespace="legacy"))
        # OpenStack discovery (no probe: a discovered VM is ready while the cloud lists it)
        cloud = await stack.enter_async_context(FakeOpenStack())
        cloud.add_server("vm-1", fixed=["10.0.0.7"])
        await setup.request("POST", SECRETS.path("legacy"), body={"metadata": {"name": "os"}, "stringData": {
            "OS_AUTH_URL": cloud.auth_url, "OS_APPLICATION_CREDENTIAL_ID": cloud.credentials.app_credential_id,
            "OS_APPLICATION_CREDENTIAL_SECRET": cloud.credentials.app_credential_secret}})
        await setup.request("POST", CLUSTERENDPOINTS.path("legacy"), body=cep(
            "vms", [{"name": "ssh", "port": 22}], namespace="legacy",
            discovery={"openstack": {"secretRef": {"name": "os"}, "pollSeconds": 1}}))
        a = await stack.enter_async_context(controller_process(api, ports["epctl-a"], *shard))
        b = await stack.enter_async_context(controller_process(api, ports["epctl-b"], *shard))
        await stack.enter_async_context(controller_process(api, ports["epctl-single"], "--namespace", "legacy",
                                                                  "--openstack-max-backoff", "1"))
        prom = await stack.enter_async_context(Prometheus(tmp_path, targets, groups))
        started, phases = time.time(), [("start", time.time())]

        panels = {p["title"]: p for p in dashboard["panels"]}
        queried: set[str] = set()

        def expr_of(title: str, ref: str) -> str:
            target_ = next(t for t in panels[title]["targets"] if t["refId"] == ref)
            queried.add(f"{title}/{ref}")
            return str(target_["expr"]).replace("$__rate_interval", RATE_WINDOW).replace("$namespace", ".*")

        rules = {r["alert"]: r for g in groups["groups"] for r in g["rules"]}

        async def holds(expr: str, labels: tuple[str, ...], check: Callable[[Result], bool], what: str,
                        timeout: float = 60) -> Result:
            last: list[Result] = []

            async def ok() -> bool:
                last[:] = [by(await prom.query(expr), *labels)]
                return check(last[0])

            try:
                await eventually(ok, timeout=timeout, interval=0.5, message=what)
            except AssertionError as err:
                raise AssertionError(f"{what}: {expr} answered {last}") from err
            return last[0]

        async def panel(title: str, ref: str, labels: tuple[str, ...],
                        want: dict[Any, float] | Callable[[Result], bool], timeout: float = 60) -> Result:
            check = want if callable(want) else (lambda got: got == want)
            return await holds(expr_of(title, ref), labels, check, f"panel {title!r} {ref}", timeout)

        async def alert(name: str, labels: tuple[str, ...], want: dict[Any, float]) -> None:
            await holds(rules[name]["expr"], labels, lambda got: got == want, f"alert {name} expression")
            # loaded as a rule file: pending (every `for:` is minutes), once per key, nothing else
            pending = {k: 1.0 for k in want}
            await holds(f'ALERTS{{alertname="{name}"}}', labels, lambda got: got == pending, f"ALERTS {name}")

        # --- steady state: six Services half failing, a conflict, a healthy and a failing legacy Service ---
        pods = {("epctl-a",), ("epctl-b",), ("epctl-single",)}
        P1 = "Ready / total endpoints per Service"
        legacy = {("legacy", "db"): 1.0, ("legacy", "vms"): 1.0}
        truth_ready = {("apps", w): 1.0 for w in WEB} | legacy | {("legacy", "cache"): 0.0}
        truth_total = {("apps", w): 2.0 for w in WEB} | legacy | {("legacy", "cache"): 1.0}
        # "taken" is probed (its ClusterEndpoint reports the hosts) but not published: not epctl's Service,
        # so no per-Service series (the fleet-wide counts below still include its probed host)
        await panel(P1, "A", ("namespace", "service"), truth_ready)
        await panel(P1, "B", ("namespace", "service"), truth_total)
        P2 = "Endpoints by readiness (sum over replicas)"
        await panel(P2, "A", ("state",), {("ready",): 9.0, ("not_ready",): 7.0})
        await panel(P2, "B", (), {(): 16.0})
        # the pair shares apps' 7 Services (each replica its own share), the single has legacy's 3
        await panel("Shard: members seen and targets owned, per replica", "B", ("pod",),
                    lambda got: set(got) == pods and sum(got.values()) == 10 and got[("epctl-single",)] == 3)
        await panel("Shard: members seen and targets owned, per replica", "A", ("pod",),
                    {("epctl-a",): 2.0, ("epctl-b",): 2.0, ("epctl-single",): 0.0})
        await panel("ClusterEndpoints not synced by reason (sum over replicas)", "A", ("reason",), {
            ("ServiceConflict",): 1.0, ("Pending",): 0.0, ("WriteRejected",): 0.0, ("WriteFailed",): 0.0,
            ("InvalidSpec",): 0.0})
        # every check runs every second: 8 succeed (6 web "up", taken, db), 7 fail (6 web "down", cache)
        await panel("Probes per second by type and result (sum over replicas)", "A", ("type", "result"),
                    lambda got: (0.6 * 8 <= got.get(("tcp", "success"), 0) <= 1.4 * 8
                                 and 0.6 * 7 <= got.get(("tcp", "failure"), 0) <= 1.4 * 7))
        P4 = "Probe duration p50 / p99 by type (all replicas' probes)"
        for ref in ("A", "B"):
            await panel(P4, ref, ("type",), lambda got: set(got) == {("tcp",)} and 0 < got[("tcp",)] < 0.25)
        P5 = "Probe start lateness p99 (all replicas) and event-loop lag (per replica)"
        await panel(P5, "A", (), lambda got: 0 < got.get((), -1) <= 1)
        await panel(P5, "B", ("pod",), lambda got: set(got) == pods and all(0 <= v < 1 for v in got.values()))
        P6 = "Probe load per replica: in flight, admitted per second, period stretch"
        await panel(P6, "A", ("pod",), lambda got: set(got) == pods and all(0 <= v <= 15 for v in got.values()))
        await panel(P6, "B", ("pod",), lambda got: set(got) == pods and all(v > 0 for v in got.values()))
        await panel(P6, "C", ("pod",), {p: 1.0 for p in pods})
        P12 = "Writing replicas (per replica, and replicas writing per deployment)"
        await panel(P12, "A", ("namespace", "pod"), {
            ("epctl-system", "epctl-a"): 1.0, ("epctl-system", "epctl-b"): 1.0, ("epctl-dev", "epctl-single"): 1.0})
        await panel(P12, "B", ("namespace",), {("epctl-system",): 2.0, ("epctl-dev",): 1.0})
        await panel("Watch restarts and relists per second (sum over replicas)", "A", ("resource", "reason"),
                    lambda got: all(v == 0 for (_, reason), v in got.items() if reason not in ("closed", "expired")))
        await panel("Watch restarts and relists per second (sum over replicas)", "B", ("resource",),
                    lambda got: all(v == 0 for v in got.values()))
        P15 = "Shard handovers per second per replica, ring convergence p99"
        await panel(P15, "A", ("pod", "direction"),
                    lambda got: {p for p, _ in got} == {"epctl-a", "epctl-b", "epctl-single"}
                    and all(v == 0 for (p, _), v in got.items() if p == "epctl-single"))
        # the pair's ring converged at start; later empty (no new ring within the window) is the truth too
        await panel(P15, "B", (), lambda got: all(0 < v <= 10 for v in got.values()))
        P13 = "OpenStack: servers per poller, failed polls per second by reason (sum over replicas)"
        await panel(P13, "A", ("poller",), lambda got: list(got.values()) == [1.0])
        await panel(P13, "B", ("reason",), lambda got: len(got) >= 9 and all(v == 0 for v in got.values()))
        await alert("EpctlEndpointsUnhealthy", ("namespace", "service"),
                    {("apps", w): 1.0 for w in WEB} | {("legacy", "cache"): 1.0})
        await alert("EpctlClusterEndpointsNotSynced", ("namespace", "reason"),
                    {("epctl-system", "ServiceConflict"): 1.0})
        for quiet in ("EpctlNoLeader", "EpctlShardRingSplit", "EpctlProbesDelayed", "EpctlWatchRestarts",
                      "EpctlAbsent"):
            await alert(quiet, ("namespace",), {})

        # --- every "up" host fails: each web Service's ready endpoint goes, and is written within seconds ---
        phases.append(("hosts and cloud fail", time.time()))
        await up.set_mode("closed")
        cloud.fail_next(10**6, 503, service="compute")  # and the cloud is out: the last good answer stays
        # the transitions' writes (slices of 6 web Services and db; "taken" is not written), seen while they
        # are inside the rate window: checked together
        P8 = "Writer: mean targets per batch (all replicas), API writes per second (sum over replicas)"
        P9 = "Failed syncs and API errors per second (sum over replicas)"
        await asyncio.gather(
            panel("Transition to slice write p99 (all replicas)", "A", (), lambda got: 0 < got.get((), 0) <= 10),
            panel(P8, "B", ("operation",), lambda got: sum(got.values()) > 0),
            panel(P8, "A", (), lambda got: 1 <= got.get((), 0) <= 7),  # at most the 7 Services written
            panel(P9, "A", ("result",), lambda got: set(got) <= {("conflict",), ("invalid",), ("error",)}
                  and got.get(("invalid",), 0) == 0 and got.get(("error",), 0) == 0),
            panel(P9, "B", ("code",), lambda got: all(code.startswith(("4", "0")) for (code,) in got)),
            panel(P13, "B", ("reason",), lambda got: got.get(("ServerError",), 0) > 0
                  and all(v == 0 for (r,), v in got.items() if r != "ServerError")))
        await panel(P13, "A", ("poller",), lambda got: list(got.values()) == [1.0])

        await panel(P2, "A", ("state",), {("ready",): 1.0, ("not_ready",): 15.0})
        await panel(P1, "A", ("namespace", "service"), {k: 1.0 if k == ("legacy", "vms") else 0.0 for k in truth_ready})
        await panel("Probes per second by type and result (sum over replicas)", "A", ("type", "result"),
                    lambda got: (got.get(("tcp", "success"), 0) == 0
                                 and 0.6 * 15 <= got.get(("tcp", "failure"), 0) <= 1.4 * 15))
        await alert("EpctlEndpointsUnhealthy", ("namespace", "service"),
                    {("apps", w): 2.0 for w in WEB} | {("legacy", "cache"): 1.0, ("legacy", "db"): 1.0})

        # --- both shard replicas stopped: no leader in epctl-system (once), the single still writes ---
        phases.append(("shard replicas stopped", time.time()))
        for proc in (a, b):
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(a.wait(), b.wait()), 20)
        await alert("EpctlNoLeader", ("namespace",), {("epctl-system",): 2.0})
        await panel(P12, "B", ("namespace",), {("epctl-dev",): 1.0})
        await panel(P2, "A", ("state",), {("ready",): 1.0, ("not_ready",): 2.0})
        await alert("EpctlAbsent", ("namespace",), {})
        if os.environ.get("EPCTL_DASHBOARD_DUMP"):
            await dump_dashboard(prom, dashboard, started, phases, os.environ["EPCTL_DASHBOARD_DUMP"])

    await setup.close()
    every = {f"{p['title']}/{t['refId']}" for p in dashboard["panels"] for t in p["targets"]}
    assert every - queried == set(), "every dashboard query is checked against the scenario"


def test_the_writer_operations_exported_from_the_start_are_the_writers() -> None:
    """rate() never sees a counter series' first increment: epctl_changes_total starts at 0 for every operation
    the writer records, so this list must not drift from the writer's."""
    import re

    from epctl.metrics import WRITE_OPERATIONS

    source = (ROOT / "epctl" / "kube" / "writer.py").read_text()
    recorded = set(re.findall(r'self\._(?:record|record_endpoints|count_ok)\(.*"([a-z_]+)"\)$', source, re.M))
    assert recorded == set(WRITE_OPERATIONS)


def test_the_openstack_error_reasons_exported_from_the_start_are_classifys() -> None:
    import inspect
    import re

    from epctl.metrics import OPENSTACK_ERROR_REASONS
    from epctl.sources.openstack import classify

    assert set(re.findall(r'return "([A-Za-z]+)", ', inspect.getsource(classify))) == set(OPENSTACK_ERROR_REASONS)


def test_the_watch_restart_reasons_exported_from_the_start_are_the_informers() -> None:
    """epctl_watch_restarts_total starts at 0 for every reason the informer can give but an HTTP code."""
    import re

    from epctl.kube.informer import RESTART_REASONS

    source = (ROOT / "epctl" / "kube" / "informer.py").read_text()
    given = set(re.findall(r'_restarted\("([a-z]+)"\)', source))
    given |= set(re.findall(r'reason = "([a-z]+)" if err\.reason == INACTIVITY else \(\s*"([a-z]+)"', source)[0])
    assert given == set(RESTART_REASONS)
