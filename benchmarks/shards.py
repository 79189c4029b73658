"""Shard capacity: probes per second with 1, 2 and 4 ``epctl controller --shard`` processes.

Every member is a real process (``python -m epctl.cli controller --shard``) pinned to one core
(member i to core i mod cores), against ``epctl dev-apiserver`` in another process. The checks ask
more probes per second than the members can start, so each member runs saturated (its period
stretch > 1) and the probe rate it reaches is its capacity; the anchor is the same run with one
member. Reported per member count: probes/s in total and per core used, each member's stretch and
CPU, API writes/s, and the ratio to one member.

The hosts are 127.0.0.x on a port nothing listens on: the kernel answers each SYN with a reset, so
no backend process competes with the members for the two cores (a listening backend would have to
accept every connection in user space). The probes fail; after the first transitions nothing
changes, so what is measured is the probe engine, not the write path.

    python -m benchmarks.shards            # 3,000 ClusterEndpoints x 10 hosts at 1 s (30,000 probes/s asked)
    python -m benchmarks.shards --quick
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.request
from typing import Any

from benchmarks.common import APISERVER, apiserver_process, process_cpu_seconds, write_report
from epctl.kube.client import KubeClient
from epctl.sources.clusterendpoint import CLUSTERENDPOINTS
from epctl.testing.backends import free_port
from tests.integration.controller_helpers import install_crd

CORES = os.cpu_count() or 1
RETRY_PERIOD = 2.0  # the default: each member renews its Lease (one write) this often


def scrape(port: int) -> dict[str, float]:
    """Sums of the metrics this benchmark reads from one member's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {"probes": 0.0, "writes": 0.0}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("epctl_probes_total{"):
            out["probes"] += float(value)
        elif name.startswith("epctl_api_requests_total{") and re.search(r'verb="(POST|PUT|PATCH|DELETE)"', name):
            out["writes"] += float(value)
        elif name in ("epctl_shard_members", "epctl_leader", "epctl_probe_period_stretch",
                      "epctl_shard_targets_owned"):
            out[name] = float(value)
    return out


def start_member(kubeconfig: str, core: int, port: int, log_dir: str | None) -> subprocess.Popen[bytes]:
    """One member with the shipped Lease timing (15/10/2 s), logging warnings to ``log_dir`` if given."""
    args = [sys.executable, "-m", "epctl.cli", "controller", "--kubeconfig", kubeconfig, "--shard",
            "--leader-election-namespace", "default", "--allow-loopback", "--metrics-addr", f"127.0.0.1:{port}",
            "--log-level", "warning" if log_dir else "error", "--retry-period", str(RETRY_PERIOD)]
    log = open(os.path.join(log_dir, f"member-{port}.log"), "wb") if log_dir else subprocess.DEVNULL
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log,
                            preexec_fn=lambda: os.sched_setaffinity(0, {core}))


async def populate(kubeconfig: str, ceps: int, hosts: int, port: int) -> None:
    client = await KubeClient.connect(kubeconfig, user_agent="bench-setup")
    try:
        await install_crd(client)
        addresses = [f"127.0.1.{i}" for i in range(1, hosts + 1)]
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                await client.request("POST", CLUSTERENDPOINTS.path("default"), body={
                    "apiVersion": "epctl.io/v1beta1", "kind": "ClusterEndpoint", "metadata": {"name": f"cep-{i}"},
                    "spec": {"ports": [{"name": "p", "port": 80, "targetPort": port, "hosts": addresses,
                                        "tcpSocket": {}, "periodSeconds": 1, "timeoutSeconds": 1,
                                        "failureThreshold": 1}]}})

        await asyncio.gather(*(one(i) for i in range(ceps)))
    finally:
        await client.close()


