"""Run the real kubectl binary against a test API server (asynchronously: the server shares our loop)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import dataclass
from typing import Any

from epctl.tasks import within

KUBECTL = shutil.which("kubectl")


@dataclass
class KubectlResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


class Kubectl:
    def __init__(self, kubeconfig: str, workdir: str) -> None:
        self.env = {**os.environ, "KUBECONFIG": kubeconfig, "HOME": workdir, "KUBECACHEDIR": workdir + "/cache"}
        self.workdir = workdir

    async def __call__(self, *args: str, stdin: str | None = None, check: bool = True,
                       timeout: float = 30.0) -> KubectlResult:
        if KUBECTL is None:
            raise RuntimeError("kubectl is not installed")
        proc = await asyncio.create_subprocess_exec(
            KUBECTL, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=self.env, cwd=self.workdir)
        out, err = await within(timeout, proc.communicate(stdin.encode() if stdin else None))
        result = KubectlResult(proc.returncode or 0, out.decode(), err.decode())
        if check and result.code != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.code}): {result.stderr}")
        return result
