"""A first install where every host fails: N ClusterEndpoints x H hosts that refuse connections.

What a platform team sees on the day they apply a large, partly wrong inventory: how long until every
ClusterEndpoint says so (status) and has its Event, how many Events that costs, and whether anything
is still written once it has all been said. Nothing listens on the probed port, so every probe is
refused at once (the cheapest failure; a blackholed host costs its timeout instead).

Processes: the controller runs here, pinned to core 0 on uvloop; the test API server in another process
pinned to core 1. Every API request the controller makes is counted.

    python benchmarks/first_install.py [--ceps 3000] [--hosts 10] [--period 1] [--quiet 10]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from benchmarks.common import apiserver_process, client_with_crd, raise_open_files_limit, write_report
from benchmarks.controller import Counting, wait_until
from epctl.app import Controller, ControllerSettings
from epctl.kube.client import EVENTS
from epctl.sources.clusterendpoint import CLUSTERENDPOINTS
from epctl.testing.backends import free_port


async def run(args: argparse.Namespace, kubeconfig: str) -> dict[str, Any]:
    counting = Counting()
    client = await client_with_crd(kubeconfig, on_response=counting)
    port = free_port()  # nobody listens: every probe is refused
    hosts = [f"127.0.0.{i}" for i in range(1, args.hosts + 1)]
    for i in range(args.ceps):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body={
            "apiVersion": "epctl.io/v1beta1", "kind": "ClusterEndpoint", "metadata": {"name": f"cep{i}"},
            "spec": {"ports": [{"name": "tcp", "port": 5432, "targetPort": port, "hosts": hosts, "tcpSocket": {},
                                "periodSeconds": args.period}]}})
    print(f"  created {args.ceps} ClusterEndpoints", file=sys.stderr)
    settings = ControllerSettings(metrics_addr=None, allow_loopback_hosts=True, write_concurrency=16,
                                  max_concurrent_probes=1000,
                                  **({"routing_first_bound": args.routing_first_bound}
                                     if args.routing_first_bound is not None else {}))
    controller = Controller(client, settings)
    t0 = time.monotonic()
    await controller.start()
    marks: dict[str, float] = {}

    def decided() -> int:
        """Checks whose thresholds decided them failing (undecided hosts are published not ready too)."""
        scheduler = controller.scheduler
        return sum(1 for key in scheduler.keys() if (state := scheduler.state(key)) and state.healthy is False)

    def phases() -> Counter[str]:
        return Counter(str((o.get("status") or {}).get("phase", "")) for o in controller.ceps.cache.values())

    await wait_until(lambda: len(controller.state.targets) >= args.ceps, 600)
    marks["targets_known_s"] = time.monotonic() - t0
    await wait_until(lambda: decided() >= args.ceps * args.hosts, 900, step=0.2)
    marks["every_host_decided_s"] = time.monotonic() - t0
    await controller.writer.wait_idle(600)
    marks["routing_written_s"] = time.monotonic() - t0
    await wait_until(lambda: phases().get("Unhealthy", 0) >= args.ceps, 900, step=0.2)
    marks["every_status_unhealthy_s"] = time.monotonic() - t0
    await wait_until(lambda: controller.events.created + controller.events.counted >= args.ceps, 900, step=0.2)
    marks["every_clusterendpoint_has_an_event_s"] = time.monotonic() - t0
    events_at_decision = controller.events.created
    writes_at_decision = counting.writes()
    await asyncio.sleep(args.quiet)  # what is still written once everything has been said
    quiet = {"seconds": args.quiet, "api_writes": counting.writes() - writes_at_decision,
             "events_created": controller.events.created - events_at_decision}
    listed = (await client.request("GET", EVENTS.path("default"))).get("items") or []
    reasons = Counter(str(e.get("reason")) for e in listed)
    result = {"ceps": args.ceps, "hosts": args.hosts, "endpoints": args.ceps * args.hosts, "period": args.period,
              **marks, "events_in_api": len(listed), "events_by_reason": dict(reasons),
              "events_per_clusterendpoint": len(listed) / args.ceps, "quiet_after": quiet,
              "stretch": controller.scheduler.stretch.factor,
              "requests": {f"{m} {c}": n for (m, c), n in sorted(counting.requests.items())}}
    await controller.stop()
    await client.close()
    return result


def table(r: dict[str, Any]) -> str:
    return "\n".join([
        f"{r['ceps']} ClusterEndpoints x {r['hosts']} hosts = {r['endpoints']} endpoints, all refusing, "
        f"{r['period']} s period",
        f"{'every target known (informers synced)':<50} {r['targets_known_s']:>8.1f} s",
        f"{'every host decided not ready':<50} {r['every_host_decided_s']:>8.1f} s",
        f"{'every slice and Endpoints written':<50} {r['routing_written_s']:>8.1f} s",
        f"{'every status phase Unhealthy':<50} {r['every_status_unhealthy_s']:>8.1f} s",
        f"{'every ClusterEndpoint has its Event':<50} {r['every_clusterendpoint_has_an_event_s']:>8.1f} s",
        f"{'Events in the API (per ClusterEndpoint)':<50} {r['events_in_api']:>8}  "
        f"({r['events_per_clusterendpoint']:.2f}; by reason {r['events_by_reason']})",
        f"{'writes in the ' + str(r['quiet_after']['seconds']) + ' s after':<50} "
        f"{r['quiet_after']['api_writes']:>8}  (Events {r['quiet_after']['events_created']})",
        f"{'period stretch at the end':<50} {r['stretch']:>8.2f}",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ceps", type=int, default=3000)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--period", type=int, default=1, help="probe period in seconds")
    parser.add_argument("--quiet", type=float, default=10.0, help="seconds watched after everything was said")
    parser.add_argument("--routing-first-bound", type=float, default=None,
                        help="seconds status patches and Events wait for routing writes at most (A/B of the default)")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "first_install.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    raise_open_files_limit()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    import uvloop
    with apiserver_process() as kubeconfig:
        result = uvloop.run(run(args, kubeconfig))
    result["routing_first_bound"] = args.routing_first_bound  # None: the default (epctl/kube/priority.py)
    write_report("first_install", result, table(result), args.json)


if __name__ == "__main__":
    main()
