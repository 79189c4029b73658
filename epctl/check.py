"""``epctl check``: probe the hosts of ClusterEndpoint manifests from this machine, before applying.

Reads one or more documents (files, multi-document YAML, or ``-`` for stdin), validates them with
the same parser the controller uses, probes every host through the same scheduler and probers,
and prints per port and host: state, reason, last duration; then the endpoint conditions epctl
would publish in EndpointSlices.

``--once`` (the default) probes until every check has reached a threshold decision, at one probe
per second instead of each port's period so the answer comes quickly, and exits 0 if everything is
healthy, 1 if anything is not, 2 on invalid input, 130 when interrupted. ``--watch`` keeps probing
at the real periods and prints each transition after the first table; ``--duration`` bounds the
whole run, counted from the start. Documents of other kinds are skipped with a note, except
Secrets: a database role probe (postgres, mysql, redis) takes its credentials from a Secret in the
input with the name and namespace its ``secretRef`` gives (``kubectl get secret NAME -o yaml``
next to the manifest); its values are never printed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import yaml

from epctl.api import ClusterEndpointSpec, PortSpec, parse_cluster_endpoint
from epctl.api.spec import API_VERSION, KIND
from epctl.probe.credentials import Credentials, CredentialsError, CredentialSource, credentials_from_secret
from epctl.probe.database import DatabaseProber
from epctl.probe.resolve import resolve
from epctl.probe.scheduler import Check, CheckKey, Scheduler, Transition
from epctl.tasks import within

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


# Bounds on input (a manifest is small; an alias bomb or a stray 50 MB file must not hang or flood):
# the API server refuses request bodies over 3 MiB, so no ClusterEndpoint document is bigger.
MAX_INPUT_BYTES = 32 * 1024 * 1024
MAX_DOCUMENT_BYTES = 3 * 1024 * 1024
MAX_EXPANDED_NODES = 100_000  # values after YAML aliases are expanded, per document
MAX_ERRORS_SHOWN = 50  # per document
SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, when built in: ~10x faster


def _expanded_size(root: Any) -> int:
    """How many values ``root`` holds once YAML aliases are expanded (shared nodes count each time they
    are reached), without expanding them; raises CheckInputError on a cycle or past the bound."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, dict | list):
            return 1
        ident = id(node)
        if ident in sizes:
            return sizes[ident]
        if ident in visiting:
            raise CheckInputError("document refers to itself through a YAML alias")
        visiting.add(ident)
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        total = 1 + sum(size(child) for child in children)
        visiting.discard(ident)
        if total > MAX_EXPANDED_NODES:
            raise CheckInputError(f"document expands to more than {MAX_EXPANDED_NODES:,} values through YAML "
                                  "aliases (an alias bomb?)")
        sizes[ident] = total
        return total

    return size(root)


def _split_documents(text: str) -> list[str]:
    """The YAML documents of ``text`` by their ``---`` separators (for the size bound only)."""
    parts: list[str] = []
    current: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.rstrip("\r\n") == "---" or line.startswith(("--- ", "---\t")):
            parts.append("".join(current))
            current = []
        else:
            current.append(line)
    parts.append("".join(current))
    return parts


