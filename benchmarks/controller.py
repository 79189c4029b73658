"""The controller at scale: N ClusterEndpoints x H hosts, TCP probes, against the test API server.

Processes: the controller runs here, pinned to core 0 on uvloop; the test API server
(``epctl dev-apiserver``) and the TCP backends (listening on 127.0.0.1..127.0.0.H) run in other
processes pinned to core 1. Every API request the controller makes is counted through the
client's ``on_response`` hook.

Reported:
- cold start: controller start -> every Service and slice written, and -> every endpoint ready;
- one host flip (the backend stops listening on one address, so N endpoints go unhealthy, then
  back): API writes per flip and latency from probe transition to the slice write (p50/p99);
- steady state: API writes during ``--steady`` seconds (target 0) and CPU use;
- RSS per endpoint (controller process, after cold start, minus before any ClusterEndpoint).

    python benchmarks/controller.py [--quick] [--ceps 1000] [--hosts 10] [--steady 300]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from benchmarks.common import apiserver_process, quantile, rss_bytes, write_report
from epctl.app import Controller, ControllerSettings
from epctl.assets import read_asset
from epctl.kube.client import CRDS, KubeClient
from epctl.probe.scheduler import Transition
from epctl.sources.clusterendpoint import CLUSTERENDPOINTS
from epctl.state import TargetKey
from epctl.testing.backends import free_port

# --- backends: one TCP port on H loopback addresses, switchable per address -------------------------

class _Accept(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


async def _backends(addresses: list[str], port: int, control: Any) -> None:
    loop = asyncio.get_running_loop()
    servers = {a: await loop.create_server(_Accept, a, port, backlog=65535, reuse_address=True) for a in addresses}
    control.send("ready")
    while True:
        command, address = await loop.run_in_executor(None, control.recv)
        if command == "stop":
            servers[address].close()
            await servers[address].wait_closed()
        else:
            servers[address] = await loop.create_server(_Accept, address, port, backlog=65535, reuse_address=True)
        control.send("done")


def backends_main(addresses: list[str], port: int, control: Any) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})
    import uvloop
    uvloop.run(_backends(addresses, port, control))


# --- measurement ------------------------------------------------------------------------------------

class Counting:
    """Counts every API request of the controller by (method, status)."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()

    def __call__(self, method: str, status: int) -> None:
        self.requests[(method, status)] += 1

    def by_method_since(self, snapshot: Counter[tuple[str, int]]) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (method, status), n in (self.requests - snapshot).items():
            if status < 400:
                out[method] += n
        return dict(out)

    def writes(self) -> int:
        return sum(n for (m, _), n in self.requests.items() if m in ("POST", "PUT", "PATCH", "DELETE"))


def _endpoints_updates() -> float:
    """v1 Endpoints updates so far (a PUT like a slice update; told apart by the writer's own counter)."""
    from epctl.metrics import CHANGES
    return float(CHANGES.labels("endpoints_update", "success")._value.get())


async def wait_until(condition: Any, timeout: float, step: float = 0.05) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError("benchmark condition not reached")
        await asyncio.sleep(step)
    return time.monotonic() - start


def all_ready(controller: Controller, ceps: int, hosts: int, ready: bool = True) -> bool:
    targets = controller.state.targets
    if len(targets) < ceps:
        return False
    return all(e.ready == ready for t in targets.values() for g in t.groups.values() for e in g.endpoints.values()
               ) and sum(len(g.endpoints) for t in targets.values() for g in t.groups.values()) == ceps * hosts