def wait(condition: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(what)
        time.sleep(0.5)
    return time.monotonic() - start


def settle(ports: list[int], count: int, window: float = 5.0, timeout: float = 900.0) -> float:
    """Wait out the cold start (every ClusterEndpoint's first slice, status and Events): until the
    members write little more than their Lease renewals (one per retry period each) for ``window``
    seconds. Returns how long that took."""
    start = time.monotonic()
    last = sum(scrape(p)["writes"] for p in ports)
    while True:
        time.sleep(window)
        now = sum(scrape(p)["writes"] for p in ports)
        if now - last <= 1.5 * count * window / RETRY_PERIOD:
            return time.monotonic() - start - window
        if time.monotonic() - start > timeout:
            raise TimeoutError("the cold start's writes did not end")
        last = now


def run_members(count: int, args: argparse.Namespace) -> dict[str, Any]:
    closed = free_port()
    with apiserver_process(core=None) as kubeconfig:
        wait(lambda: os.path.exists(kubeconfig), 30, "API server")
        asyncio.run(populate(kubeconfig, args.ceps, args.hosts, closed))
        ports = [free_port() for _ in range(count)]
        procs = [start_member(kubeconfig, i % CORES, ports[i], args.log_dir) for i in range(count)]
        try:
            def converged() -> bool:
                try:
                    samples = [scrape(p) for p in ports]
                except OSError:
                    return False
                return all(s.get("epctl_shard_members") == count and s.get("epctl_leader") == 1 for s in samples)

            converge_s = wait(converged, 120, "members converged")
            settle_s = converge_s + settle(ports, count)
            time.sleep(args.warmup)
            before = [scrape(p) for p in ports]
            cpu0 = [process_cpu_seconds(p.pid) for p in procs]
            api0 = process_cpu_seconds(APISERVER["pid"])
            t0 = time.monotonic()
            time.sleep(args.seconds)
            after = [scrape(p) for p in ports]
            cpu1 = [process_cpu_seconds(p.pid) for p in procs]
            api1 = process_cpu_seconds(APISERVER["pid"])
            elapsed = time.monotonic() - t0
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(20)
    members = [{"core": i % CORES, "probes_per_s": (a["probes"] - b["probes"]) / elapsed,
                "writes_per_s": (a["writes"] - b["writes"]) / elapsed,
                "cpu_percent": (c1 - c0) / elapsed * 100, "stretch": a.get("epctl_probe_period_stretch", 1.0),
                "targets_owned": a.get("epctl_shard_targets_owned", 0.0)}
               for i, (b, a, c0, c1) in enumerate(zip(before, after, cpu0, cpu1, strict=True))]
    total = sum(m["probes_per_s"] for m in members)
    cores = min(count, CORES)
    return {"members": count, "cores_used": cores, "converged_s": converge_s, "settled_s": settle_s,
            "probes_per_s": total,
            "probes_per_s_per_core": total / cores, "writes_per_s": sum(m["writes_per_s"] for m in members),
            "apiserver_cpu_percent": (api1 - api0) / elapsed * 100,
            "per_member": members}


def table(result: dict[str, Any]) -> str:
    rows = [f"{result['ceps']} ClusterEndpoints x {result['hosts']} hosts at 1 s = {result['demand']} probes/s asked "
            f"(TCP to a closed port), {CORES} cores",
            f"{'members':>7} {'cores':>5} {'cold s':>6} {'probes/s':>9} {'per core':>9} {'vs 1':>5} {'writes/s':>8} "
            f"{'API CPU':>7}  per member: probes/s, CPU %, stretch, targets"]
    base = result["runs"][0]["probes_per_s"]
    for run in result["runs"]:
        per = ", ".join(f"{m['probes_per_s']:.0f}/{m['cpu_percent']:.0f}%/{m['stretch']:.2f}/{m['targets_owned']:.0f}"
                        for m in run["per_member"])
        rows.append(f"{run['members']:>7} {run['cores_used']:>5} {run['settled_s']:>6.0f} {run['probes_per_s']:>9.0f} "
                    f"{run['probes_per_s_per_core']:>9.0f} {run['probes_per_s'] / base:>5.2f} "
                    f"{run['writes_per_s']:>8.1f} {run['apiserver_cpu_percent']:>6.0f}%  {per}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 ClusterEndpoints, members 1 and 2, 10 s")
    parser.add_argument("--ceps", type=int, default=3000)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--members", default="1,2,4")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds after the cold start's writes ended before measuring")
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement window")
    parser.add_argument("--log-dir", help="keep each member's warnings here (member-<port>.log)")
    parser.add_argument("--json", default="benchmarks/results/shards.json")
    args = parser.parse_args()
    if args.quick:
        args.ceps, args.members, args.warmup, args.seconds = 500, "1,2", 3.0, 10.0
    runs = [run_members(int(n), args) for n in args.members.split(",")]
    result = {"ceps": args.ceps, "hosts": args.hosts, "demand": args.ceps * args.hosts, "runs": runs,
              "ratio_2_vs_1": next((r["probes_per_s"] for r in runs if r["members"] == 2), 0.0)
              / runs[0]["probes_per_s"]}
    write_report("shards", result, table(result), args.json)


if __name__ == "__main__":
    main()