def _read(path: str, stdin: TextIO) -> str:
    try:
        if path == "-":
            text = stdin.read(MAX_INPUT_BYTES + 1)
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read(MAX_INPUT_BYTES + 1)
    except OSError as err:
        raise CheckInputError(f"{path}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise CheckInputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    if len(text) > MAX_INPUT_BYTES:
        raise CheckInputError(f"{path}: larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB; not a manifest")
    for index, part in enumerate(_split_documents(text)):
        if len(part) > MAX_DOCUMENT_BYTES:
            raise CheckInputError(f"{path}: document {index} is larger than {MAX_DOCUMENT_BYTES // (1024 * 1024)} "
                                  "MiB, the most the API server accepts")
    return text


def load_documents(paths: list[str], stdin: TextIO = sys.stdin) -> list[tuple[str, Any]]:
    """(label, document) for every non-empty YAML document in ``paths``."""
    documents = []
    for path in paths:
        text = _read(path, stdin)
        label = "stdin" if path == "-" else path
        try:
            for index, doc in enumerate(yaml.load_all(text, Loader=SAFE_LOADER)):
                if doc is not None:
                    _expanded_size(doc)
                    documents.append((f"{label}[{index}]", doc))
        except yaml.YAMLError as err:
            raise CheckInputError(f"{path}: not valid YAML: {_shorten(str(err), 500)}") from err
        except RecursionError as err:
            raise CheckInputError(f"{path}: document is nested too deeply") from err
    if not documents:
        raise CheckInputError("no documents found in the input")
    return documents


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def _kind_of(doc: Any) -> tuple[str, str]:
    if not isinstance(doc, dict):
        return "", ""
    return str(doc.get("apiVersion", "")), str(doc.get("kind", ""))


def parse_all(documents: list[tuple[str, Any]], allow_loopback: bool
              ) -> tuple[list[ClusterEndpointSpec], list[str], list[str]]:
    """(specs, problems, notes). Documents of other kinds (a Namespace next to the ClusterEndpoints, the
    whole output of ``kubectl kustomize``) are skipped with a note; only ClusterEndpoints are judged."""
    specs: list[ClusterEndpointSpec] = []
    problems: list[str] = []
    notes: list[str] = []
    for label, doc in documents:
        api_version, kind = _kind_of(doc)
        if isinstance(doc, dict) and kind == "Secret" and api_version == "v1":
            continue  # credentials for database probes (input_secrets), not judged here
        if isinstance(doc, dict) and kind and kind != KIND:
            notes.append(f"{label}: skipped {kind} ({api_version or 'no apiVersion'}): not a ClusterEndpoint")
            continue
        spec, errors = parse_cluster_endpoint(doc, allow_loopback=allow_loopback)
        if spec is None:
            shown = [f"{label}: {_shorten(str(error))}" for error in errors[:MAX_ERRORS_SHOWN]]
            if len(errors) > MAX_ERRORS_SHOWN:
                shown.append(f"{label}: ... and {len(errors) - MAX_ERRORS_SHOWN} more errors")
            problems += shown
            continue
        specs.append(spec)
        if api_version != API_VERSION:
            notes.append(f"{label}: {api_version} is the endpoints-operator's API, which this cluster may not "
                         f"serve; epctl reads the same spec as {API_VERSION}: change only the apiVersion, or run "
                         f"`epctl import -f FILE` to convert it with adoption of the Service it made")
    return specs, problems, notes


def input_secrets(documents: list[tuple[str, Any]]) -> CredentialSource:
    """Credentials from the v1 Secrets in the input, by (namespace, name), for database probes."""
    found: dict[tuple[str, str], dict[str, bytes]] = {}
    broken: set[tuple[str, str]] = set()
    for _label, doc in documents:
        if not (isinstance(doc, dict) and _kind_of(doc) == ("v1", "Secret")):
            continue
        meta = doc.get("metadata") or {}
        key = (str(meta.get("namespace") or "default"), str(meta.get("name") or ""))
        try:
            data = {str(k): base64.b64decode(str(v), validate=True) for k, v in (doc.get("data") or {}).items()}
            data.update({str(k): str(v).encode() for k, v in (doc.get("stringData") or {}).items()})
        except (binascii.Error, ValueError, AttributeError):
            broken.add(key)
            continue
        found[key] = data

    async def read(namespace: str, name: str) -> Credentials:
        if (namespace, name) in broken:
            raise CredentialsError(f"Secret {name}: data is not base64")
        if (namespace, name) not in found:
            raise CredentialsError(f"Secret {name} is not in the input (add `kubectl -n {namespace} get secret "
                                   f"{name} -o yaml`)")
        return credentials_from_secret(found[(namespace, name)])
    return read


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


def conditions(state: str, drained: bool = False) -> dict[str, bool]:
    """The EndpointSlice conditions for a host state: unhealthy hosts stay listed, not routed; a host in
    maintenance (annotation epctl.io/drain) is terminating, not ready, serving as probed."""
    ready = state == "healthy"
    return {"ready": ready and not drained, "serving": ready, "terminating": drained}


def _drained(row: Row) -> bool:
    return row.host in row.spec.drain or row.address in row.spec.drain


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
            cond = conditions(state, _drained(row))
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
                                  "conditions": conditions(state, _drained(row))})
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
            await within(max(0.0, deadline - time.monotonic()), scheduler.progress.wait())
        except TimeoutError:
            return


