"""``epctl controller`` and ``epctl demo`` as users run them: real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from epctl.assets import read_asset
from epctl.kube.client import KubeClient
from epctl.testing.backends import TCPBackend, free_port
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import CLUSTERENDPOINTS, cep, endpoints_of, install_crd

ROOT = Path(__file__).resolve().parent.parent


def test_packaged_assets_are_the_published_manifests() -> None:
    assert read_asset("crd.yaml") == (ROOT / "manifests" / "base" / "crd.yaml").read_text()
    assert read_asset("demo.yaml") == (ROOT / "examples" / "demo.yaml").read_text()


async def test_demo_shows_an_outage_and_recovery() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "epctl.cli", "demo", "--duration", "12", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    assert "phase=Healthy healthy=4/4 Ready=True" in text
    outage = text.index(">>> stopping the HTTP backend")
    assert "web: 127.0.0.1 unhealthy: connection refused" in text[outage:]
    assert "final phase: Healthy (4/4 healthy)" in text


async def test_demo_cleans_up_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM (a container runtime, ``timeout``, a CI runner) runs the same cleanup as the end of the demo:
    no /tmp/epctl-kubeapi-* (certificate, private key, kubeconfig) is left behind."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "epctl.cli", "demo", "--duration", "60", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.stdout is not None
    try:
        while b"controller running" not in await asyncio.wait_for(proc.stdout.readline(), 30):
            pass
        assert any(p.startswith("epctl-kubeapi-") for p in os.listdir(tmp_path))
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        assert os.listdir(tmp_path) == []
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_controller_command_serves_health_and_stops_on_sigterm(api: KubeAPIServer, client: KubeClient) -> None:
    await install_crd(client)
    port = free_port()
    async with TCPBackend() as db:
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("db", [
            {"name": "pg", "port": 5432, "targetPort": db.port, "hosts": ["127.0.0.1"], "tcpSocket": {}}]))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "epctl.cli", "controller", "--kubeconfig", api.kubeconfig_path,
            "--metrics-addr", f"127.0.0.1:{port}", "--allow-loopback", "--log-format", "json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "NO_PROXY": "*"})
        try:
            await eventually(lambda: endpoints_of(api, "db") == {("pg", "127.0.0.1"): True}, timeout=20,
                             message="controller process published the endpoint")
            async with aiohttp.ClientSession() as session:
                for path in ("/healthz", "/readyz"):
                    async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                        assert response.status == 200, await response.text()
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    body = await response.text()
            families = {f.name: f.type for f in text_string_to_metric_families(body)}
            expected = {
                "epctl_changes": "counter", "epctl_syncs": "counter", "epctl_endpoints_desired": "gauge",
                "epctl_num_endpoint_slices": "gauge", "epctl_desired_endpoint_slices": "gauge",
                "epctl_endpoints": "gauge", "epctl_probes": "counter", "epctl_probe_duration_seconds": "histogram",
                "epctl_probe_schedule_lateness_seconds": "histogram", "epctl_probes_in_flight": "gauge",
                "epctl_watch_events": "counter", "epctl_watch_restarts": "counter",
                "epctl_writer_batch_size": "histogram", "epctl_convergence_seconds": "histogram",
                "epctl_api_requests": "counter", "epctl_leader": "gauge", "epctl_build_info": "gauge"}
            assert {k: families.get(k) for k in expected} == expected
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for f in text_string_to_metric_families(body) for s in f.samples}
            assert samples[("epctl_leader", ())] == 1.0
            assert samples[("epctl_probes_total", (("result", "success"), ("type", "tcp")))] >= 1
            assert any(name == "epctl_api_requests_total" and dict(labels).get("verb") == "GET"
                       for name, labels in samples)
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            _, err = await asyncio.wait_for(proc.communicate(), 15)
            assert proc.returncode == 0 and time.monotonic() - started < 10
            assert b'"msg": "controller stopped"' in err
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
