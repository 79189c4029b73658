"""What every benchmark shares: machine facts, quantiles, RSS, and writing the report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def write_report(name: str, result: dict[str, Any], table: str, path: str) -> None:
    """Print the table and write ``{"benchmark", "machine", **result}`` as JSON to ``path``."""
    print(table)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({"benchmark": name, "machine": machine(), **result}, indent=2))
    print(f"\nwrote {path}")


APISERVER: dict[str, int] = {}  # {"pid": ...} of the running apiserver_process


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of another process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def apiserver_process(core: int | None = 1) -> Iterator[str]:
    """``epctl dev-apiserver`` in its own process pinned to ``core`` (None: any); yields its kubeconfig path."""
    from epctl.testing.backends import free_port

    kubeconfig = f"{tempfile.mkdtemp(prefix='epctl-bench-')}/kubeconfig"
    server = subprocess.Popen(
        [sys.executable, "-m", "epctl.cli", "dev-apiserver", "--port", str(free_port()), "--write-kubeconfig",
         kubeconfig, "--log-level", "warning"], stdout=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, {core}) if core is not None and hasattr(os, "sched_setaffinity")
        else None)
    APISERVER["pid"] = server.pid
    try:
        yield kubeconfig
    finally:
        server.terminate()
        server.wait(10)


class StallSampler:
    """Where the event loop stalls: a heartbeat on the loop every ``tick`` seconds and a watcher thread
    that, when the heartbeat is older than ``threshold``, samples the loop thread's stack (once per
    stall, at the point the threshold passed). The admission throttles probing when the loop lags
    above 50 ms, so a periodic synchronous chunk of work shows up as fewer probes at lower CPU; this
    names the chunk. Counts stalls by the innermost epctl frame (file:function) and keeps the
    longest stall per site."""

    def __init__(self, threshold: float = 0.04, tick: float = 0.005, enabled: bool = True) -> None:
        self.threshold, self.tick, self.enabled = threshold, tick, enabled
        self.sites: dict[str, list[float]] = {}  # site -> [count, longest stall seen by the watcher]
        self.stalls = 0
        self._beat = 0.0
        self._stop = False
        self._thread: Any = None
        self._handle: Any = None

    def _heartbeat(self) -> None:
        self._beat = time.monotonic()
        self._handle = asyncio.get_running_loop().call_later(self.tick, self._heartbeat)

    def start(self) -> None:
        if not self.enabled:
            return
        self._beat = time.monotonic()
        self._heartbeat()
        target = threading.get_ident()

        def watch() -> None:
            sampled_beat = -1.0
            while not self._stop:
                time.sleep(self.tick)
                beat = self._beat
                age = time.monotonic() - beat
                if age < self.threshold or beat == sampled_beat:
                    continue
                sampled_beat = beat
                frame = sys._current_frames().get(target)
                site = "?"
                while frame is not None:
                    name = frame.f_code.co_filename
                    if "/epctl/" in name and "/testing/" not in name:
                        site = f"{Path(name).parent.name}/{Path(name).name}:{frame.f_code.co_name}"
                        break
                    frame = frame.f_back
                self.stalls += 1
                entry = self.sites.setdefault(site, [0, 0.0])
                entry[0] += 1
                while self._beat == beat and not self._stop:  # how long this stall lasts
                    time.sleep(self.tick / 5)
                entry[1] = max(entry[1], time.monotonic() - beat)

        self._thread = threading.Thread(target=watch, name="stall-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        self._stop = True
        if self._handle is not None:
            self._handle.cancel()
        if self._thread is not None:
            self._thread.join(1)
        if not self.enabled:  # not measured is not "none"
            return {"threshold_ms": self.threshold * 1000, "stalls": None, "sites": []}
        top = sorted(self.sites.items(), key=lambda kv: -kv[1][0])[:10]
        return {"threshold_ms": self.threshold * 1000, "stalls": self.stalls,
                "sites": [{"site": s, "count": int(c), "longest_ms": round(m * 1000, 1)} for s, (c, m) in top]}


def raise_open_files_limit() -> None:
    """Thousands of probe sockets and connections at once: the soft limit up to the hard one."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def client_with_crd(kubeconfig: str, *, pool_size: int = 64,
                          on_response: Callable[[str, int], None] | None = None) -> Any:
    """What every controller benchmark starts with: wait for ``apiserver_process``'s kubeconfig, connect,
    install epctl's CRD and wait until the server serves ClusterEndpoints."""
    import yaml

    from epctl.assets import read_asset
    from epctl.kube.client import CRDS, ApiError, KubeClient
    from epctl.sources.clusterendpoint import CLUSTERENDPOINTS

    deadline = time.monotonic() + 30
    while not await asyncio.to_thread(os.path.exists, kubeconfig):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no kubeconfig at {kubeconfig}")
        await asyncio.sleep(0.05)
    client = await KubeClient.connect(kubeconfig, pool_size=pool_size, on_response=on_response)
    await client.request("POST", CRDS.path(), body=yaml.safe_load(read_asset("crd.yaml")))
    while True:
        try:
            await client.request("GET", CLUSTERENDPOINTS.path("default"), query={"limit": 1})
            return client
        except ApiError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
