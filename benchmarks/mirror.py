"""Service mirroring at scale: P mirrored pairs x E endpoints, one source change at a time.

The test API server runs in its own process (core 1); the controller runs here (core 0). After
every pair is mirrored, ``--changes`` times one endpoint of a random source flips readiness; we
measure the time from the source write returning to the target's slice write completing (the
writer's report), and the controller's API writes per change.

    python benchmarks/mirror.py [--pairs 200] [--endpoints 50] [--changes 50]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from benchmarks.common import apiserver_process, client_with_crd, quantile, write_report
from benchmarks.controller import Counting, wait_until
from epctl.app import Controller, ControllerSettings
from epctl.kube.client import ENDPOINTSLICES, SERVICES
from epctl.state import TargetKey


async def run(args: argparse.Namespace, kubeconfig: str) -> dict[str, Any]:
    counting = Counting()
    client = await client_with_crd(kubeconfig, on_response=counting)
    for i in range(args.pairs):
        await client.request("POST", SERVICES.path("default"), body={
            "metadata": {"name": f"src{i}"}, "spec": {"ports": [{"name": "https", "port": 443}]}})
        await client.request("POST", ENDPOINTSLICES.path("default"), body={
            "metadata": {"name": f"src{i}", "labels": {"kubernetes.io/service-name": f"src{i}"}},
            "addressType": "IPv4", "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
            "endpoints": [{"addresses": [f"10.{i // 200}.{i % 200}.{e + 1}"], "conditions": {"ready": True}}
                          for e in range(args.endpoints)]})
        await client.request("POST", SERVICES.path("default"), body={
            "metadata": {"name": f"dst{i}", "annotations": {"epctl.io/mirror-from": f"default/src{i}"}},
            "spec": {"ports": [{"name": "api", "port": 443, "targetPort": "https"}]}})
    print(f"  created {args.pairs} pairs", file=sys.stderr)
    controller = Controller(client, ControllerSettings(metrics_addr=None, write_concurrency=16))
    synced_at: dict[TargetKey, float] = {}
    original = controller.writer.reporter

    class Reporter:
        def synced(self, key: TargetKey) -> None:
            synced_at[key] = time.monotonic()
            if original:
                original.synced(key)

        def failed(self, key: TargetKey, reason: str, message: str, permanent: bool) -> None:
            if original:
                original.failed(key, reason, message, permanent)

    controller.writer.reporter = Reporter()
    start = time.monotonic()
    await controller.start()
    await wait_until(lambda: sum(1 for k in synced_at if k[1].startswith("dst")) >= args.pairs, 300)
    cold = time.monotonic() - start
    await controller.writer.wait_idle(60)
    latencies: list[float] = []
    writes: list[int] = []
    rng = random.Random(1)
    for _ in range(args.changes):
        i = rng.randrange(args.pairs)
        source = await client.request("GET", ENDPOINTSLICES.path("default", f"src{i}"))
        endpoint = source["endpoints"][rng.randrange(args.endpoints)]
        endpoint["conditions"] = {"ready": not endpoint["conditions"].get("ready", True)}
        await controller.writer.wait_idle(30)
        before = counting.writes()
        synced_at.pop(("default", f"dst{i}"), None)
        await client.request("PUT", ENDPOINTSLICES.path("default", f"src{i}"), body=source)
        changed = time.monotonic()
        await wait_until(lambda i=i: ("default", f"dst{i}") in synced_at, 30, step=0.001)  # type: ignore[misc]
        latencies.append(synced_at[("default", f"dst{i}")] - changed)
        await controller.writer.wait_idle(30)
        writes.append(counting.writes() - before - 1)  # minus our own source write
    await controller.stop()
    await client.close()
    return {"pairs": args.pairs, "endpoints_per_source": args.endpoints, "changes": args.changes,
            "cold_start_all_mirrored_s": cold, "latency_p50_ms": quantile(latencies, 0.5) * 1000,
            "latency_p99_ms": quantile(latencies, 0.99) * 1000,
            "writes_per_change": sum(writes) / len(writes) if writes else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--endpoints", type=int, default=50)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "mirror.json"))
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    import uvloop
    with apiserver_process() as kubeconfig:
        result = uvloop.run(run(args, kubeconfig))
    table = "\n".join([
        f"{result['pairs']} mirrored pairs x {result['endpoints_per_source']} endpoints, "
        f"{result['changes']} single-endpoint source changes",
        f"{'cold start: every target mirrored':<44} {result['cold_start_all_mirrored_s']:>8.1f} s",
        f"{'source change -> target slice written p50/p99':<44} {result['latency_p50_ms']:>8.0f} / "
        f"{result['latency_p99_ms']:.0f} ms",
        f"{'controller API writes per source change':<44} {result['writes_per_change']:>8.2f}"])
    write_report("mirror", result, table, args.json)


if __name__ == "__main__":
    main()
