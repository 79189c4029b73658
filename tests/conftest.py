"""Shared fixtures: a real (in-memory) API server over HTTPS, a real client, the real kubectl."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from epctl.kube.client import KubeClient
from epctl.testing.debian import ensure_installed
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.kubectl import KUBECTL, Kubectl


def pytest_sessionstart(session: pytest.Session) -> None:
    """The real servers the suite runs (Prometheus, PostgreSQL, MariaDB, Redis) are installed when
    missing, so the README's test command works on a fresh machine; never skipped."""
    ensure_installed()


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


@pytest.fixture
def kubectl(api: KubeAPIServer, tmp_path: Any) -> Kubectl:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed on this machine")
    return Kubectl(api.kubeconfig_path, str(tmp_path))
