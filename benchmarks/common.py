"""What every benchmark shares: machine facts, quantiles, RSS, and writing the report."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from collections.abc import Iterator
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
