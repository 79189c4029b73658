"""OpenStack discovery at scale: S servers, N ClusterEndpoints sharing Q queries.

Processes: the controller runs here, pinned to core 0 on uvloop; the test API server and the fake
OpenStack (Keystone + Nova, ``epctl.testing.openstack``) run in other processes on core 1. The
fake's request log counts OpenStack calls; the controller client's ``on_response`` hook counts
Kubernetes API writes; a ``DiscoveryMetrics`` hook records every poll's duration.

Reported:
- cold start: controller start -> every ClusterEndpoint's slices hold all its servers;
- poll time per query (p50/p99) against a bare openstacksdk listing of the same query, timed in
  this process in the same run (the ratio is epctl's overhead: thread hop, selection, publishing);
- OpenStack calls per poll cycle (every query once), Keystone calls after the first token, and
  what one poller per ClusterEndpoint would cost instead;
- one VM change (an address moves): Kubernetes API writes and latency to the slice write;
- steady state: API writes during a number of unchanged poll cycles (target 0).

    python benchmarks/discovery.py [--quick] [--servers 5000] [--ceps 100] [--queries 10]
"""

from __future__ import annotations

# (This file is not called openstack.py: a script's own directory is first on sys.path, and it
# would shadow the openstacksdk package.)
import argparse
import asyncio
import multiprocessing as mp
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from benchmarks.common import apiserver_process, client_with_crd, quantile, write_report
from benchmarks.controller import Counting
from epctl.app import Controller, ControllerSettings
from epctl.kube.client import ENDPOINTSLICES, SECRETS
from epctl.sources.clusterendpoint import CLUSTERENDPOINTS
from epctl.testing.waiting import eventually


def address(i: int) -> str:
    return f"10.{i // 62500 % 250}.{i // 250 % 250}.{i % 250 + 1}"


# --- the fake cloud in its own process, driven through a pipe ------------------------------------------

def cloud_main(servers: int, queries: int, conn: Any) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})
    import uvloop

    from epctl.testing.openstack import FakeOpenStack

    async def serve() -> None:
        async with FakeOpenStack() as cloud:
            for i in range(servers):
                cloud.add_server(f"q{i % queries}-vm{i}", fixed=[address(i)], metadata={"role": "db"})
            conn.send(cloud.auth_url)
            loop = asyncio.get_running_loop()
            while True:
                command = await loop.run_in_executor(None, conn.recv)
                if command[0] == "stop":
                    return
                if command[0] == "move":  # server i gets a new address
                    cloud.change_server(f"q{command[1] % queries}-vm{command[1]}",
                                        addresses={"private": cloud.address_list([command[2]])})
                    conn.send("ok")
                elif command[0] == "calls":
                    conn.send([(r.service, r.path) for r in cloud.requests])

    uvloop.run(serve())


