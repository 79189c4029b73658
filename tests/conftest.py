"""Shared fixtures: a real (in-memory) API server over HTTPS, a real client, the real kubectl."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from epctl.kube.client import KubeClient
from epctl.testing.kubeapi import KubeAPIServer

KUBECTL = shutil.which("kubectl")


@pytest.fixture
async def api() -> AsyncIterator[KubeAPIServer]:
    async with KubeAPIServer(allow_loopback=True, bookmark_interval=0.5) as server:
        yield server


@pytest.fixture
async def client(api: KubeAPIServer) -> AsyncIterator[KubeClient]:
    kube = await KubeClient.connect(api.kubeconfig_path)
    try:
        yield kube
    finally:
        await kube.close()


@dataclass
class KubectlResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


class Kubectl:
    """Runs the real kubectl binary against the test server (asynchronously: the server shares our loop)."""

    def __init__(self, kubeconfig: str, workdir: str) -> None:
        self.env = {**os.environ, "KUBECONFIG": kubeconfig, "HOME": workdir, "KUBECACHEDIR": workdir + "/cache"}
        self.workdir = workdir

    async def __call__(self, *args: str, stdin: str | None = None, check: bool = True,
                       timeout: float = 30.0) -> KubectlResult:
        assert KUBECTL is not None
        proc = await asyncio.create_subprocess_exec(
            KUBECTL, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=self.env, cwd=self.workdir)
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), timeout)
        result = KubectlResult(proc.returncode or 0, out.decode(), err.decode())
        if check and result.code != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.code}): {result.stderr}")
        return result


@pytest.fixture
def kubectl(api: KubeAPIServer, tmp_path: Any) -> Kubectl:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed on this machine")
    return Kubectl(api.kubeconfig_path, str(tmp_path))
