"""How many probes a second can one core run, how late, at what CPU and memory cost?

Setup: the backends (TCP accept, HTTP, UDP echo, gRPC health) run in a separate process pinned to
core 1, listening on 127.0.0.1-127.0.0.<A>; the engine runs in this process pinned to core 0 on
uvloop. All traffic stays on 127.0.0.0/8 and every loop is bounded in time.

Scenarios, per probe type:
- paced: N checks (1,000 and 10,000) with a 1 s period for a few seconds: achieved probes/s,
  CPU µs per probe, schedule lateness p50/p99, RSS per check;
- saturated: 1,000 checks with a period far shorter than they can be served, so throughput is
  bounded by the engine: probes/s, next to two baselines measured in the same run: a bare loop on
  raw sockets doing the minimum the kernel needs (TCP: connect + close; HTTP: connect, one
  request, read to EOF), the honest anchor; and our prober coroutines in bare loops with no
  scheduler (what the scheduler alone costs);
- paced runs report their CPU per probe as a ratio to the bare loop paced at the same rate;
- databases (postgres, mysql, redis role probes against the real servers from Debian's packages, a
  primary and a replica each, epctl/testing/databases.py): 20 checks saturated, through the
  scheduler on kept sessions (with the sessions opened during the run: 0), next to the same role
  query with a new connection per probe (connect, authenticate, query, close), what the kept
  session saves the server and us.

    python benchmarks/probes.py [--quick] [--no-databases] [--json benchmarks/results/probes.json]

Saturated engine vs bare loop only, repeated (median and spread of the ratio; the bare loop and
the engine alternate in each round, so a load change on the machine hits both):

    python benchmarks/probes.py --saturated-only --repeat 5 [--kinds tcp http udp]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import socket
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import quantile, raise_open_files_limit, rss_bytes, write_report
from epctl.api.spec import (
    DatabaseProbe,
    Expect,
    GRPCProbe,
    HTTPProbe,
    Probe,
    ProbeKind,
    ProbeTiming,
    TCPProbe,
    UDPProbe,
)
from epctl.heap import settle_heap
from epctl.probe.credentials import Credentials
from epctl.probe.database import DatabaseProber, connector, tls_context
from epctl.probe.grpc import GRPCProber
from epctl.probe.http import probe_http
from epctl.probe.result import ProbeResult
from epctl.probe.scheduler import Check, CheckKey, Scheduler
from epctl.probe.tcp import probe_tcp
from epctl.probe.udp import probe_udp

KINDS = ("tcp", "http", "udp", "grpc")
HTTP_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


# --- backends (separate process) -----------------------------------------------------------------

class _HTTPServer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(HTTP_RESPONSE)  # type: ignore[attr-defined]
            self.transport.close()


class _Accept(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data or b"pong", addr)  # type: ignore[attr-defined]


async def _serve(addresses: list[str], ports: dict[str, int], ready: Any) -> None:
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    loop = asyncio.get_running_loop()
    await loop.create_server(_Accept, addresses, ports["tcp"], backlog=65535, reuse_address=True)
    await loop.create_server(_HTTPServer, addresses, ports["http"], backlog=65535, reuse_address=True)
    for address in addresses:
        await loop.create_datagram_endpoint(_Echo, local_addr=(address, ports["udp"]))
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    for address in addresses:
        server.add_insecure_port(f"{address}:{ports['grpc']}")
    await server.start()
    ready.set()
    await asyncio.sleep(3600)


def backend_main(addresses: list[str], ports: dict[str, int], ready: Any) -> None:
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:  # type: ignore[operator]
        os.sched_setaffinity(0, {1})
    import uvloop
    uvloop.run(_serve(addresses, ports, ready))


# --- engine -----------------------------------------------------------------------------------------

class Recorder:
    """ProbeMetrics that keeps counts and every lateness sample."""

    def __init__(self) -> None:
        self.count = 0
        self.failures = 0
        self.inconclusive_count = 0
        self.stretch = 1.0
        self.late: list[float] = []

    def observe(self, kind: str, ok: bool, duration: float) -> None:
        self.count += 1
        self.failures += not ok

    def lateness(self, seconds: float) -> None:
        self.late.append(seconds)

    def in_flight(self, count: int) -> None:
        pass

    def inconclusive(self, kind: str) -> None:
        self.inconclusive_count += 1

    def pacing(self, stretch: float, admitted_per_second: float, loop_lag: float) -> None:
        self.stretch = stretch


def probe_for(kind: str) -> Probe:
    if kind in DATABASES:
        return DatabaseProbe(ProbeKind(kind), Expect.ANY, secret_name="bench")
    return {"tcp": TCPProbe(), "http": HTTPProbe(path="/"), "udp": UDPProbe(data=b"ping"),
            "grpc": GRPCProbe()}[kind]


DATABASES = ("postgres", "mysql", "redis")
DB_USERS = {"postgres": "probe", "mysql": "probe", "redis": ""}
DB_CHECKS = 20


async def fresh_connections(kind: str, seconds: float, addresses: list[str], port: int,
                            concurrency: int = DB_CHECKS) -> dict[str, Any]:
    """The role query with a new connection each time (what a connection per probe costs)."""
    from epctl.testing.databases import PASSWORD

    creds = Credentials(DB_USERS[kind], PASSWORD)
    probe = probe_for(kind)
    assert isinstance(probe, DatabaseProbe)
    connect = connector(probe.kind)
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        nonlocal count
        address = addresses[i % len(addresses)]
        while time.perf_counter() < deadline:
            session = await connect(address, port, creds, probe, tls_context(probe, ""), "")
            await session.role()
            await session.close()
            count += 1

    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    wall = time.perf_counter() - wall0
    user, system = cpu_split(cpu0)
    return {"probes_per_s": count / wall, "cpu_us_per_probe": (user + system) / count * 1e6 if count else None}


async def databases(seconds: float, pairs: dict[str, Any]) -> list[dict[str, Any]]:
    from epctl.testing.databases import PASSWORD, PRIMARY_ADDRESS, REPLICA_ADDRESS

    rows = []
    for kind, pair in pairs.items():
        async def credentials(namespace: str, name: str, kind: str = kind) -> Credentials:
            return Credentials(DB_USERS[kind], PASSWORD)

        addresses = [PRIMARY_ADDRESS, REPLICA_ADDRESS]
        kept = await engine(kind, DB_CHECKS, 0.01, seconds, addresses, pair.port,
                            database=DatabaseProber(credentials))
        fresh = await fresh_connections(kind, seconds, addresses, pair.port)
        rows.append({"kind": kind, "checks": DB_CHECKS, "probes_per_s": kept["probes_per_s"],
                     "cpu_us_per_probe": kept["cpu_us_per_probe"], "failures": kept["failures"],
                     "connects_during_run": kept["connects_during_run"],
                     "fresh_probes_per_s": fresh["probes_per_s"], "fresh_cpu_us_per_probe": fresh["cpu_us_per_probe"]})
        print(f"  {kind}: kept {kept['probes_per_s']:.0f}/s, new connection per probe "
              f"{fresh['probes_per_s']:.0f}/s", file=sys.stderr)
    return rows


def cpu_split(since: resource.struct_rusage) -> tuple[float, float]:
    """(user, kernel) CPU seconds of this process since ``since``."""
    now = resource.getrusage(resource.RUSAGE_SELF)
    return now.ru_utime - since.ru_utime, now.ru_stime - since.ru_stime


async def engine(kind: str, n: int, period: float, seconds: float, addresses: list[str], port: int,
                 max_concurrent: int = 1000, fresh_grpc: bool = False,
                 database: DatabaseProber | None = None) -> dict[str, Any]:
    rec = Recorder()
    scheduler = Scheduler(lambda t: None, metrics=rec, max_concurrent=max_concurrent, period_override=period,
                          first_window=period, grpc_prober=GRPCProber(fresh_connection=fresh_grpc),
                          database_prober=database)
    rss_before = rss_bytes()
    timing = ProbeTiming(timeout_seconds=1, period_seconds=max(1, int(period)))
    for i in range(n):
        address = addresses[i % len(addresses)]
        scheduler.upsert(Check(CheckKey(f"bench/cep{i}", "p", address), probe_for(kind), port, timing))
    settle_heap()  # as the controller does once its caches and checks are in
    scheduler.start()
    await asyncio.sleep(max(1.0, period))  # warm-up: every check ran once
    rss_after = rss_bytes()
    connects0 = database.connects if database else 0
    count0, cpu0, wall0 = rec.count, resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    late_start = len(rec.late)
    await asyncio.sleep(seconds)
    count, wall = rec.count - count0, time.perf_counter() - wall0
    user, system = cpu_split(cpu0)
    lateness = rec.late[late_start:]
    connects = database.connects - connects0 if database else 0
    await scheduler.stop()
    return {"kind": kind, "checks": n, "period_s": period, "probes_per_s": count / wall,
            "cpu_us_per_probe": (user + system) / count * 1e6 if count else None,
            "user_us_per_probe": user / count * 1e6 if count else None,
            "kernel_us_per_probe": system / count * 1e6 if count else None, "failures": rec.failures,
            "lateness_p50_ms": quantile(lateness, 0.5) * 1000, "lateness_p99_ms": quantile(lateness, 0.99) * 1000,
            "rss_bytes_per_check": (rss_after - rss_before) / n, "connects_during_run": connects}


async def baseline(kind: str, seconds: float, addresses: list[str], port: int,
                   concurrency: int = 1000) -> dict[str, Any]:
    """The same prober coroutines, driven by ``concurrency`` bare worker loops: no scheduler at all."""
    grpc_prober = GRPCProber()
    probe = probe_for(kind)
    count = 0
    stop = time.perf_counter() + seconds

    async def one(address: str) -> ProbeResult:
        if kind == "tcp":
            return await probe_tcp(address, port, 1.0)
        if kind == "http":
            return await probe_http(address, port, 1.0, probe)  # type: ignore[arg-type]
        if kind == "udp":
            return await probe_udp(address, port, 1.0, b"ping")
        return await grpc_prober.probe(address, port, 1.0, probe)  # type: ignore[arg-type]

    async def worker(i: int) -> None:
        nonlocal count
        address = addresses[i % len(addresses)]
        while time.perf_counter() < stop:
            await one(address)
            count += 1

    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    wall = time.perf_counter() - wall0
    user, system = cpu_split(cpu0)
    await grpc_prober.close()
    return {"kind": kind, "probes_per_s": count / wall, "cpu_us_per_probe": (user + system) / count * 1e6,
            "user_us_per_probe": user / count * 1e6}


_LINGER_RST = struct.pack("ii", 1, 0)
BARE_REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
BARE_KINDS = ("tcp", "http", "udp")


async def bare(kind: str, seconds: float, addresses: list[str], port: int, concurrency: int = 1000,
               rate: float | None = None) -> dict[str, Any]:
    """The honest anchor: the minimum the kernel needs for one probe, on raw sockets in bare loops, no epctl
    code at all. TCP: socket, connect, close (RST). HTTP: connect, send one request, read to EOF, close.
    UDP: connect, send one datagram, read one reply, close.
    ``rate``: paced at that many probes per second in total (for CPU per probe at a given load);
    otherwise as fast as ``concurrency`` loops go."""
    loop = asyncio.get_running_loop()
    count = 0
    stop = time.perf_counter() + seconds
    interval = concurrency / rate if rate else 0.0

    async def one(address: str) -> None:
        if kind == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, (address, port))
                sock.send(b"ping")
                await loop.sock_recv(sock, 65535)
            finally:
                sock.close()
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            await loop.sock_connect(sock, (address, port))
            if kind == "http":
                await loop.sock_sendall(sock, BARE_REQUEST)
                while await loop.sock_recv(sock, 65536):
                    pass
        finally:
            sock.close()

    async def worker(i: int) -> None:
        nonlocal count
        address = addresses[i % len(addresses)]
        if interval:
            await asyncio.sleep(interval * i / concurrency)
        next_at = time.perf_counter()
        while time.perf_counter() < stop:
            await one(address)
            count += 1
            if interval:
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    wall = time.perf_counter() - wall0
    user, system = cpu_split(cpu0)
    return {"kind": kind, "probes_per_s": count / wall, "cpu_us_per_probe": (user + system) / count * 1e6,
            "user_us_per_probe": user / count * 1e6}


async def bare_callbacks(kind: str, seconds: float, addresses: list[str], port: int,
                         concurrency: int = 1000) -> dict[str, Any]:
    """The strictest anchor: the same kernel minimum as :func:`bare`, driven by loop callbacks instead of
    coroutines (no timer, no result object, no epctl code): ``concurrency`` chains, each starting its
    next probe when the last one ends."""
    loop = asyncio.get_running_loop()
    count = 0
    stop = time.perf_counter() + seconds
    finished = loop.create_future()
    live = concurrency

    def start(address: str) -> None:
        nonlocal live
        if time.perf_counter() >= stop:
            live -= 1
            if not live:
                finished.set_result(None)
            return
        if kind == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect((address, port))
            sock.send(b"ping")
            loop.add_reader(sock.fileno(), end, sock, address, True)
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        sock.connect_ex((address, port))
        loop.add_writer(sock.fileno(), connected, sock, address)

    def connected(sock: socket.socket, address: str) -> None:
        loop.remove_writer(sock.fileno())
        if kind == "http":
            sock.send(BARE_REQUEST)
            loop.add_reader(sock.fileno(), readable, sock, address)
            return
        end(sock, address, False)

    def readable(sock: socket.socket, address: str) -> None:
        try:
            if sock.recv(65536):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        end(sock, address, True)

    def end(sock: socket.socket, address: str, reading: bool) -> None:
        nonlocal count
        if kind == "udp":
            sock.recv(65535)
        if reading:
            loop.remove_reader(sock.fileno())
        sock.close()
        count += 1
        start(address)

    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for i in range(concurrency):
        start(addresses[i % len(addresses)])
    await finished
    wall = time.perf_counter() - wall0
    user, system = cpu_split(cpu0)
    return {"kind": kind, "probes_per_s": count / wall, "cpu_us_per_probe": (user + system) / count * 1e6,
            "user_us_per_probe": user / count * 1e6}


async def run(args: argparse.Namespace, addresses: list[str], ports: dict[str, int]) -> dict[str, Any]:
    seconds = 2.0 if args.quick else 5.0
    sizes = (1000,) if args.quick else tuple(args.sizes)
    paced, saturated = [], []
    for kind in args.kinds:
        for n in sizes:
            paced.append(await engine(kind, n, 1.0, seconds, addresses, ports[kind]))
            if kind in ("tcp", "http"):  # the bare loop at the rate the engine achieved
                anchor = await bare(kind, seconds, addresses, ports[kind], concurrency=min(n, 1000),
                                    rate=paced[-1]["probes_per_s"])
                paced[-1]["bare_cpu_us_per_probe"] = anchor["cpu_us_per_probe"]
                paced[-1]["cpu_ratio_to_bare"] = paced[-1]["cpu_us_per_probe"] / anchor["cpu_us_per_probe"]
            print(f"  paced {kind} n={n}: {paced[-1]['probes_per_s']:.0f}/s", file=sys.stderr)
        base = await baseline(kind, seconds, addresses, ports[kind])
        sat = await engine(kind, 1000, 0.01, seconds, addresses, ports[kind])
        if kind in BARE_KINDS:
            anchor = await bare(kind, seconds, addresses, ports[kind])
            sat["bare_probes_per_s"] = anchor["probes_per_s"]
            sat["bare_cpu_us_per_probe"] = anchor["cpu_us_per_probe"]
            sat["ratio_to_bare"] = sat["probes_per_s"] / anchor["probes_per_s"]
        sat["baseline_probes_per_s"] = base["probes_per_s"]
        sat["baseline_cpu_us_per_probe"] = base["cpu_us_per_probe"]
        sat["baseline_user_us_per_probe"] = base["user_us_per_probe"]
        sat["ratio"] = sat["probes_per_s"] / base["probes_per_s"] if base["probes_per_s"] else None
        saturated.append(sat)
        print(f"  saturated {kind}: engine {sat['probes_per_s']:.0f}/s baseline {base['probes_per_s']:.0f}/s",
              file=sys.stderr)
    grpc_modes = []
    if "grpc" in args.kinds:  # the kubelet's way (a new connection per probe) vs a kept channel per target
        for fresh in (False, True):
            result = await engine("grpc", 1000, 0.01, seconds, addresses, ports["grpc"], fresh_grpc=fresh)
            grpc_modes.append({"mode": "new connection per probe" if fresh else "kept channel per target",
                               "probes_per_s": result["probes_per_s"], "cpu_us_per_probe": result["cpu_us_per_probe"]})
    dbs = await databases(seconds, args.pairs) if args.pairs else []
    return {"paced": paced, "saturated": saturated, "grpc_modes": grpc_modes, "databases": dbs}


async def saturated_rounds(args: argparse.Namespace, addresses: list[str], ports: dict[str, int]) -> dict[str, Any]:
    """Saturated engine vs bare loop, ``args.repeat`` rounds; the order alternates each round."""
    seconds = 2.0 if args.quick else 5.0
    rounds: list[dict[str, Any]] = []
    for i in range(args.repeat):
        for kind in [k for k in args.kinds if k in BARE_KINDS]:
            pair: dict[str, Any] = {}
            order = ("engine", "bare", "callbacks")
            for which in (order if i % 2 == 0 else order[::-1]):
                if which == "engine":
                    pair["engine"] = await engine(kind, 1000, 0.01, seconds, addresses, ports[kind])
                elif which == "bare":
                    pair["bare"] = await bare(kind, seconds, addresses, ports[kind])
                else:
                    pair["callbacks"] = await bare_callbacks(kind, seconds, addresses, ports[kind])
            row = {"round": i, "kind": kind, "load1": os.getloadavg()[0],
                   "engine_probes_per_s": pair["engine"]["probes_per_s"],
                   "engine_cpu_us_per_probe": pair["engine"]["cpu_us_per_probe"],
                   "engine_failures": pair["engine"]["failures"],
                   "bare_probes_per_s": pair["bare"]["probes_per_s"],
                   "bare_cpu_us_per_probe": pair["bare"]["cpu_us_per_probe"],
                   "bare_callbacks_probes_per_s": pair["callbacks"]["probes_per_s"],
                   "bare_callbacks_cpu_us_per_probe": pair["callbacks"]["cpu_us_per_probe"]}
            row["ratio_to_bare"] = row["engine_probes_per_s"] / row["bare_probes_per_s"]
            row["ratio_to_bare_callbacks"] = row["engine_probes_per_s"] / row["bare_callbacks_probes_per_s"]
            rounds.append(row)
            print(f"  round {i} {kind}: engine {row['engine_probes_per_s']:.0f}/s "
                  f"bare {row['bare_probes_per_s']:.0f}/s ratio {row['ratio_to_bare']:.2f}, "
                  f"bare callbacks {row['bare_callbacks_probes_per_s']:.0f}/s "
                  f"ratio {row['ratio_to_bare_callbacks']:.2f} (load {row['load1']:.2f}, "
                  f"failures {row['engine_failures']})", file=sys.stderr)
    summary = []
    for kind in dict.fromkeys(r["kind"] for r in rounds):
        ratios = sorted(r["ratio_to_bare"] for r in rounds if r["kind"] == kind)
        strict = sorted(r["ratio_to_bare_callbacks"] for r in rounds if r["kind"] == kind)
        summary.append({"kind": kind, "rounds": len(ratios), "ratio_median": statistics.median(ratios),
                        "ratio_min": ratios[0], "ratio_max": ratios[-1],
                        "callbacks_ratio_median": statistics.median(strict), "callbacks_ratio_min": strict[0],
                        "callbacks_ratio_max": strict[-1],
                        "engine_failures": sum(r["engine_failures"] for r in rounds if r["kind"] == kind),
                        "bare_callbacks_median_per_s": statistics.median(
                            r["bare_callbacks_probes_per_s"] for r in rounds if r["kind"] == kind),
                        "engine_median_per_s": statistics.median(r["engine_probes_per_s"] for r in rounds
                                                                 if r["kind"] == kind),
                        "bare_median_per_s": statistics.median(r["bare_probes_per_s"] for r in rounds
                                                               if r["kind"] == kind)})
    return {"rounds": rounds, "summary": summary}


def rounds_table(results: dict[str, Any]) -> str:
    lines = ["saturated (1,000 checks): engine / bare raw-socket loop (coroutines; and on callbacks), same run, "
             "rounds alternating order; ratio median [min-max]",
             f"{'type':<5} {'rounds':>7} {'x bare':>17} {'x bare callbacks':>17} {'engine/s':>9} {'bare/s':>8} "
             f"{'callbacks/s':>12} {'failures':>9}"]
    for r in results["summary"]:
        plain = f"{r['ratio_median']:.2f} [{r['ratio_min']:.2f}-{r['ratio_max']:.2f}]"
        strict = f"{r['callbacks_ratio_median']:.2f} [{r['callbacks_ratio_min']:.2f}-{r['callbacks_ratio_max']:.2f}]"
        lines.append(f"{r['kind']:<5} {r['rounds']:>7} {plain:>17} {strict:>17} {r['engine_median_per_s']:>9.0f} "
                     f"{r['bare_median_per_s']:>8.0f} {r['bare_callbacks_median_per_s']:>12.0f} "
                     f"{r['engine_failures']:>9}")
    return "\n".join(lines)


def table(results: dict[str, Any]) -> str:
    def ratio(r: dict[str, Any], key: str) -> str:
        return f"{r[key]:.2f}" if r.get(key) is not None else "-"

    lines = ["paced (1 s period): achieved rate, CPU per probe (and vs a bare raw-socket loop at that rate), "
             "schedule lateness, memory",
             f"{'type':<5} {'checks':>7} {'probes/s':>9} {'CPU µs/probe':>13} {'x bare':>7} {'of it kernel':>13} "
             f"{'late p50 ms':>12} {'late p99 ms':>12} {'RSS B/check':>12} {'failures':>9}"]
    for r in results["paced"]:
        lines.append(f"{r['kind']:<5} {r['checks']:>7} {r['probes_per_s']:>9.0f} {r['cpu_us_per_probe']:>13.1f} "
                     f"{ratio(r, 'cpu_ratio_to_bare'):>7} {r['kernel_us_per_probe']:>13.1f} "
                     f"{r['lateness_p50_ms']:>12.2f} {r['lateness_p99_ms']:>12.2f} "
                     f"{r['rss_bytes_per_check']:>12.0f} {r['failures']:>9}")
    lines += ["", "saturated (1,000 checks, demand >> capacity): engine vs a bare raw-socket loop (the kernel's "
              "minimum) and vs our probers in bare loops (no scheduler), same run",
              f"{'type':<5} {'engine/s':>9} {'bare/s':>8} {'x bare':>7} {'probers/s':>10} {'x probers':>10} "
              f"{'engine µs':>10} {'bare µs':>8} {'probers µs':>11}"]
    for r in results["saturated"]:
        bare_rate = f"{r['bare_probes_per_s']:.0f}" if r.get("bare_probes_per_s") else "-"
        bare_us = f"{r['bare_cpu_us_per_probe']:.1f}" if r.get("bare_cpu_us_per_probe") else "-"
        lines.append(f"{r['kind']:<5} {r['probes_per_s']:>9.0f} {bare_rate:>8} {ratio(r, 'ratio_to_bare'):>7} "
                     f"{r['baseline_probes_per_s']:>10.0f} {r['ratio']:>10.2f} {r['cpu_us_per_probe']:>10.1f} "
                     f"{bare_us:>8} {r['baseline_cpu_us_per_probe']:>11.1f}")
    if results.get("grpc_modes"):
        lines += ["", "gRPC connection mode (saturated, 1,000 checks)",
                  f"{'mode':<26} {'probes/s':>9} {'CPU µs/probe':>13}"]
        for r in results["grpc_modes"]:
            lines.append(f"{r['mode']:<26} {r['probes_per_s']:>9.0f} {r['cpu_us_per_probe']:>13.1f}")
    if results.get("databases"):
        lines += ["", f"database role probes (real servers, primary + replica, {DB_CHECKS} checks saturated): kept "
                  "session per check (asked: 2,000/s) vs a new connection per probe (as fast as it goes)",
                  f"{'type':<9} {'kept/s':>8} {'CPU µs':>8} {'connects':>9} {'failures':>9} {'new conn/s':>11} "
                  f"{'CPU µs':>8}"]
        for r in results["databases"]:
            lines.append(f"{r['kind']:<9} {r['probes_per_s']:>8.0f} {r['cpu_us_per_probe']:>8.1f} "
                         f"{r['connects_during_run']:>9} {r['failures']:>9} {r['fresh_probes_per_s']:>11.0f} "
                         f"{r['fresh_cpu_us_per_probe']:>8.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 checks only, 2 s per scenario")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 10_000], help="paced check counts")
    parser.add_argument("--addresses", type=int, default=50, help="loopback addresses the backends listen on")
    parser.add_argument("--json", default=None, help="default: benchmarks/results/probes.json (none with "
                        "--saturated-only)")
    parser.add_argument("--no-databases", dest="databases", action="store_false",
                        help="skip the database role probes (which start real PostgreSQL, MariaDB and Redis)")
    parser.add_argument("--databases-only", action="store_true", help="only the database role probes")
    parser.add_argument("--saturated-only", action="store_true",
                        help="only saturated engine vs bare loop (tcp, http, udp), --repeat rounds; prints the "
                        "table and writes JSON only where --json is given explicitly")
    parser.add_argument("--repeat", type=int, default=3, help="rounds for --saturated-only")
    args = parser.parse_args()
    if args.databases_only:
        args.kinds = []
    if args.saturated_only:
        args.databases = False
    raise_open_files_limit()
    addresses = [f"127.0.0.{i}" for i in range(1, args.addresses + 1)]
    from epctl.testing.backends import free_port
    ports = {"tcp": free_port(), "http": free_port(), "grpc": free_port(), "udp": free_port(2)}
    args.pairs = {}
    if args.databases:  # started before this process pins itself to core 0: the servers may use any core
        from epctl.testing.databases import MariaDBPair, PostgresPair, RedisPair
        args.pairs = {"postgres": PostgresPair().start(), "mysql": MariaDBPair().start(),
                      "redis": RedisPair().start()}
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    backend = ctx.Process(target=backend_main, args=(addresses, ports, ready), daemon=True)
    backend.start()
    try:
        if not ready.wait(30):
            raise SystemExit("backends did not start")
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {0})
        import uvloop
        results = uvloop.run((saturated_rounds if args.saturated_only else run)(args, addresses, ports))
    finally:
        backend.terminate()
        backend.join(5)
        for pair in args.pairs.values():
            pair.close()
    if args.saturated_only:
        print(rounds_table(results))
        if args.json:
            write_report("probes-saturated", {"quick": args.quick, **results}, "", args.json)
        return
    write_report("probes", {"quick": args.quick, **results}, table(results),
                 args.json or str(Path(__file__).parent / "results" / "probes.json"))


if __name__ == "__main__":
    main()
