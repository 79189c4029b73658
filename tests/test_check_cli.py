"""``epctl check`` as a user runs it: a real process probing real local servers."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
from pathlib import Path

from epctl.testing.backends import GRPCBackend, HTTPBackend, TCPBackend, UDPBackend
from epctl.testing.waiting import eventually

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
            assert first.split()[:2] == [b"CLUSTERENDPOINT", b"PORT"]  # the first decisions are in the table
            row = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert row.split()[4:6] == [b"healthy", b"connected"], row
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


ONE_PORT = """apiVersion: epctl.io/v1beta1
kind: ClusterEndpoint
metadata: {{name: one}}
spec:
  ports: [{{name: db, port: 1, targetPort: {port}, hosts: [127.0.0.1], {probe}}}]
"""


async def test_a_misspelt_probe_is_an_error_not_always_ready() -> None:
    code, out, err = await epctl("check", "-f", "-", "--allow-loopback",
                                 stdin=ONE_PORT.format(port=1, probe="tcpsocket: {enable: true}"))
    assert code == 2 and out == "", out
    assert 'unknown field "spec.ports[0].tcpsocket" (did you mean "tcpSocket"?' in err


async def test_other_kinds_are_skipped_and_old_api_versions_get_a_note(tmp_path: Path) -> None:
    async with TCPBackend() as tcp:
        text = ("apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n---\n"
                + ONE_PORT.format(port=tcp.port, probe="tcpSocket: {enable: true}").replace(
                    "epctl.io/v1beta1", "sealos.io/v1beta1"))
        code, out, err = await epctl("check", "-f", "-", "--allow-loopback", stdin=text)
        assert code == 0, out + err
        assert "stdin[0]: skipped Namespace (v1): not a ClusterEndpoint" in err
        assert "sealos.io/v1beta1 is the endpoints-operator's API" in err and "epctl import" in err
        code, _, err = await epctl("check", "-f", "-", stdin="apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
        assert code == 2 and "no ClusterEndpoint in the input" in err
    code, _, err = await epctl("check", "-f", "-", stdin=ONE_PORT.format(port=1, probe="tcpSocket: {}"))
    assert code == 2 and "(--allow-loopback accepts it" in err


async def test_input_is_bounded_alias_bombs_and_huge_values() -> None:
    levels = "abcdefghi"  # nine levels of nine aliases each: 9**9 values from under 500 bytes
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in itertools.pairwise(levels))
    code, _, err = await epctl("check", "-f", "-", stdin=bomb)
    assert code == 2 and "expands to more than" in err and len(err) < 1000
    code, _, err = await epctl("check", "-f", "-", stdin="a: &a [*a]\n")
    assert code == 2 and len(err) < 1000
    huge = ONE_PORT.format(port=1, probe="tcpSocket: {}").replace("127.0.0.1", "x" * 100_000)
    code, _, err = await epctl("check", "-f", "-", stdin=huge)
    assert code == 2 and "more characters)" in err and len(err) < 2000
    code, _, err = await epctl("check", "-f", "-", stdin="a: " + "b" * (4 * 1024 * 1024) + "\n")
    assert code == 2 and "larger than 3 MiB" in err


async def test_duration_counts_from_the_start() -> None:
    async with TCPBackend() as tcp:
        await tcp.set_mode("closed")  # failureThreshold 3 at 1 s: undecided for ~3 s
        started = asyncio.get_running_loop().time()
        code, out, _ = await epctl("check", "-f", "-", "--allow-loopback", "--watch", "--duration", "1.5",
                                   stdin=ONE_PORT.format(port=tcp.port, probe="tcpSocket: {}"))
        took = asyncio.get_running_loop().time() - started
        assert took < 1.5 + 5.0, took  # interpreter start included; was duration + the whole decision
        assert out.startswith("CLUSTERENDPOINT") and code == 1


def _as_in_a_foreground_shell() -> None:
    """Ctrl-C reaches a foreground process, whose SIGINT is never ignored. A process started with it
    ignored (a background job of a non-interactive shell: ``cmd &`` ignores SIGINT for the whole tree)
    keeps ignoring it, by POSIX convention and Python's; so the child gets the default disposition
    whatever the test runner inherited (the test failed when the suite ran as such a background job)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_interrupt_exits_130_with_the_partial_report(tmp_path: Path) -> None:
    import signal

    async with HTTPBackend(status=503) as web:  # failureThreshold 30: undecided for 30 s
        path = tmp_path / "cep.yaml"
        path.write_text(ONE_PORT.format(port=web.port, probe="httpGet: {}, failureThreshold: 30"))
        for sig, expected in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "epctl.cli", "check", "-f", str(path), "--allow-loopback",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                preexec_fn=_as_in_a_foreground_shell)
            assert proc.stdout is not None and proc.stderr is not None
            await eventually(lambda: bool(web.requests), timeout=30, message="probing has started")
            proc.send_signal(sig)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == expected, (sig, proc.returncode, err)
            assert out.startswith(b"CLUSTERENDPOINT") and b"interrupted: the report above is incomplete" in err
            web.requests.clear()


