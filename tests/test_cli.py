"""The epctl command as a user runs it: a real process."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest

from epctl import __version__
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.waiting import eventually


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "epctl.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_version() -> None:
    assert await run("version") == (0, f"epctl {__version__}\n", "")
    assert await run("--version") == (0, f"epctl {__version__}\n", "")


async def test_every_command_has_a_description() -> None:
    for command in ("version", "check", "import", "controller", "demo", "sidecar", "manager", "dev-apiserver"):
        code, out, _ = await run(command, "--help")
        _, _, rest = out.partition("\n\n")
        assert code == 0 and not rest.startswith(("options:", "positional")), (command, out[:300])


async def test_flag_errors_name_the_flag_and_the_range() -> None:
    code, _, err = await run("controller", "--max-endpoints-per-slice", "5000")
    assert code == 2 and "--max-endpoints-per-slice: must be between 1 and 1000" in err and "_slice_size" not in err
    code, _, err = await run("controller", env={"EPCTL_LOG_LEVEL": "verbose"})
    assert code == 2 and "EPCTL_LOG_LEVEL='verbose': must be one of debug, info, warning, error" in err
    assert "Traceback" not in err


def _no_cluster_env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    return {**env, "HOME": home, "NO_PROXY": "*"}


async def _run_env(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "epctl.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_startup_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    env = _no_cluster_env(str(tmp_path))
    code, _, err = await _run_env("controller", "--metrics-addr", "", env=env)
    assert code == 2 and err.count("\n") == 1 and "no cluster to talk to" in err and "~/.kube/config" in err, err
    code, _, err = await _run_env("controller", "--kubeconfig", str(tmp_path / "missing"), env=env)
    assert code == 2 and err == f"epctl controller: cannot read kubeconfig {tmp_path / 'missing'}: No such file or " \
                                "directory\n", err
    code, _, err = await _run_env("sidecar", "--service-name", "x", "--namespace", "y", env=env)
    assert code == 2 and err.count("\n") == 1 and "no cluster to talk to" in err, err


async def test_metrics_port_in_use_is_one_line(api: KubeAPIServer, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await _run_env("controller", "--kubeconfig", api.kubeconfig_path, "--metrics-addr",
                                      f"127.0.0.1:{port}", env=_no_cluster_env(str(tmp_path)))
    assert code == 2 and "Traceback" not in err, err
    assert f"epctl controller: cannot listen on 127.0.0.1:{port}: address already in use (choose another with " \
           "--metrics-addr)" in err


async def test_home_kubeconfig_is_the_fallback(api: KubeAPIServer, tmp_path: Path) -> None:
    (tmp_path / ".kube").mkdir()
    shutil.copy(api.kubeconfig_path, tmp_path / ".kube" / "config")
    code, _, err = await _run_env("import", "-n", "default", env=_no_cluster_env(str(tmp_path)))
    assert code == 0, err
    assert api.request_log, "the command reached the API server named in ~/.kube/config"


async def test_bad_env_value_is_a_clear_error() -> None:
    code, _, err = await run("dev-apiserver", env={"EPCTL_PORT": "eighty"})
    assert code == 2 and "EPCTL_PORT='eighty'" in err


async def test_dev_apiserver_serves_kubectl_and_cleans_up_on_sigterm(tmp_path: Path) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed on this machine")
    kubeconfig = f"{tmp_path}/kubeconfig"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "epctl.cli", "dev-apiserver", "--port", "0", "--write-kubeconfig", kubeconfig,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "TMPDIR": str(scratch)})
    try:
        assert proc.stdout is not None
        banner = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert banner.startswith("epctl dev-apiserver listening on https://127.0.0.1:")
        await eventually(lambda: os.path.exists(kubeconfig), message="kubeconfig written")
        kubectl = await asyncio.create_subprocess_exec(
            "kubectl", "--kubeconfig", kubeconfig, "get", "namespaces", "-o", "name",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "HOME": str(tmp_path)})
        out, err = await asyncio.wait_for(kubectl.communicate(), 30)
        assert kubectl.returncode == 0, err
        assert "namespace/default" in out.decode().split()
        assert [p.startswith("epctl-kubeapi-") for p in os.listdir(scratch)] == [True]  # cert, key, kubeconfig
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert os.listdir(scratch) == []
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
