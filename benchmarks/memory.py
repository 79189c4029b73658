"""Controller memory by owner: N ClusterEndpoints x H hosts, caches and state built, little probing.

The test API server (``epctl dev-apiserver``) and the TCP backends (benchmarks/controller.py's, on
127.0.0.1..H) run in other processes; this process creates the ClusterEndpoints with a 300 s probe
period (each check's first probe comes within a second, a target is published once all of its
checks have a result; after that almost nothing runs), then starts the controller. Once every
Service, EndpointSlice and Endpoints is written and the caches hold them, it reports:

- tracemalloc: bytes allocated since before the controller was built, per endpoint;
- RSS growth over the same span, per endpoint;
- bytes per endpoint by owner: the deep size of what each part holds (each informer's cache and
  index, the desired-state store, the source's entries, the scheduler's checks, the status writer,
  the writer). An object reachable from two owners is counted once, for the first in that order.

    python benchmarks/memory.py [--ceps 1000] [--hosts 10] [--no-tracemalloc] [--distinct] [--types]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import multiprocessing as mp
import sys
import time
import tracemalloc
import types
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from benchmarks.common import apiserver_process, client_with_crd, raise_open_files_limit, rss_bytes, write_report
from benchmarks.controller import backends_main
from epctl.app import Controller, ControllerSettings
from epctl.sources.clusterendpoint import CLUSTERENDPOINTS
from epctl.testing.backends import free_port

_LEAVES = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
           types.CodeType, types.FrameType, asyncio.Task, asyncio.Future, asyncio.AbstractEventLoop)


def deep_size(root: Any, seen: set[int], types_: dict[str, int] | None = None) -> int:
    """Bytes of ``root`` and what it holds (containers, strings, epctl's objects), not counting what is
    in ``seen`` (counted for an earlier owner) and never following functions, modules, types, tasks."""
    total, stack = 0, [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _LEAVES):
            continue
        seen.add(id(obj))
        size = sys.getsizeof(obj)
        total += size
        if types_ is not None:
            types_[type(obj).__name__] = types_.get(type(obj).__name__, 0) + size
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif type(obj).__module__.startswith("epctl"):
            stack.extend(r for r in gc.get_referents(obj) if not isinstance(r, _LEAVES))
    return total


def owners(controller: Controller) -> dict[str, list[Any]]:
    """What each part of the controller holds, by name (the order decides who pays for shared objects)."""
    c = controller
    out: dict[str, list[Any]] = {}
    for informer in c.informers:
        out[f"cache: {informer.name}"] = [informer.cache, informer._index, getattr(informer, "_indexed_as", {})]
    out["desired state"] = [c.state]
    out["source (ClusterEndpoint entries)"] = [c.source]
    out["scheduler (checks)"] = [c.scheduler]
    out["status writer"] = [c.status]
    out["writer"] = [c.writer]
    out["events"] = [c.events]
    return out


def by_owner(controller: Controller, endpoints: int,
             types_: dict[str, dict[str, int]] | None = None) -> dict[str, float]:
    roots = owners(controller)
    # the parts themselves are reachable from one another (callbacks, references): none is walked from another
    seen: set[int] = {id(controller), id(controller.client)} | {id(i) for i in controller.informers}
    for held in roots.values():
        seen.update(id(o) for o in held if not isinstance(o, dict))
    result: dict[str, float] = {}
    for name, held in roots.items():
        size = 0
        for obj in held:
            if not isinstance(obj, dict):
                seen.discard(id(obj))
            size += deep_size(obj, seen, types_.setdefault(name, {}) if types_ is not None else None)
        result[name] = size / endpoints
    return result


async def run(args: argparse.Namespace, kubeconfig: str, port: int) -> dict[str, Any]:
    client = await client_with_crd(kubeconfig, pool_size=32)
    addresses = [f"127.0.0.{i}" for i in range(1, args.hosts + 1)]

    def hosts(i: int) -> list[str]:
        """--distinct: hosts of their own per ClusterEndpoint (127.x.y.z, nothing listens: refused, so
        published not ready), as in a real fleet, where an address is not shared by 1,000 objects."""
        if not args.distinct:
            return addresses
        return [f"127.{1 + (i * args.hosts + h) // 65536}.{(i * args.hosts + h) // 256 % 256}."
                f"{(i * args.hosts + h) % 256}" for h in range(args.hosts)]
    sem = asyncio.Semaphore(16)

    async def create(i: int) -> None:
        async with sem:
            await client.request("POST", CLUSTERENDPOINTS.path("default"), body={
                "apiVersion": "epctl.io/v1beta1", "kind": "ClusterEndpoint", "metadata": {"name": f"cep{i}"},
                "spec": {"ports": [{"name": "tcp", "port": 5432, "targetPort": port, "hosts": hosts(i),
                                    "tcpSocket": {}, "periodSeconds": 300, "failureThreshold": 2}]}})

    await asyncio.gather(*(create(i) for i in range(args.ceps)))
    print(f"  created {args.ceps} ClusterEndpoints", file=sys.stderr)
    gc.collect()
    rss0 = rss_bytes()
    if args.tracemalloc:
        tracemalloc.start()
    traced0, _ = tracemalloc.get_traced_memory()
    settings = ControllerSettings(metrics_addr=None, allow_loopback_hosts=True, write_concurrency=16)
    c = Controller(client, settings)
    t0 = time.monotonic()
    await c.start()
    endpoints_wanted = args.ceps if c.endpoints is not None else 0

    def written() -> bool:
        return (len(c.slices.cache) >= args.ceps and len(c.services.cache) >= args.ceps
                and (c.endpoints is None or len(c.endpoints.cache) >= endpoints_wanted))

    while not written():
        if time.monotonic() - t0 > args.timeout:
            raise TimeoutError(f"not all written ({len(c.state.targets)} targets): {len(c.services.cache)} Services, "
                               f"{len(c.slices.cache)} slices, "
                               f"{len(c.endpoints.cache) if c.endpoints else 0} Endpoints")
        await asyncio.sleep(0.2)
    await c.writer.wait_idle(120)
    await c.status.flush(120)
    await asyncio.sleep(2)  # the watch events of the last writes
    gc.collect()
    endpoints = args.ceps * args.hosts
    traced, _ = tracemalloc.get_traced_memory()
    rss = rss_bytes()
    tracemalloc.stop()  # the owner walk allocates: not counted
    types_: dict[str, dict[str, int]] = {}
    owner_bytes = by_owner(c, endpoints, types_)
    if args.types:
        for name, sizes in types_.items():
            top = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
            print(f"  {name}: " + ", ".join(f"{t} {n / endpoints:.0f}" for t, n in top), file=sys.stderr)
    result = {"ceps": args.ceps, "hosts": args.hosts, "endpoints": endpoints, "distinct": args.distinct,
              "tracemalloc_bytes_per_endpoint": (traced - traced0) / endpoints if args.tracemalloc else None,
              "rss_bytes_per_endpoint": (rss - rss0) / endpoints,
              "owners_bytes_per_endpoint": owner_bytes}
    await c.stop()
    await client.close()
    return result


def table(r: dict[str, Any]) -> str:
    traced = r["tracemalloc_bytes_per_endpoint"]
    lines = [f"{r['ceps']} ClusterEndpoints x {r['hosts']} hosts = {r['endpoints']} endpoints, 300 s probe period, "
             + ("every ClusterEndpoint its own hosts" if r.get("distinct") else "the same hosts in every one"),
             *([f"{'tracemalloc, allocated since before the controller':<44} {traced:>7.0f} B/endpoint"]
               if traced is not None else []),
             f"{'RSS growth over the same span':<44} {r['rss_bytes_per_endpoint']:>7.0f} B/endpoint"
             + ("  (tracemalloc's own records included)" if traced is not None else ""),
             "by owner (deep size, shared objects counted once):"]
    owners = r["owners_bytes_per_endpoint"]
    for name, size in owners.items():
        lines.append(f"  {name:<42} {size:>7.0f} B/endpoint")
    lines.append(f"  {'total':<42} {sum(owners.values()):>7.0f} B/endpoint")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ceps", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--no-tracemalloc", dest="tracemalloc", action="store_false",
                        help="RSS without tracemalloc's own overhead (which doubles it)")
    parser.add_argument("--distinct", action="store_true", help="every ClusterEndpoint its own hosts (refused)")
    parser.add_argument("--types", action="store_true", help="also print each owner's largest types")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the writes")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "memory.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    raise_open_files_limit()
    port = free_port()
    ctx = mp.get_context("spawn")
    control, child = ctx.Pipe()
    backend = ctx.Process(target=backends_main, args=([f"127.0.0.{i}" for i in range(1, args.hosts + 1)], port,
                                                      child), daemon=True)
    backend.start()
    assert control.recv() == "ready"
    try:
        with apiserver_process(core=None) as kubeconfig:
            # on uvloop, as `epctl controller` runs (epctl.cli.run_async): the default loop's TLS layer
            # zero-fills a 256 KB read buffer per connection, which uvloop's does not
            result = uvloop.run(run(args, kubeconfig, port))
    finally:
        backend.terminate()
    write_report("memory", result, table(result), args.json)


if __name__ == "__main__":
    main()
