"""Sidecar ``/endpoints`` throughput and latency, against a bare aiohttp handler in the same run.

The sidecar (watching a Service with 1,000 endpoints in the in-memory API server, which runs in the
same process) serves on core 0; ``wrk`` (Debian package ``wrk``) loads it from core 1 with
keep-alive connections. The baseline is a bare aiohttp app on core 0 returning the very same
bytes. Reports requests/s, p50/p99 latency and the ratio sidecar/baseline, plus the sidecar
process's RSS.

    python benchmarks/sidecar.py [--seconds 10] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

from benchmarks.common import rss_bytes, write_report
from epctl.kube.client import ENDPOINTSLICES, KubeClient
from epctl.sidecar import Sidecar
from epctl.testing.kubeapi import KubeAPIServer

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


async def wrk(url: str, seconds: float, connections: int) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        "taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    text = out.decode()

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)", text, re.M)
        return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"requests_per_s": float(rps.group(1)) if rps else 0.0, "p50_ms": latency("50"),
            "p99_ms": latency("99"), "non_2xx": int(non_2xx.group(1)) if non_2xx else 0}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with KubeAPIServer() as api:
        client = await KubeClient.connect(api.kubeconfig_path)
        for n in range(10):
            await client.request("POST", ENDPOINTSLICES.path("default"), body={
                "metadata": {"name": f"web-{n}", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": [f"10.{n}.{i // 250}.{i % 250 + 1}"], "conditions": {"ready": i % 7 != 0},
                               "nodeName": f"node-{i % 20}"} for i in range(100)]})
        sidecar = Sidecar(client, "default", "web")
        port = await sidecar.start("127.0.0.1", 0)
        await sidecar.informer.wait_synced(30)
        sidecar.render()
        body = sidecar.body
        endpoints = sum(len(s.get("addresses", [])) + len(s.get("notReadyAddresses", []))
                        for s in json.loads(body)["subsets"])

        async def bare(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type="application/json")

        app = web.Application()
        app.router.add_get("/endpoints", bare)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        bare_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        results = {}
        for name, url in (("baseline", f"http://127.0.0.1:{bare_port}/endpoints"),
                          ("sidecar", f"http://127.0.0.1:{port}/endpoints")):
            await wrk(url, 2, args.connections)  # warm-up
            results[name] = await wrk(url, args.seconds, args.connections)
            print(f"  {name}: {results[name]}", file=sys.stderr)
        await runner.cleanup()
        await sidecar.stop()
        await client.close()
    return {"endpoints": endpoints, "body_bytes": len(body), "connections": args.connections,
            "seconds": args.seconds, **results,
            "ratio": results["sidecar"]["requests_per_s"] / results["baseline"]["requests_per_s"],
            "rss_mb_with_api_server_in_process": rss_bytes() / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "sidecar.json"))
    args = parser.parse_args()
    if not shutil.which("wrk") or not shutil.which("taskset"):
        raise SystemExit("needs wrk and taskset (apt-get install wrk util-linux)")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    import uvloop
    result = uvloop.run(run(args))
    lines = [f"{result['endpoints']} endpoints, {result['body_bytes']} byte response, {args.connections} keep-alive "
             f"connections, {args.seconds:g} s, one core each",
             f"{'server':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"]
    for name in ("baseline", "sidecar"):
        r = result[name]
        lines.append(f"{name:<10} {r['requests_per_s']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}")
    lines.append(f"ratio sidecar/baseline: {result['ratio']:.2f}")
    write_report("sidecar", result, "\n".join(lines), args.json)


if __name__ == "__main__":
    main()