async def run_check(paths: list[str], *, watch: bool = False, output: str = "table", allow_loopback: bool = False,
                    duration: float = 0.0, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
                    stdin: TextIO = sys.stdin) -> int:
    """Exit code 0/1/2 (see the module docstring). Interrupted (Ctrl-C, SIGTERM): the report of what was
    decided so far is printed and the cancellation propagates, so the command exits 130/143 and
    ``epctl check -f x && kubectl apply -f x`` never applies after an interrupt."""
    started = time.monotonic()
    try:
        documents = load_documents(paths, stdin)
        specs, problems, notes = parse_all(documents, allow_loopback)
    except CheckInputError as error:
        print(f"error: {error}", file=err)
        return EXIT_INVALID
    for note in notes:
        print(f"note: {note}", file=err)
    if problems:
        print("invalid ClusterEndpoint:", file=err)
        for problem in problems:
            print(f"  {problem}", file=err)
        return EXIT_INVALID
    if not specs:
        print("error: no ClusterEndpoint in the input", file=err)
        return EXIT_INVALID
    rows, checks = await plan_rows(specs, allow_loopback)
    for spec in specs:
        if spec.openstack is not None:  # needs the cluster's Secret and the cloud: the controller's job
            print(f"note: {spec.key}: spec.discovery.openstack is valid but not evaluated here (it needs the "
                  "cluster's Secret); only the listed hosts are probed", file=err)
    interval = 1.0
    table_printed = False

    def report(transition: Transition) -> None:
        if watch and table_printed:  # decisions before the table are shown in it
            stamp = time.strftime("%H:%M:%S", time.localtime(transition.at))
            print(f"{stamp} {transition.key.target} {transition.key.port} {transition.key.address} "
                  f"{'healthy' if transition.healthy else 'unhealthy'}: {transition.reason}", file=out, flush=True)

    def render() -> str:
        return render_json(rows, scheduler) if output == "json" else render_text(rows, scheduler)

    def remaining(default: float) -> float:
        return default if duration <= 0 else max(0.0, min(default, started + duration - time.monotonic()))

    scheduler = Scheduler(report, period_override=None if watch else interval, first_window=0.2, keep_last=True,
                          database_prober=DatabaseProber(input_secrets(documents)))
    for check in checks:
        scheduler.upsert(check)
    scheduler.start()
    try:
        try:
            await _until_decided(scheduler, checks, remaining(_decision_deadline(checks, interval)))
        except asyncio.CancelledError:
            print(render(), file=out, flush=True)  # what was decided before the interrupt
            print("interrupted: the report above is incomplete", file=err, flush=True)
            raise
        print(render(), file=out, flush=True)
        table_printed = True
        if watch:
            print("\nwatching for transitions (Ctrl-C to stop)...", file=out, flush=True)
            if duration > 0:
                await asyncio.sleep(remaining(duration))
            else:
                await asyncio.Event().wait()
    finally:
        await scheduler.stop()
    healthy = all(row_state(r, scheduler)[0] == "healthy" for r in rows)
    return EXIT_HEALTHY if healthy else EXIT_UNHEALTHY
