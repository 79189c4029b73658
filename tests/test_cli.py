"""The epctl command as a user runs it: a real process."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys

import pytest

from epctl import __version__
from epctl.testing.waiting import eventually


async def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "epctl.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_version() -> None:
    assert await run("version") == (0, f"epctl {__version__}\n", "")


async def test_bad_env_value_is_a_clear_error() -> None:
    code, _, err = await run("dev-apiserver", env={"EPCTL_PORT": "eighty"})
    assert code == 2 and "EPCTL_PORT='eighty'" in err


async def test_dev_apiserver_serves_kubectl(tmp_path: object) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed on this machine")
    kubeconfig = f"{tmp_path}/kubeconfig"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "epctl.cli", "dev-apiserver", "--port", "0", "--write-kubeconfig", kubeconfig,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
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
    finally:
        proc.terminate()
        await proc.wait()
