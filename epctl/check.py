"""``epctl check``: probe the hosts of ClusterEndpoint manifests from this machine, before applying.

Reads one or more documents (files, multi-document YAML, or ``-`` for stdin), validates them with
the same parser the controller uses, probes every host through the same scheduler and probers,
and prints per port and host: state, reason, last duration; then the endpoint conditions epctl
would publish in EndpointSlices.

``--once`` (the default) probes until every check has reached a threshold decision, at one probe
per second instead of each port's period so the answer comes quickly, and exits 0 if everything is
healthy, 1 if anything is not, 2 on invalid input. ``--watch`` keeps probing at the real periods and
prints each transition.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import yaml

from epctl.api import ClusterEndpointSpec, PortSpec, parse_cluster_endpoint
from epctl.probe.resolve import resolve
from epctl.probe.scheduler import Check, CheckKey, Scheduler, Transition

EXIT_HEALTHY, EXIT_UNHEALTHY, EXIT_INVALID = 0, 1, 2


class CheckInputError(Exception):
    """The input could not be read or parsed; the message says where."""


@dataclass
class Row:
    """One (ClusterEndpoint, port, host, address) line of the report."""

    spec: ClusterEndpointSpec
    port: PortSpec
    host: str
    address: str
    key: CheckKey | None  # None: the port has no probe, or the host did not resolve
    error: str | None = None


def load_documents(paths: list[str], stdin: TextIO = sys.stdin) -> list[tuple[str, Any]]:
    """(label, document) for every non-empty YAML document in ``paths``."""
    documents = []
    for path in paths:
        try:
            text = stdin.read() if path == "-" else open(path, encoding="utf-8").read()
        except OSError as err:
            raise CheckInputError(f"{path}: {err.strerror}") from err
        try:
            for index, doc in enumerate(yaml.safe_load_all(text)):
                if doc is not None:
                    documents.append((f"{'stdin' if path == '-' else path}[{index}]", doc))
        except yaml.YAMLError as err:
            raise CheckInputError(f"{path}: not valid YAML: {err}") from err
    if not documents:
        raise CheckInputError("no documents found in the input")
    return documents


def parse_all(documents: list[tuple[str, Any]], allow_loopback: bool) -> tuple[list[ClusterEndpointSpec], list[str]]:
    specs, problems = [], []
    for label, doc in documents:
        spec, errors = parse_cluster_endpoint(doc, allow_loopback=allow_loopback)
        if spec is None:
            problems += [f"{label}: {error}" for error in errors]
        else:
            specs.append(spec)
    return specs, problems


async def plan_rows(specs: list[ClusterEndpointSpec], allow_loopback: bool = False) -> tuple[list[Row], list[Check]]:
    """Resolve hosts and build one check per (ClusterEndpoint, port, address)."""
    rows: list[Row] = []
    checks: list[Check] = []
    hosts = sorted({h for s in specs for p in s.ports for h in p.hosts})
    resolved = dict(zip(hosts, await asyncio.gather(*(resolve(h, allow_loopback) for h in hosts)), strict=True))
    for spec in specs:
        for port in spec.ports:
            for host in port.hosts:
                addresses, error = resolved[host]
                if error:
                    rows.append(Row(spec, port, host, "-", None, error))
                for address in addresses:
                    if port.probe is None:
                        rows.append(Row(spec, port, host, address, None))
                        continue
                    key = CheckKey(spec.key, port.label, address)
                    if all(c.key != key for c in checks):
                        checks.append(Check(key, port.probe, port.probe_port, port.timing))
                    rows.append(Row(spec, port, host, address, key))
    return rows, checks


def row_state(row: Row, scheduler: Scheduler) -> tuple[str, str, float | None]:
    """(state, reason, last duration in seconds) for a row."""
    if row.error:
        return "unhealthy", row.error, None
    if row.key is None:
        return "healthy", "no probe (always ready)", None
    state, last = scheduler.state(row.key), scheduler.last_result(row.key)
    duration = last.duration if last else None
    if state is None or state.healthy is None:
        return "unknown", last.reason if last else "not probed yet", duration
    return ("healthy" if state.healthy else "unhealthy"), state.reason, duration


def conditions(state: str) -> dict[str, bool]:
    """The EndpointSlice conditions for a host state: unhealthy hosts stay listed, not routed."""
    ready = state == "healthy"
    return {"ready": ready, "serving": ready, "terminating": False}


def _table(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=False)]
    return "\n".join("   ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=False)).rstrip()
                     for line in [header, *lines])


def render_text(rows: list[Row], scheduler: Scheduler) -> str:
    checks, endpoints = [], []
    published: set[tuple[str, str, str]] = set()
    for row in rows:
        state, reason, duration = row_state(row, scheduler)
        shown = f"{duration * 1000:.1f}ms" if duration is not None else "-"
        checks.append([row.spec.key, row.port.label, row.host, row.address, state, reason, shown])
        if row.address != "-" and (row.spec.key, row.port.label, row.address) not in published:
            published.add((row.spec.key, row.port.label, row.address))
            cond = conditions(state)
            endpoints.append([row.spec.key, f"{row.port.label} {row.port.port}->{row.port.target_port}/"
                              f"{row.port.protocol}", row.address,
                              *(str(cond[c]).lower() for c in ("ready", "serving", "terminating"))])
    return (_table(["CLUSTERENDPOINT", "PORT", "HOST", "ADDRESS", "STATE", "REASON", "DURATION"], checks)
            + "\n\nEndpointSlice conditions epctl would publish:\n"
            + _table(["SERVICE", "PORT", "ADDRESS", "READY", "SERVING", "TERMINATING"], endpoints))


def render_json(rows: list[Row], scheduler: Scheduler) -> str:
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = out.setdefault(row.spec.key, {"namespace": row.spec.namespace, "name": row.spec.name, "ports": {}})
        port = entry["ports"].setdefault(row.port.label, {
            "name": row.port.name, "port": row.port.port, "targetPort": row.port.target_port,
            "protocol": row.port.protocol, "probe": row.port.probe.kind.value if row.port.probe else None,
            "endpoints": []})
        state, reason, duration = row_state(row, scheduler)
        port["endpoints"].append({"host": row.host, "address": row.address, "state": state, "reason": reason,
                                  "durationMs": round(duration * 1000, 3) if duration is not None else None,
                                  "conditions": conditions(state)})
    items = [{**v, "ports": list(v["ports"].values())} for v in out.values()]
    healthy = all(row_state(r, scheduler)[0] == "healthy" for r in rows)
    return json.dumps({"healthy": healthy, "clusterEndpoints": items}, indent=2)


def _decision_deadline(checks: list[Check], interval: float) -> float:
    worst = max((c.timing.initial_delay_seconds + max(c.timing.failure_threshold, c.timing.success_threshold)
                 * (interval + c.timing.timeout_seconds) for c in checks), default=0.0)
    return worst + 5.0


async def _until_decided(scheduler: Scheduler, checks: list[Check], timeout: float) -> None:
    """Wait until every check has a threshold decision, or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not all((s := scheduler.state(c.key)) is not None and s.decided for c in checks):
        scheduler.progress.clear()
        try:
            await asyncio.wait_for(scheduler.progress.wait(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return


async def run_check(paths: list[str], *, watch: bool = False, output: str = "table", allow_loopback: bool = False,
                    duration: float = 0.0, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
                    stdin: TextIO = sys.stdin) -> int:
    try:
        specs, problems = parse_all(load_documents(paths, stdin), allow_loopback)
    except CheckInputError as error:
        print(f"error: {error}", file=err)
        return EXIT_INVALID
    if problems:
        print("invalid ClusterEndpoint:", file=err)
        for problem in problems:
            print(f"  {problem}", file=err)
        return EXIT_INVALID
    rows, checks = await plan_rows(specs, allow_loopback)
    for spec in specs:
        if spec.openstack is not None:  # needs the cluster's Secret and the cloud: the controller's job
            print(f"note: {spec.key}: spec.discovery.openstack is valid but not evaluated here; only the listed "
                  "hosts are probed", file=err)
    interval = 1.0

    def report(transition: Transition) -> None:
        if watch:
            stamp = time.strftime("%H:%M:%S", time.localtime(transition.at))
            print(f"{stamp} {transition.key.target} {transition.key.port} {transition.key.address} "
                  f"{'healthy' if transition.healthy else 'unhealthy'}: {transition.reason}", file=out, flush=True)

    scheduler = Scheduler(report, period_override=None if watch else interval, first_window=0.2)
    for check in checks:
        scheduler.upsert(check)
    scheduler.start()
    try:
        await _until_decided(scheduler, checks, _decision_deadline(checks, interval))
        print(render_json(rows, scheduler) if output == "json" else render_text(rows, scheduler), file=out,
              flush=True)
        if watch:
            print("\nwatching for transitions (Ctrl-C to stop)...", file=out, flush=True)
            if duration > 0:
                await asyncio.sleep(duration)
            else:
                await asyncio.Event().wait()
    finally:
        await scheduler.stop()
    healthy = all(row_state(r, scheduler)[0] == "healthy" for r in rows)
    return EXIT_HEALTHY if healthy else EXIT_UNHEALTHY