class PollTimes:
    """``DiscoveryMetrics`` that records every poll."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.failures = 0

    def poll(self, poller: str, ok: bool, seconds: float, servers: int | None, reason: str) -> None:
        self.durations.append(seconds)
        self.failures += not ok

    def pollers(self, count: int) -> None:
        pass

    def forget(self, poller: str) -> None:
        pass


def bare_listing(auth_url: str, queries: int, repeats: int) -> dict[str, list[float]]:
    """The same queries in a plain thread, no event loop: the baselines.

    ``raw``: one authenticated GET per page and ``json()`` — the least any client can do;
    ``sdk``: openstacksdk's ``compute.servers()`` resource layer (what the seed used).
    """
    import openstack
    from openstack.config import loader

    region = loader.OpenStackConfig(load_yaml_config=False, load_envvars=False).get_one(
        auth_type="password", auth={"auth_url": auth_url, "username": "demo", "password": "secret-password",
                                    "project_name": "demo", "user_domain_id": "default",
                                    "project_domain_id": "default"})
    conn = openstack.connection.Connection(config=region)
    times: dict[str, list[float]] = {"raw": [], "sdk": []}
    for r in range(repeats + 1):
        for q in range(queries):
            filters = {"name": f"^q{q}-", "status": ["ACTIVE"]}
            start = time.perf_counter()
            found = conn.compute.get("/servers/detail", params=filters).json()["servers"]
            if r:  # the first round warms the token and version discovery
                times["raw"].append(time.perf_counter() - start)
            start = time.perf_counter()
            listed = [s.addresses for s in conn.compute.servers(details=True, **filters)]
            if r:
                times["sdk"].append(time.perf_counter() - start)
            assert found and len(listed) == len(found)
    return times


async def run(args: argparse.Namespace, kubeconfig: str, auth_url: str, cloud: Any) -> dict[str, Any]:
    counting = Counting()
    client = await client_with_crd(kubeconfig, on_response=counting)
    await client.request("POST", SECRETS.path("default"), body={"metadata": {"name": "os"}, "stringData": {
        "OS_AUTH_URL": auth_url, "OS_USERNAME": "demo", "OS_PASSWORD": "secret-password", "OS_PROJECT_NAME": "demo"}})
    per_query = args.servers // args.queries
    for i in range(args.ceps):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body={
            "apiVersion": "epctl.io/v1beta1", "kind": "ClusterEndpoint", "metadata": {"name": f"cep{i}"},
            "spec": {"ports": [{"name": "pg", "port": 5432}], "discovery": {"openstack": {
                "secretRef": {"name": "os"}, "nameRegex": f"^q{i % args.queries}-", "metadata": {"role": "db"},
                "pollSeconds": args.poll}}}})
    print(f"  created {args.ceps} ClusterEndpoints", file=sys.stderr)
    controller = Controller(client, ControllerSettings(metrics_addr=None, write_concurrency=16))
    polls = PollTimes()
    controller.discovery.metrics = polls

    def complete() -> bool:
        targets = controller.state.targets
        return len(targets) == args.ceps and all(
            sum(len(g.endpoints) for g in t.groups.values()) == per_query for t in targets.values())

    started = time.monotonic()
    await controller.start()
    await eventually(complete, 600, interval=0.05)
    await controller.writer.wait_idle()
    cold = time.monotonic() - started
    pollers = len(controller.discovery.pollers)
    print(f"  cold start {cold:.1f} s, {pollers} pollers", file=sys.stderr)

    # steady state: unchanged cloud, several poll cycles
    await controller.status.flush(5.0)
    await controller.events.drain(5.0)
    cloud.send(("calls",))
    calls_before = len(cloud.recv())
    writes_before = counting.requests.copy()
    polls_before = len(polls.durations)
    cpu_before = time.process_time()
    target_polls = polls_before + args.cycles * pollers
    await eventually(lambda: len(polls.durations) >= target_polls, 600, interval=0.1)
    await controller.writer.wait_idle()
    await controller.status.flush(5.0)
    cpu = time.process_time() - cpu_before
    steady_writes = {m: n for m, n in counting.by_method_since(writes_before).items() if m != "GET"}
    cloud.send(("calls",))
    calls = cloud.recv()[calls_before:]
    cycles = (len(polls.durations) - polls_before) / pollers
    compute_calls = sum(1 for service, _ in calls if service == "compute")
    identity_calls = sum(1 for service, _ in calls if service == "identity")

    # one VM change at a time: an address moves; 10 ClusterEndpoints see it
    latencies: list[float] = []
    writes_per_change: list[int] = []
    for n in range(args.changes):
        before = counting.requests.copy()
        new = f"10.200.0.{n + 1}"
        watchers = ",".join(f"cep{i}" for i in range(args.ceps) if i % args.queries == n % args.queries)
        await asyncio.sleep(random.uniform(0, args.poll))  # land anywhere in the poll cycle
        cloud.send(("move", n, new))
        cloud.recv()
        moved = time.monotonic()

        async def published(new: str = new, watchers: str = watchers) -> bool:
            slices = await client.request("GET", ENDPOINTSLICES.path("default"), query={
                "labelSelector": f"kubernetes.io/service-name in ({watchers})"})
            holding = {o["metadata"]["labels"]["kubernetes.io/service-name"] for o in slices["items"]
                       if any(new in e["addresses"] for e in o["endpoints"])}
            return len(holding) == len(watchers.split(","))

        await eventually(lambda: published(), 120, interval=0.05)
        latencies.append(time.monotonic() - moved)
        await controller.writer.wait_idle()
        await controller.status.flush(5.0)
        await controller.events.drain(5.0)
        await asyncio.sleep(args.poll)  # one more poll cycle: nothing else may follow the change
        writes_per_change.append(sum(n for m, n in counting.by_method_since(before).items() if m != "GET"))
    await controller.stop()
    await client.close()
    bare = await asyncio.to_thread(bare_listing, auth_url, args.queries, 3)
    ours = polls.durations[polls_before:]
    raw, sdk = bare["raw"], bare["sdk"]
    return {
        "servers": args.servers, "clusterendpoints": args.ceps, "queries": args.queries,
        "servers_per_query": per_query, "poll_seconds": args.poll, "pollers": pollers,
        "cold_start_seconds": round(cold, 2),
        "poll_p50_ms": round(quantile(ours, 0.5) * 1000, 1), "poll_p99_ms": round(quantile(ours, 0.99) * 1000, 1),
        "bare_raw_p50_ms": round(quantile(raw, 0.5) * 1000, 1),
        "bare_sdk_resources_p50_ms": round(quantile(sdk, 0.5) * 1000, 1),
        "poll_to_bare_raw_ratio": round(quantile(ours, 0.5) / quantile(raw, 0.5), 2),
        "poll_to_sdk_resources_ratio": round(quantile(ours, 0.5) / quantile(sdk, 0.5), 2),
        "compute_calls_per_cycle": round(compute_calls / cycles, 2),
        "identity_calls_in_steady_state": identity_calls,
        "compute_calls_per_cycle_one_poller_per_cep": args.ceps * -(-per_query // 1000),
        "steady_cycles": round(cycles, 1), "steady_api_writes": steady_writes,
        "steady_cpu_seconds_per_cycle": round(cpu / cycles, 3),
        "vm_change_writes": writes_per_change, "vm_change_watchers": args.ceps // args.queries,
        "vm_change_latency_p50_ms": round(quantile(latencies, 0.5) * 1000),
        "vm_change_latency_max_ms": round(max(latencies) * 1000),
        "poll_failures": polls.failures,
    }


def table(r: dict[str, Any]) -> str:
    rows = [
        ("servers / ClusterEndpoints / distinct queries", f"{r['servers']} / {r['clusterendpoints']} / {r['queries']}"),
        ("pollers (shared)", f"{r['pollers']}"),
        ("cold start: every slice holds every server", f"{r['cold_start_seconds']} s"),
        (f"poll time per query ({r['servers_per_query']} servers) p50 / p99",
         f"{r['poll_p50_ms']} / {r['poll_p99_ms']} ms"),
        ("baseline: bare authenticated GET + json(), same query, p50", f"{r['bare_raw_p50_ms']} ms"),
        ("baseline: openstacksdk compute.servers(), same query, p50", f"{r['bare_sdk_resources_p50_ms']} ms"),
        ("poll / bare GET ratio (epctl's overhead)", f"{r['poll_to_bare_raw_ratio']}"),
        ("poll / sdk resources ratio", f"{r['poll_to_sdk_resources_ratio']}"),
        ("Nova calls per poll cycle (all queries)", f"{r['compute_calls_per_cycle']}"),
        ("  ... with one poller per ClusterEndpoint", f"{r['compute_calls_per_cycle_one_poller_per_cep']}"),
        ("Keystone calls in steady state", f"{r['identity_calls_in_steady_state']}"),
        (f"steady state: API writes in {r['steady_cycles']} poll cycles", f"{sum(r['steady_api_writes'].values())}"),
        ("controller CPU per poll cycle", f"{r['steady_cpu_seconds_per_cycle']} s"),
        (f"one VM change ({r['vm_change_watchers']} ClusterEndpoints see it): API writes",
         f"{r['vm_change_writes']}"),
        ("  ... change -> every slice written p50 / max (poll period dominates)",
         f"{r['vm_change_latency_p50_ms']} / {r['vm_change_latency_max_ms']} ms"),
    ]
    return "\n".join(f"{name:<66} {value:>16}" for name, value in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 servers, 20 ClusterEndpoints")
    parser.add_argument("--servers", type=int, default=5000)
    parser.add_argument("--ceps", type=int, default=100)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--poll", type=int, default=5, help="pollSeconds of every ClusterEndpoint")
    parser.add_argument("--cycles", type=int, default=4, help="unchanged poll cycles measured")
    parser.add_argument("--changes", type=int, default=5, help="VM changes measured")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "discovery.json"))
    args = parser.parse_args()
    if args.quick:
        args.servers, args.ceps, args.cycles, args.changes = 1000, 20, 2, 2
    ctx = mp.get_context("spawn")
    control, child = ctx.Pipe()
    fake = ctx.Process(target=cloud_main, args=(args.servers, args.queries, child), daemon=True)
    fake.start()
    auth_url = control.recv()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    import uvloop
    try:
        with apiserver_process() as kubeconfig:
            result = uvloop.run(run(args, kubeconfig, auth_url, control))
    finally:
        control.send(("stop",))
        fake.join(10)
    write_report("discovery", result, table(result), args.json)


if __name__ == "__main__":
    main()
