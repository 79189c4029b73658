"""The controller at scale: N ClusterEndpoints x H hosts, TCP probes, against the test API server.

Processes: the controller runs here, pinned to core 0 on uvloop; the test API server
(``epctl dev-apiserver``) and the TCP backends (listening on 127.0.0.1..127.0.0.H) run in other
processes pinned to core 1. Every API request the controller makes is counted through the
client's ``on_response`` hook.

Reported:
- cold start: controller start -> every Service and slice written, and -> every endpoint ready;
- one host flip (the backend stops listening on one address, so N endpoints go unhealthy, then
  back): API writes per flip and latency from probe transition to the slice write (p50/p99);
- steady state (before the flips, every host healthy): API writes and slice writes during
  ``--steady`` seconds (target 0), unhealthy transitions (truth: 0), period stretch, CPU use;
- host down / back: time until every Service's slice says so, from the controller's slice watch
  (what kube-proxy routes by), against the bound failureThreshold (2) / successThreshold (1) x
  period x stretch + 2 s; and until every ClusterEndpoint synced (slices and the v1 Endpoints
  copy written: ``all_published_s``, the only measure before 2026-12-05);
- RSS per endpoint (controller process, after cold start, minus before any ClusterEndpoint).

    python benchmarks/controller.py [--quick] [--ceps 1000] [--hosts 10] [--steady 300] [--period 1]
                                    [--probe tcp|http]

At ``--period 1`` 1,000 x 10 asks for 10,000 probes/s, more than one core runs: the overload scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from benchmarks.common import (
    APISERVER,
    StallSampler,
    apiserver_process,
    client_with_crd,
    process_cpu_seconds,
    quantile,
    raise_open_files_limit,
    rss_bytes,
    write_report,
)
from epctl.app import Controller, ControllerSettings
from epctl.kube.client import KubeClient
from epctl.probe.scheduler import Transition
from epctl.sources.clusterendpoint import CLUSTERENDPOINTS
from epctl.state import TargetKey
from epctl.testing.backends import free_port

# --- backends: one TCP port on H loopback addresses, switchable per address -------------------------

class _Accept(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _HTTP200(asyncio.Protocol):
    """The least an HTTP server can do: answer every request 200 and close."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")  # type: ignore[attr-defined]
            self.transport.close()


async def _backends(addresses: list[str], port: int, control: Any, http: bool = False) -> None:
    loop = asyncio.get_running_loop()
    protocol = _HTTP200 if http else _Accept
    servers = {a: await loop.create_server(protocol, a, port, backlog=65535, reuse_address=True) for a in addresses}
    control.send("ready")
    while True:
        command, address = await loop.run_in_executor(None, control.recv)
        if command == "stop":
            servers[address].close()
            await servers[address].wait_closed()
        else:
            servers[address] = await loop.create_server(protocol, address, port, backlog=65535, reuse_address=True)
        control.send("done")


def backends_main(addresses: list[str], port: int, control: Any, http: bool = False) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})
    import uvloop
    uvloop.run(_backends(addresses, port, control, http))


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


def _probe_counts() -> dict[str, float]:
    from epctl.metrics import PROBES
    return {f"{s.labels['type']} {s.labels['result']}": s.value for metric in PROBES.collect() for s in metric.samples
            if s.name.endswith("_total") and s.value}


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


CGROUP_CPU = Path("/sys/fs/cgroup/cpu")  # cgroup v1; v2 would be /sys/fs/cgroup/<group>/cpu.max


def limit_cpu(cores: float) -> Path:
    """Put this process (the controller) under a CFS quota of ``cores`` CPUs, as ``resources.limits.cpu``
    does to a container. Needs a writable cgroup v1 cpu hierarchy (root in a VM or a privileged container)."""
    group = CGROUP_CPU / f"epctl-bench-{os.getpid()}"
    group.mkdir()
    (group / "cpu.cfs_period_us").write_text("100000")
    (group / "cpu.cfs_quota_us").write_text(str(int(cores * 100000)))
    (group / "cgroup.procs").write_text(str(os.getpid()))
    return group


def unlimit_cpu(group: Path) -> None:
    (CGROUP_CPU / "cgroup.procs").write_text(str(os.getpid()))
    group.rmdir()