async def run(args: argparse.Namespace, kubeconfig: str, addresses: list[str], port: int,
              control: Any) -> dict[str, Any]:
    counting = Counting()
    await wait_until(lambda: os.path.exists(kubeconfig), 30)
    client = await KubeClient.connect(kubeconfig, pool_size=64, on_response=counting)
    await client.request("POST", CRDS.path(), body=yaml.safe_load(read_asset("crd.yaml")))
    await asyncio.sleep(0.2)
    rss_empty = rss_bytes()
    for i in range(args.ceps):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body={
            "apiVersion": "epctl.io/v1beta1", "kind": "ClusterEndpoint", "metadata": {"name": f"cep{i}"},
            "spec": {"ports": [{"name": "tcp", "port": 5432, "targetPort": port, "hosts": addresses,
                                "tcpSocket": {}, "periodSeconds": args.period, "failureThreshold": 2}]}})
    print(f"  created {args.ceps} ClusterEndpoints", file=sys.stderr)
    settings = ControllerSettings(metrics_addr=None, allow_loopback_hosts=True, write_concurrency=16,
                                  max_concurrent_probes=1000)
    controller = Controller(client, settings)
    transitions: dict[TargetKey, float] = {}
    latencies: list[float] = []
    source = controller.source
    original_transition, original_synced = source.on_transition, source.synced

    def on_transition(t: Transition) -> None:  # timestamp, then the real handler
        namespace, _, name = t.key.target.partition("/")
        transitions.setdefault((namespace, name), time.monotonic())
        original_transition(t)

    def synced(key: TargetKey) -> None:
        started = transitions.pop(key, None)
        if started is not None:
            latencies.append(time.monotonic() - started)
        original_synced(key)

    controller.scheduler.on_transition = on_transition
    controller.writer.reporter = type("Reporter", (), {"synced": staticmethod(synced),
                                                        "failed": staticmethod(source.failed)})()
    writes0 = counting.writes()
    t0 = time.monotonic()
    await controller.start()
    slices_written = await wait_until(lambda: sum(n for (m, c), n in counting.requests.items()
                                                  if m == "POST" and c == 201) >= 2 * args.ceps, 300)
    await wait_until(lambda: all_ready(controller, args.ceps, args.hosts), 300)
    await controller.writer.wait_idle(60)
    cold = {"slices_and_services_written_s": slices_written, "all_ready_s": time.monotonic() - t0,
            "writes": counting.writes() - writes0}
    print(f"  cold start: {cold}", file=sys.stderr)
    await asyncio.sleep(2)
    await controller.writer.wait_idle(60)
    await controller.status.flush(30)
    rss_full = rss_bytes()
    transitions.clear()
    latencies.clear()
    flips: dict[str, Any] = {}
    for action, expect in (("stop", False), ("start", True)):
        before = counting.writes()
        snapshot = Counter(counting.requests)
        endpoints_before = _endpoints_updates()
        control.send((action, addresses[-1]))
        await asyncio.get_running_loop().run_in_executor(None, control.recv)  # never block the loop under test

        def flipped(e: bool = expect) -> int:
            return sum(t.groups[next(iter(t.groups))].endpoints[addresses[-1]].ready is e
                       for t in controller.state.targets.values())

        try:
            await wait_until(lambda: flipped() == args.ceps, 3 * args.period + 120)
        except TimeoutError:
            raise TimeoutError(f"only {flipped()} of {args.ceps} endpoints flipped") from None
        await controller.writer.wait_idle(60)
        await controller.status.flush(30)
        await asyncio.sleep(1.5)
        by_kind = counting.by_method_since(snapshot)
        flips[action] = {"api_writes": counting.writes() - before, "per_clusterendpoint":
                         (counting.writes() - before) / args.ceps,
                         "slice_updates_per_clusterendpoint":
                             (by_kind.get("PUT", 0) - (_endpoints_updates() - endpoints_before)) / args.ceps,
                         "endpoints_updates_per_clusterendpoint": (_endpoints_updates() - endpoints_before) / args.ceps,
                         "status_patches_per_clusterendpoint": by_kind.get("PATCH", 0) / args.ceps,
                         "events_per_clusterendpoint": by_kind.get("POST", 0) / args.ceps,
                         "latency_p50_ms": quantile(latencies, 0.5) * 1000,
                         "latency_p99_ms": quantile(latencies, 0.99) * 1000, "samples": len(latencies)}
        latencies.clear()
        print(f"  flip {action}: {flips[action]}", file=sys.stderr)
    before = counting.writes()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.monotonic()
    await asyncio.sleep(args.steady)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.monotonic() - wall0
    steady = {"seconds": args.steady, "api_writes": counting.writes() - before,
              "cpu_percent_of_one_core": 100 * ((cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime))
              / wall,
              "probes_per_s": None}
    await controller.stop()
    await client.close()
    return {"ceps": args.ceps, "hosts": args.hosts, "endpoints": args.ceps * args.hosts, "period": args.period,
            "cold_start": cold, "flips": flips, "steady": steady,
            "rss_bytes_per_endpoint": (rss_full - rss_empty) / (args.ceps * args.hosts),
            "requests": {f"{m} {c}": n for (m, c), n in sorted(counting.requests.items())}}


