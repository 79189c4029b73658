"""``epctl check`` as a user runs it: a real process probing real local servers."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from epctl.testing.backends import GRPCBackend, HTTPBackend, TCPBackend, UDPBackend

MANIFEST = """apiVersion: epctl.io/v1beta1
kind: ClusterEndpoint
metadata: {{name: shop, namespace: prod}}
spec:
  ports:
  - {{name: db, port: 5432, targetPort: {tcp}, hosts: [127.0.0.1], tcpSocket: {{}}}}
  - {{name: web, port: 80, targetPort: {http}, hosts: [127.0.0.1], httpGet: {{path: /healthz}}}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: {udp}, hosts: [127.0.0.1], udpSocket: {{data: ping}}}}
  - {{name: api, port: 9000, targetPort: {grpc}, hosts: [127.0.0.1], grpc: {{}}}}
"""


async def epctl(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "epctl.cli", *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "NO_PROXY": "*"})
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_all_healthy_exits_0_and_prints_hosts_and_conditions(tmp_path: Path) -> None:
    async with TCPBackend() as tcp, HTTPBackend() as web, UDPBackend() as udp, GRPCBackend() as grpc_backend:
        path = tmp_path / "cep.yaml"
        path.write_text(MANIFEST.format(tcp=tcp.port, http=web.port, udp=udp.port, grpc=grpc_backend.port))
        code, out, err = await epctl("check", "-f", str(path), "--allow-loopback")
        assert code == 0, out + err
        lines = out.splitlines()
        assert lines[0].split()[:5] == ["CLUSTERENDPOINT", "PORT", "HOST", "ADDRESS", "STATE"]
        states = {line.split()[1]: line.split()[4] for line in lines[1:5]}
        assert states == {"db": "healthy", "web": "healthy", "dns": "healthy", "api": "healthy"}
        assert "EndpointSlice conditions epctl would publish:" in out
        assert web.requests[-1]["path"] == "/healthz" and udp.received[-1] == b"ping"


async def test_unhealthy_host_exits_1_json_report(tmp_path: Path) -> None:
    async with TCPBackend() as tcp, HTTPBackend(status=503) as web, UDPBackend() as udp, \
            GRPCBackend() as grpc_backend:
        await tcp.set_mode("closed")
        path = tmp_path / "cep.yaml"
        path.write_text(MANIFEST.format(tcp=tcp.port, http=web.port, udp=udp.port, grpc=grpc_backend.port))
        code, out, _ = await epctl("check", "-f", str(path), "--allow-loopback", "-o", "json")
        assert code == 1
        report = json.loads(out)
        assert report["healthy"] is False
        ports = {p["name"]: p["endpoints"][0] for p in report["clusterEndpoints"][0]["ports"]}
        assert ports["db"]["state"] == "unhealthy" and ports["db"]["reason"] == "connection refused"
        assert ports["web"]["reason"] == "HTTP probe failed with statuscode: 503"
        assert ports["web"]["conditions"] == {"ready": False, "serving": False, "terminating": False}
        assert ports["api"]["conditions"]["ready"] is True
        assert len(web.requests) >= 3  # failureThreshold 3: a decision, not a first impression


async def test_invalid_input_exits_2_with_field_errors_from_stdin() -> None:
    bad = MANIFEST.format(tcp=0, http=80, udp=53, grpc=70000)
    code, out, err = await epctl("check", "-f", "-", stdin=bad)
    assert code == 2 and out == ""
    assert "stdin[0]: spec.ports[0].targetPort: must be a port number between 1 and 65535, got 0" in err
    assert "stdin[0]: spec.ports[3].targetPort: must be a port number between 1 and 65535, got 70000" in err
    assert "spec.ports[1].hosts[0]: 127.0.0.1 is a loopback address" in err  # no --allow-loopback
    code, _, err = await epctl("check", "-f", "/nonexistent.yaml")
    assert code == 2 and "No such file" in err


async def test_watch_prints_transitions(tmp_path: Path) -> None:
    async with TCPBackend() as tcp:
        path = tmp_path / "cep.yaml"
        path.write_text(f"""apiVersion: epctl.io/v1beta1
kind: ClusterEndpoint
metadata: {{name: one}}
spec:
  ports: [{{name: db, port: 1, targetPort: {tcp.port}, hosts: [127.0.0.1], tcpSocket: {{}},
           periodSeconds: 1, failureThreshold: 1}}]
""")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "epctl.cli", "check", "-f", str(path), "--allow-loopback", "--watch",
            "--duration", "30", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        try:
            first = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert b"healthy: connected" in first  # unknown -> healthy
            while b"watching for transitions" not in await asyncio.wait_for(proc.stdout.readline(), 20):
                pass
            await tcp.set_mode("closed")
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line.decode().split()[1:] == ["default/one", "db", "127.0.0.1", "unhealthy:", "connection",
                                                 "refused"]
        finally:
            proc.terminate()
            await proc.wait()


async def test_discovery_is_validated_but_not_evaluated(tmp_path: Path) -> None:
    async with TCPBackend() as tcp:
        path = tmp_path / "cep.yaml"
        path.write_text(f"""apiVersion: epctl.io/v1beta1
kind: ClusterEndpoint
metadata: {{name: db}}
spec:
  ports: [{{name: pg, port: 5432, targetPort: {tcp.port}, hosts: [127.0.0.1], tcpSocket: {{}}}}]
  discovery: {{openstack: {{secretRef: {{name: os}}, nameRegex: "^db-"}}}}
""")
        code, out, err = await epctl("check", "-f", str(path), "--allow-loopback")
        assert code == 0, out + err
        assert "spec.discovery.openstack is valid but not evaluated here" in err
        path.write_text(path.read_text().replace('nameRegex: "^db-"', 'nameRegex: "("'))
        code, out, err = await epctl("check", "-f", str(path), "--allow-loopback")
        assert code == 2 and "spec.discovery.openstack.nameRegex: invalid regular expression" in err