async def write_ceiling(client: KubeClient, concurrency: int) -> dict[str, Any]:
    """The harness's own limit: how fast the test API server takes the writes one flip costs, from a plain
    client (no planning, no queue, no probing) sending the same kinds of writes with ``concurrency``
    requests in flight: one update per slice and per Endpoints (the host flipped back to not ready),
    one status merge patch and one Event per ClusterEndpoint. Run after the controller stopped, so
    the API server serves nobody else; epctl's flip time is then read against it."""
    from epctl.kube.client import ENDPOINTS, ENDPOINTSLICES, EVENTS, MERGE_PATCH
    from epctl.slices import MANAGED_BY, MANAGED_BY_LABEL
    slices = [s for s in (await client.request("GET", ENDPOINTSLICES.path("default"))).get("items") or []
              if (s["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY]
    endpoints = [e for e in (await client.request("GET", ENDPOINTS.path("default"))).get("items") or []
                 if e["metadata"]["name"].startswith("cep")]
    ceps = (await client.request("GET", CLUSTERENDPOINTS.path("default"))).get("items") or []

    def flip_slice(obj: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        last = obj["endpoints"][-1]["conditions"]
        last["ready"] = last["serving"] = not last.get("ready", True)
        return "PUT", ENDPOINTSLICES.path("default", obj["metadata"]["name"]), obj

    def flip_endpoints(obj: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        subset = obj["subsets"][0]
        ready, not_ready = subset.get("addresses") or [], subset.get("notReadyAddresses") or []
        if len(ready) > 1:
            not_ready.append(ready.pop())
        elif not_ready:
            ready.append(not_ready.pop())
        subset["addresses"], subset["notReadyAddresses"] = ready, not_ready
        return "PUT", ENDPOINTS.path("default", obj["metadata"]["name"]), obj

    def event(obj: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        meta = obj["metadata"]
        return "POST", EVENTS.path("default"), {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": "default"},
            "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"],
                               "namespace": "default", "uid": meta["uid"]},
            "type": "Warning", "reason": "Unhealthy", "message": "ceiling run", "count": 1,
            "source": {"component": "epctl-bench"}}

    async def send(requests: list[tuple[str, str, dict[str, Any]]], content_type: str | None = None) -> float:
        queue = iter(requests)
        start = time.monotonic()

        async def worker() -> None:
            for method, path, body in queue:
                if content_type:
                    await client.request(method, path, body=body, content_type=content_type)
                else:
                    await client.request(method, path, body=body)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.monotonic() - start

    routing_s = await send([flip_slice(s) for s in slices] + [flip_endpoints(e) for e in endpoints])
    status_s = await send([("PATCH", CLUSTERENDPOINTS.path("default", c["metadata"]["name"]) + "/status",
                            {"status": {"healthy": int(c.get("status", {}).get("healthy", 0)) - 1}})
                           for c in ceps], MERGE_PATCH)
    events_s = await send([event(c) for c in ceps])
    routing = len(slices) + len(endpoints)
    return {"concurrency": concurrency, "routing_writes": routing, "routing_s": routing_s,
            "routing_writes_per_s": routing / routing_s, "status_patches": len(ceps), "status_s": status_s,
            "events": len(ceps), "events_s": events_s,
            "all_s": routing_s + status_s + events_s,
            "writes_per_s": (routing + 2 * len(ceps)) / (routing_s + status_s + events_s)}


async def run(args: argparse.Namespace, kubeconfig: str, addresses: list[str], port: int,
              control: Any) -> dict[str, Any]:
    counting = Counting()
    client = await client_with_crd(kubeconfig, on_response=counting)
    rss_empty = rss_bytes()
    for i in range(args.ceps):
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body={
            "apiVersion": "epctl.io/v1beta1", "kind": "ClusterEndpoint", "metadata": {"name": f"cep{i}"},
            "spec": {"ports": [{"name": "tcp", "port": 5432, "targetPort": port, "hosts": addresses,
                                **({"httpGet": {"path": "/"}} if args.probe == "http" else {"tcpSocket": {}}),
                                "periodSeconds": args.period, "failureThreshold": 2}]}})
    print(f"  created {args.ceps} ClusterEndpoints", file=sys.stderr)
    settings = ControllerSettings(metrics_addr=None, allow_loopback_hosts=True, write_concurrency=16,
                                  max_concurrent_probes=1000,
                                  **({"routing_first_bound": args.routing_first_bound}
                                     if args.routing_first_bound is not None else {}))
    controller = Controller(client, settings)
    transitions: dict[TargetKey, float] = {}
    latencies: list[float] = []
    published: list[float] = []  # when each transition reached its slice (monotonic)
    decided: list[float] = []  # when each probe transition happened (monotonic)
    unhealthy_transitions = [0]
    source = controller.source
    original_transition, original_synced = source.on_transition, source.synced

    def on_transition(t: Transition) -> None:  # timestamp, then the real handler
        namespace, _, name = t.key.target.partition("/")
        transitions.setdefault((namespace, name), time.monotonic())
        if t.key.address == watched["address"] and t.healthy is watched["ready"]:  # the flip itself only
            watched["since"].setdefault((namespace, name), time.monotonic())
        decided.append(time.monotonic())
        unhealthy_transitions[0] += not t.healthy
        original_transition(t)

    def synced(key: TargetKey) -> None:
        started = transitions.pop(key, None)
        if started is not None:
            latencies.append(time.monotonic() - started)
            published.append(time.monotonic())
        original_synced(key)

    # the measure: when each Service's slice says the flipped host's new readiness, from the
    # controller's own slice watch (a slice is what kube-proxy routes by; ``synced`` above waits for
    # the Endpoints copy as well)
    slice_latencies: list[float] = []
    slice_published: list[float] = []
    watched: dict[str, Any] = {"address": None, "ready": None, "since": {}}

    def on_slice(event: Any) -> None:
        if watched["address"] is None or event.type == "DELETED":
            return
        meta = event.obj.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("labels", {}).get("kubernetes.io/service-name", ""))
        for endpoint in event.obj.get("endpoints") or ():
            if watched["address"] in endpoint.get("addresses", ()):
                if endpoint.get("conditions", {}).get("ready") is watched["ready"]:
                    started = watched["since"].pop(key, None)
                    if started is not None:
                        slice_latencies.append(time.monotonic() - started)
                        slice_published.append(time.monotonic())
                return

    controller.slices.subscribe(on_slice)
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
    # steady state first: every host healthy for --steady seconds; truth says 0 not-ready, 0 slice writes
    before = counting.writes()
    snapshot = Counter(counting.requests)
    unhealthy_transitions[0] = 0
    probes0 = _probe_counts()
    status0, events0 = controller.status.writes, (controller.events.created, controller.events.counted)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.monotonic()
    sampler = StallSampler(enabled=args.stall_sampler)
    sampler.start()
    await asyncio.sleep(args.steady)
    stalls = sampler.stop()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.monotonic() - wall0
    not_ready = sum(not e.ready for t in controller.state.targets.values() for g in t.groups.values()
                    for e in g.endpoints.values())
    probes = {k: v - probes0.get(k, 0.0) for k, v in _probe_counts().items() if v - probes0.get(k, 0.0)}
    steady = {"seconds": args.steady, "api_writes": counting.writes() - before,
              "slice_writes": counting.by_method_since(snapshot).get("PUT", 0),
              # which writes: a status patch per ClusterEndpoint when ProbesDelayed turns on or off
              "status_patches": controller.status.writes - status0,
              "events_created": controller.events.created - events0[0],
              "events_counted": controller.events.counted - events0[1],
              "probes_delayed": controller.scheduler.delayed,
              "false_unhealthy_transitions": unhealthy_transitions[0], "not_ready_at_end": not_ready,
              "cpu_percent_of_one_core": 100 * ((cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime))
              / wall, "period_stretch": controller.scheduler.stretch.factor,
              "admitted_probes_per_s": controller.scheduler.admission.rate,
              "probes": probes, "demand_per_s": controller.scheduler.demand, "loop_stalls": stalls}
    print(f"  steady: {steady}", file=sys.stderr)
    transitions.clear()
    latencies.clear()
    flips: dict[str, Any] = {}
    for action, expect in (("stop", False), ("start", True)):
        published.clear()
        latencies.clear()
        decided.clear()
        slice_latencies.clear()
        slice_published.clear()
        watched.update(address=addresses[-1], ready=expect, since={})
        stretch = controller.scheduler.stretch.factor
        before = counting.writes()
        snapshot = Counter(counting.requests)
        endpoints_before = _endpoints_updates()
        sampler = StallSampler(enabled=args.stall_sampler)
        sampler.start()
        control.send((action, addresses[-1]))
        await asyncio.get_running_loop().run_in_executor(None, control.recv)  # never block the loop under test
        changed_at = time.monotonic()
        api_cpu0, own_cpu0 = process_cpu_seconds(APISERVER["pid"]), resource.getrusage(resource.RUSAGE_SELF)

        def flipped(e: bool = expect) -> int:
            return sum(t.groups[next(iter(t.groups))].endpoints[addresses[-1]].ready is e
                       for t in controller.state.targets.values())

        try:
            await wait_until(lambda: flipped() == args.ceps, 3 * args.period + 120)
        except TimeoutError:
            raise TimeoutError(f"only {flipped()} of {args.ceps} endpoints flipped") from None
        await controller.writer.wait_idle(60)
        try:  # every Service's slice event, however late the watch delivers it (bounded)
            await wait_until(lambda: len(slice_latencies) >= args.ceps, 30)
        except TimeoutError:
            print(f"  only {len(slice_latencies)} of {args.ceps} slices seen on the watch", file=sys.stderr)
        busy = time.monotonic() - changed_at
        flip_stalls = sampler.stop()
        own_cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        api_cpu = (process_cpu_seconds(APISERVER["pid"]) - api_cpu0) / busy * 100
        own_cpu = ((own_cpu1.ru_utime - own_cpu0.ru_utime) + (own_cpu1.ru_stime - own_cpu0.ru_stime)) / busy * 100
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
                         "latency_p99_ms": quantile(latencies, 0.99) * 1000, "samples": len(latencies),
                         "all_published_s": (max(published) - changed_at) if published else None,
                         # from the slice watch: the slice alone (what kube-proxy reads)
                         "slice_latency_p50_ms": quantile(slice_latencies, 0.5) * 1000,
                         "slice_latency_p99_ms": quantile(slice_latencies, 0.99) * 1000,
                         "slice_samples": len(slice_latencies),
                         "all_slices_s": (max(slice_published) - changed_at)
                         if len(slice_published) == args.ceps else None,
                         # first probe transition -> last slice written: the span epctl spent writing
                         "writing_s": (max(published) - min(p - lat for p, lat in zip(published, latencies,
                                                                                       strict=True)))
                         if published else None,
                         # when the probes decided: the first and the last transition, from the change
                         "first_transition_s": (min(decided) - changed_at) if decided else None,
                         "last_transition_s": (max(decided) - changed_at) if decided else None,
                         "bound_s": (2 if action == "stop" else 1) * args.period * stretch + 2,
                         "controller_cpu_percent": own_cpu, "apiserver_cpu_percent": api_cpu,
                         "period_stretch": stretch, "loop_stalls": flip_stalls}
        latencies.clear()
        print(f"  flip {action}: {flips[action]}", file=sys.stderr)
    await controller.stop()
    # the harness's ceiling for the same writes, same API server, same run
    ceiling = await write_ceiling(client, settings.write_concurrency)
    print(f"  write ceiling: {ceiling}", file=sys.stderr)
    await client.close()
    return {"write_ceiling": ceiling,
            "ceps": args.ceps, "hosts": args.hosts, "endpoints": args.ceps * args.hosts, "period": args.period,
            "probe": args.probe,
            "cold_start": cold, "flips": flips, "steady": steady,
            "rss_bytes_per_endpoint": (rss_full - rss_empty) / (args.ceps * args.hosts),
            "requests": {f"{m} {c}": n for (m, c), n in sorted(counting.requests.items())}}


def _ceiling_rows(r: dict[str, Any]) -> list[str]:
    """The test API server's ceiling for one flip's writes (plain client) and epctl's flip against it."""
    c = r.get("write_ceiling")
    if not c:
        return []
    rows = [f"{'API server ceiling: routing writes (plain client)':<48} {c['routing_s']:>8.1f} s  "
            f"({c['routing_writes']} slice + Endpoints updates, {c['routing_writes_per_s']:.0f}/s at "
            f"{c['concurrency']} in flight)",
            f"{'API server ceiling: all of one flip' + chr(39) + 's writes':<48} {c['all_s']:>8.1f} s  "
            f"(+ {c['status_patches']} status patches, {c['events']} Events; {c['writes_per_s']:.0f} writes/s)"]
    for action, label in (("stop", "host down"), ("start", "host back")):
        flip = r["flips"][action]
        if flip.get("writing_s"):
            rows.append(f"{label + ': first transition -> last synced':<48} {flip['writing_s']:>8.1f} s  "
                        f"(the probes' phases spread transitions over a period; the ceiling's routing "
                        f"writes take {c['routing_s']:.1f} s; transition -> synced p99 "
                        f"{flip['latency_p99_ms'] / 1000:.1f} s)")
    return rows


def _slice_rows(label: str, flip: dict[str, Any], threshold: int) -> list[str]:
    """The issue's measure, from the slice watch: every Service's slice says the host's new state."""
    if flip.get("all_slices_s") is None:
        return []
    return [f"{label + ': transition -> slice (watch) p50/p99':<48} {flip['slice_latency_p50_ms']:>8.0f} / "
            f"{flip['slice_latency_p99_ms']:.0f} ms",
            f"{label + ' -> every slice says so (watch)':<48} {flip['all_slices_s']:>8.1f} s  "
            f"(bound {threshold} x period x stretch + 2 s = {flip['bound_s']:.1f} s)"]


def _decided_row(label: str, flip: dict[str, Any]) -> list[str]:
    """When the probes decided the flip, first and last ClusterEndpoint (before the writes)."""
    if flip.get("first_transition_s") is None:
        return []
    return [f"{label + ': probes decided, first / last':<48} {flip['first_transition_s']:>8.1f} / "
            f"{flip['last_transition_s']:.1f} s"]


def _stall_count(stalls: dict[str, Any]) -> str:
    return "not sampled" if stalls["stalls"] is None else str(stalls["stalls"])


def _sites(stalls: dict[str, Any], top: int = 3) -> str:
    return ", ".join(f"{s['site']} x{s['count']} (<= {s['longest_ms']:.0f} ms)" for s in stalls["sites"][:top])


def table(r: dict[str, Any]) -> str:
    cold, flips, steady = r["cold_start"], r["flips"], r["steady"]
    return "\n".join([
        f"{r['ceps']} ClusterEndpoints x {r['hosts']} hosts = {r['endpoints']} endpoints, {r['probe'].upper()} "
        f"probes, {r['period']} s period ({steady['demand_per_s']:.0f} probes/s asked)",
        f"{'cold start: Services + slices written':<48} {cold['slices_and_services_written_s']:>8.1f} s",
        f"{'cold start: every endpoint ready and written':<48} {cold['all_ready_s']:>8.1f} s",
        f"{'cold start: API writes':<48} {cold['writes']:>8}",
        f"{'host down: API writes per ClusterEndpoint':<48} {flips['stop']['per_clusterendpoint']:>8.2f}"
        f"  (slice {flips['stop']['slice_updates_per_clusterendpoint']:.2f}, "
        f"Endpoints {flips['stop']['endpoints_updates_per_clusterendpoint']:.2f}, status "
        f"{flips['stop']['status_patches_per_clusterendpoint']:.2f}, event "
        f"{flips['stop']['events_per_clusterendpoint']:.2f})",
        *_slice_rows("host down", flips["stop"], 2),
        f"{'host down: transition -> synced p50/p99':<48} {flips['stop']['latency_p50_ms']:>8.0f} / "
        f"{flips['stop']['latency_p99_ms']:.0f} ms  (slices and Endpoints written)",
        f"{'host down -> every ClusterEndpoint synced':<48} {flips['stop']['all_published_s']:>8.1f} s",
        f"{'host down: CPU until written, controller / API server':<48} "
        f"{flips['stop']['controller_cpu_percent']:>7.0f}% / {flips['stop']['apiserver_cpu_percent']:.0f}% of a core",
        *_decided_row("host down", flips["stop"]),
        f"{'host back: API writes per ClusterEndpoint':<48} {flips['start']['per_clusterendpoint']:>8.2f}",
        *_slice_rows("host back", flips["start"], 1),
        f"{'host back: transition -> synced p50/p99':<48} {flips['start']['latency_p50_ms']:>8.0f} / "
        f"{flips['start']['latency_p99_ms']:.0f} ms  (slices and Endpoints written)",
        f"{'host back -> every ClusterEndpoint synced':<48} {flips['start']['all_published_s']:>8.1f} s",
        *_decided_row("host back", flips["start"]),
        f"{'steady state: API writes in ' + str(steady['seconds']) + ' s':<48} {steady['api_writes']:>8}  "
        f"(slice writes {steady['slice_writes']}, status patches {steady.get('status_patches', '?')}, Events "
        f"{steady.get('events_created', '?')}; ProbesDelayed {steady.get('probes_delayed', '?')})",
        f"{'steady state: false unhealthy transitions':<48} {steady['false_unhealthy_transitions']:>8}  "
        f"(not ready at the end: {steady['not_ready_at_end']})",
        f"{'steady state: period stretch':<48} {steady['period_stretch']:>8.2f}  "
        f"(admitted {steady['admitted_probes_per_s']:.0f} probes/s)",
        f"{'steady state: probe results':<48} {steady['probes']}  "
        f"({sum(steady['probes'].values()) / steady['seconds']:.0f} probes/s)",
        f"{'steady state: controller CPU (% of one core)':<48} {steady['cpu_percent_of_one_core']:>8.0f}",
        f"{'steady state: loop stalls > 40 ms (top sites)':<48} {_stall_count(steady['loop_stalls']):>8}  "
        f"{_sites(steady['loop_stalls'])}",
        f"{'host down: loop stalls > 40 ms (top sites)':<48} {_stall_count(flips['stop']['loop_stalls']):>8}  "
        f"{_sites(flips['stop']['loop_stalls'])}",
        *_ceiling_rows(r),
        f"{'RSS per endpoint':<48} {r['rss_bytes_per_endpoint']:>8.0f} B",
        *([f"{'controller CPU limit (CFS quota)':<48} {r['cpu_limit']:>8.2f} cores"] if r.get("cpu_limit") else []),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 ClusterEndpoints, 20 s steady state")
    parser.add_argument("--ceps", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--steady", type=float, default=300.0)
    parser.add_argument("--period", type=int, default=1, help="probe period in seconds")
    parser.add_argument("--probe", choices=["tcp", "http"], default="tcp", help="probe type")
    parser.add_argument("--cpu-limit", type=float, default=0.0, help="CFS quota for the controller, in cores "
                        "(as limits.cpu; needs a writable cgroup v1 cpu hierarchy)")
    parser.add_argument("--routing-first-bound", type=float, default=None,
                        help="seconds status patches and Events wait for routing writes at most (A/B of the default)")
    parser.add_argument("--no-stall-sampler", dest="stall_sampler", action="store_false",
                        help="do not name the loop's stalls (the sampler's thread and 200/s heartbeat run in "
                             "the controller's process, inside its CPU limit)")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "controller.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # a host flip logs one line per ClusterEndpoint: not the point here
    if args.quick:
        args.ceps, args.steady = 100, 20.0
    raise_open_files_limit()
    addresses = [f"127.0.0.{i}" for i in range(1, args.hosts + 1)]
    port = free_port()
    ctx = mp.get_context("spawn")
    control, child = ctx.Pipe()
    backend = ctx.Process(target=backends_main, args=(addresses, port, child, args.probe == "http"), daemon=True)
    backend.start()
    assert control.recv() == "ready"
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    import uvloop
    group = None
    try:
        with apiserver_process() as kubeconfig:
            group = limit_cpu(args.cpu_limit) if args.cpu_limit else None  # after the other processes started
            result = uvloop.run(run(args, kubeconfig, addresses, port, control))
    finally:
        if group is not None:
            unlimit_cpu(group)
        backend.terminate()
    result["cpu_limit"] = args.cpu_limit or None
    result["stall_sampler"] = args.stall_sampler
    result["routing_first_bound"] = args.routing_first_bound  # None: the default (epctl/kube/priority.py)
    write_report("controller", result, table(result), args.json)


if __name__ == "__main__":
    main()