def table(r: dict[str, Any]) -> str:
    cold, flips, steady = r["cold_start"], r["flips"], r["steady"]
    return "\n".join([
        f"{r['ceps']} ClusterEndpoints x {r['hosts']} hosts = {r['endpoints']} endpoints, TCP probes, "
        f"{r['period']} s period",
        f"{'cold start: Services + slices written':<48} {cold['slices_and_services_written_s']:>8.1f} s",
        f"{'cold start: every endpoint ready and written':<48} {cold['all_ready_s']:>8.1f} s",
        f"{'cold start: API writes':<48} {cold['writes']:>8}",
        f"{'host down: API writes per ClusterEndpoint':<48} {flips['stop']['per_clusterendpoint']:>8.2f}"
        f"  (slice {flips['stop']['slice_updates_per_clusterendpoint']:.2f}, "
        f"Endpoints {flips['stop']['endpoints_updates_per_clusterendpoint']:.2f}, status "
        f"{flips['stop']['status_patches_per_clusterendpoint']:.2f}, event "
        f"{flips['stop']['events_per_clusterendpoint']:.2f})",
        f"{'host down: transition -> slice written p50/p99':<48} {flips['stop']['latency_p50_ms']:>8.0f} / "
        f"{flips['stop']['latency_p99_ms']:.0f} ms",
        f"{'host back: API writes per ClusterEndpoint':<48} {flips['start']['per_clusterendpoint']:>8.2f}",
        f"{'host back: transition -> slice written p50/p99':<48} {flips['start']['latency_p50_ms']:>8.0f} / "
        f"{flips['start']['latency_p99_ms']:.0f} ms",
        f"{'steady state: API writes in ' + str(steady['seconds']) + ' s':<48} {steady['api_writes']:>8}",
        f"{'steady state: controller CPU (% of one core)':<48} {steady['cpu_percent_of_one_core']:>8.0f}",
        f"{'RSS per endpoint':<48} {r['rss_bytes_per_endpoint']:>8.0f} B",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 ClusterEndpoints, 20 s steady state")
    parser.add_argument("--ceps", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--steady", type=float, default=300.0)
    parser.add_argument("--period", type=int, default=1, help="probe period in seconds")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "controller.json"))
    args = parser.parse_args()
    if args.quick:
        args.ceps, args.steady = 100, 20.0
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    addresses = [f"127.0.0.{i}" for i in range(1, args.hosts + 1)]
    port = free_port()
    ctx = mp.get_context("spawn")
    control, child = ctx.Pipe()
    backend = ctx.Process(target=backends_main, args=(addresses, port, child), daemon=True)
    backend.start()
    assert control.recv() == "ready"
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    import uvloop
    try:
        with apiserver_process() as kubeconfig:
            result = uvloop.run(run(args, kubeconfig, addresses, port, control))
    finally:
        backend.terminate()
    write_report("controller", result, table(result), args.json)


if __name__ == "__main__":
    main()