async def test_a_drained_host_is_shown_terminating() -> None:
    async with TCPBackend() as tcp:
        manifest = f"""apiVersion: epctl.io/v1beta1
kind: ClusterEndpoint
metadata: {{name: db, annotations: {{epctl.io/drain: 127.0.0.1}}}}
spec:
  ports:
  - {{name: pg, port: 5432, targetPort: {tcp.port}, hosts: [127.0.0.1], tcpSocket: {{}}}}
"""
        code, out, err = await epctl("check", "-f", "-", "--allow-loopback", "-o", "json", stdin=manifest)
        endpoint = json.loads(out)["clusterEndpoints"][0]["ports"][0]["endpoints"][0]
        assert (code, endpoint["state"]) == (0, "healthy"), err
        assert endpoint["conditions"] == {"ready": False, "serving": True, "terminating": True}
async def test_database_role_probe_with_credentials_from_a_secret_in_the_input(tmp_path: Path) -> None:
    """A real Redis primary and replica; the Secret comes along in the input, its value never printed."""
    from epctl.testing.databases import PASSWORD, RedisPair

    pair = await asyncio.to_thread(lambda: RedisPair().start())
    try:
        path = tmp_path / "db.yaml"
        path.write_text(f"""apiVersion: v1
kind: Secret
metadata: {{name: cache-probe, namespace: prod}}
stringData: {{password: {PASSWORD}}}
---
apiVersion: epctl.io/v1beta1
kind: ClusterEndpoint
metadata: {{name: cache, namespace: prod}}
spec:
  ports:
  - {{name: redis, port: 6379, targetPort: {pair.port}, hosts: [127.0.0.2, 127.0.0.3],
     redis: {{expect: primary, secretRef: {{name: cache-probe}}}}}}
""")
        code, out, err = await epctl("check", "-f", str(path), "--allow-loopback", "-o", "json")
        assert code == 1, out + err  # the replica is not the primary
        report = json.loads(out)
        endpoints = report["clusterEndpoints"][0]["ports"][0]["endpoints"]
        assert {(e["address"], e["state"]) for e in endpoints} == {("127.0.0.2", "healthy"),
                                                                   ("127.0.0.3", "unhealthy")}, report
        assert next(e["reason"] for e in endpoints if e["address"] == "127.0.0.3").startswith("is replica")
        assert PASSWORD not in out + err and "skipped Secret" not in err
        path.write_text(path.read_text().replace("secretRef: {name: cache-probe}", "secretRef: {name: other}"))
        code, out, err = await epctl("check", "-f", str(path), "--allow-loopback")
        assert code == 1 and "Secret other is not in the input" in out, out + err
    finally:
        pair.close()
