"""Parse and validate a ClusterEndpoint document. Pure: no I/O, and it never raises.

Unknown fields are errors (see fields.py). Every problem is collected (not just the first) with the
field path a user can find in their YAML, e.g. ``spec.ports[1].httpGet.scheme: must be HTTP or HTTPS``. Accepts our
``epctl.io/v1beta1`` and the endpoints-operator's ``sealos.io/v1beta1`` shape unchanged (including
its lower-case ``scheme: http`` and ``enable: true`` probe switches).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from epctl.api.fields import unknown_fields
from epctl.api.spec import (
    ACCEPTED_API_VERSIONS,
    ADDRESS_KINDS,
    DATABASE_KINDS,
    DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_INITIAL_DELAY_SECONDS,
    DEFAULT_PERIOD_SECONDS,
    DEFAULT_POLL_SECONDS,
    DEFAULT_SUCCESS_THRESHOLD,
    DEFAULT_TIMEOUT_SECONDS,
    DRAIN_ANNOTATION,
    KIND,
    NOVA_STATUSES,
    ClusterEndpointSpec,
    DatabaseProbe,
    Expect,
    GRPCProbe,
    HTTPProbe,
    OpenStackDiscovery,
    PortSpec,
    Probe,
    ProbeKind,
    ProbeTiming,
    ServerQuery,
    TCPProbe,
    UDPProbe,
)

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}"
                      r"[A-Za-z0-9])?)*\.?$")
HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
PROTOCOLS = ("TCP", "UDP", "SCTP")
MAX_MESSAGE = 200


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str
    whole: bool = False  # the message already names the path (kubectl's "unknown field" wording)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path and not self.whole else self.message


class _Errors:
    def __init__(self) -> None:
        self.items: list[FieldError] = []

    def add(self, path: str, message: str) -> None:
        """Messages quote the offending value; a huge one is cut so one error stays one readable line."""
        if len(message) > MAX_MESSAGE:
            message = f"{message[:MAX_MESSAGE]}... ({len(message) - MAX_MESSAGE} more characters)"
        self.items.append(FieldError(path, message))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _string(errors: _Errors, node: dict[str, Any], key: str, path: str) -> str:
    """An optional string field: missing or null is "", anything else not a string is an error."""
    value = node.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        errors.add(f"{path}.{key}", f"must be a string, got {type(value).__name__}")
        return ""
    return value


def _port_number(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    return None


def _int(errors: _Errors, node: dict[str, Any], key: str, path: str, default: int, minimum: int,
         maximum: int | None = None) -> int:
    value = node.get(key, default)
    if value is None:
        return default
    if not _is_int(value):
        errors.add(f"{path}.{key}", f"must be an integer, got {value!r}")
        return default
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        errors.add(f"{path}.{key}", f"must be {bound}, got {value}")
        return default
    return int(value)


def _mapping(errors: _Errors, value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.add(path, f"must be an object, got {type(value).__name__}")
        return {}
    return value


def _enabled(block: Any) -> bool:
    """A probe block counts as enabled unless it says ``enable: false`` (seed shape: ``enable: true``)."""
    return isinstance(block, dict) and block.get("enable", True) is not False


# Bounds (also in the CRD schema, for objects stored before it had them): an EndpointSlice carries at
# most 100 ports, and 100 ports x 1,000 hosts keeps a ClusterEndpoint and its status far below the
# API server's object size limit (1.5 MiB).
MAX_PORTS = 100
MAX_HOSTS = 1000

# Cloud instance-metadata services (AWS/GCP/Azure/OpenStack, AWS ECS, AWS IPv6, Alibaba). A probe that can
# reach one, with its answer echoed in status and Events, leaks credentials: never an endpoint.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200"))


def host_error(host: Any, allow_loopback: bool) -> str | None:
    """Why ``host`` cannot be an endpoint, or None. DNS names are allowed here; every address they
    resolve to is checked again with :func:`address_error` before it is probed or published."""
    if not isinstance(host, str) or not host:
        return f"must be an IP address or DNS name, got {host!r}"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if HOSTNAME.match(host) and not host.replace(".", "").isdigit():
            return None
        return f"must be an IP address or DNS name, got {host!r}"
    return address_error(host, allow_loopback)


def address_error(address: str, allow_loopback: bool) -> str | None:
    """Why the IP ``address`` cannot be an endpoint, or None. An IPv4-mapped IPv6 address
    (``::ffff:a.b.c.d``) is judged as the IPv4 address it reaches."""
    ip = ipaddress.ip_address(address)
    mapped = isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return f"{address} is a cloud metadata service address, which is never an endpoint"
    if ip.is_unspecified or ip.is_multicast:
        return f"{address} is not a unicast address"
    if ip.is_link_local:
        return f"{address} is link-local, which EndpointSlices may not contain"
    if ip.is_loopback and not allow_loopback:
        return (f"{address} is a loopback address, which EndpointSlices may not contain (--allow-loopback accepts "
                "it, for development)")
    if mapped:
        return f"{address} is an IPv4-mapped IPv6 address; write {ip} instead"
    return None


def _probe(errors: _Errors, port: dict[str, Any], path: str) -> Probe | None:
    enabled = [k for k in ProbeKind if _enabled(port.get(k.value))]
    for kind in ProbeKind:
        block = port.get(kind.value)
        if block is not None and not isinstance(block, dict):
            errors.add(f"{path}.{kind.value}", f"must be an object, got {type(block).__name__}")
    if len(enabled) > 1:
        errors.add(path, "at most one probe may be enabled, found " + ", ".join(k.value for k in enabled))
        return None
    if not enabled:
        return None
    kind = enabled[0]
    block = port[kind.value]
    bpath = f"{path}.{kind.value}"
    probe_port = _port_number(block.get("port"))
    if block.get("port") is not None and probe_port is None:
        errors.add(f"{bpath}.port", f"must be a port number between 1 and 65535, got {block.get('port')!r}")
    if kind is ProbeKind.TCP:
        return TCPProbe(port=probe_port)
    if kind is ProbeKind.HTTP:
        return _http_probe(errors, block, bpath, probe_port)
    if kind is ProbeKind.UDP:
        return UDPProbe(data=_string(errors, block, "data", bpath).encode(), port=probe_port)
    if kind in DATABASE_KINDS:
        return _database_probe(errors, kind, block, bpath, probe_port)
    service = _string(errors, block, "service", bpath)
    tls = _mapping(errors, block.get("tls"), f"{bpath}.tls")
    if tls.get("insecureSkipVerify") is True:
        errors.add(f"{bpath}.tls.insecureSkipVerify", "is not supported: gRPC TLS probes always verify the "
                                                       "server certificate against the system roots")
    return GRPCProbe(service=service, port=probe_port, tls=tls.get("enable", bool(tls)) is True)


def _database_probe(errors: _Errors, kind: ProbeKind, block: dict[str, Any], path: str,
                    port: int | None) -> DatabaseProbe:
    expect_raw = block.get("expect", Expect.ANY.value)
    if expect_raw not in {e.value for e in Expect}:
        errors.add(f"{path}.expect", f"must be primary, replica or any, got {expect_raw!r}")
        expect_raw = Expect.ANY.value
    expect = Expect(expect_raw)
    max_lag: int | None = None
    if block.get("maxLagSeconds") is not None:
        max_lag = _int(errors, block, "maxLagSeconds", path, 0, 0, 86400)
        if expect is Expect.PRIMARY:
            errors.add(f"{path}.maxLagSeconds", "applies to replicas: use it with expect replica or any")
    secret = _mapping(errors, block.get("secretRef"), f"{path}.secretRef")
    secret_name = _string(errors, secret, "name", f"{path}.secretRef")
    if secret and not DNS1123_SUBDOMAIN.match(secret_name):
        errors.add(f"{path}.secretRef.name", f"must be a Secret name (DNS-1123 subdomain), got {secret_name!r}")
    tls = _mapping(errors, block.get("tls"), f"{path}.tls")
    skip = tls.get("insecureSkipVerify", False)
    if not isinstance(skip, bool):
        errors.add(f"{path}.tls.insecureSkipVerify", f"must be a boolean, got {skip!r}")
        skip = False
    server_name = _string(errors, tls, "serverName", f"{path}.tls")
    if server_name and not HOSTNAME.match(server_name):
        errors.add(f"{path}.tls.serverName", f"must be a DNS name, got {server_name!r}")
    if server_name and skip:
        errors.add(f"{path}.tls", "serverName and insecureSkipVerify contradict each other: pick one")
    return DatabaseProbe(kind=kind, expect=expect, max_lag_seconds=max_lag, secret_name=secret_name,
                         database=_string(errors, block, "database", path), port=port,
                         tls=tls.get("enable", bool(tls)) is True, tls_server_name=server_name,
                         tls_insecure_skip_verify=skip)


def _http_probe(errors: _Errors, block: dict[str, Any], path: str, port: int | None) -> HTTPProbe:
    scheme = block.get("scheme") or "HTTP"
    if not isinstance(scheme, str) or scheme.upper() not in ("HTTP", "HTTPS"):
        errors.add(f"{path}.scheme", f"must be HTTP or HTTPS, got {scheme!r}")
        scheme = "HTTP"
    url_path = block.get("path") or "/"
    if not isinstance(url_path, str) or not url_path.startswith("/") or any(c in url_path for c in " \r\n"):
        errors.add(f"{path}.path", f"must be an absolute URL path starting with '/', got {url_path!r}")
        url_path = "/"
    headers = []
    raw_headers = block.get("httpHeaders") or []
    if not isinstance(raw_headers, list):
        errors.add(f"{path}.httpHeaders", "must be a list of {name, value}")
        raw_headers = []
    for i, header in enumerate(raw_headers):
        hpath = f"{path}.httpHeaders[{i}]"
        if not isinstance(header, dict):
            errors.add(hpath, "must be an object with name and value")
            continue
        name, value = header.get("name"), header.get("value", "")
        if not isinstance(name, str) or not HEADER_NAME.match(name):
            errors.add(f"{hpath}.name", f"must be a valid HTTP header name, got {name!r}")
            continue
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            errors.add(f"{hpath}.value", "must be a single-line string")
            continue
        headers.append((name, value))
    skip = block.get("insecureSkipVerify", True)
    if not isinstance(skip, bool):
        errors.add(f"{path}.insecureSkipVerify", f"must be true or false, got {skip!r}")
        skip = True
    return HTTPProbe(path=url_path, scheme=scheme.upper(), port=port, headers=tuple(headers),
                     insecure_skip_verify=skip)


def _timing(errors: _Errors, port: dict[str, Any], path: str, default_period: int) -> ProbeTiming:
    timing = ProbeTiming(
        timeout_seconds=_int(errors, port, "timeoutSeconds", path, DEFAULT_TIMEOUT_SECONDS, 1),
        period_seconds=_int(errors, port, "periodSeconds", path, default_period, 1),
        success_threshold=_int(errors, port, "successThreshold", path, DEFAULT_SUCCESS_THRESHOLD, 1),
        failure_threshold=_int(errors, port, "failureThreshold", path, DEFAULT_FAILURE_THRESHOLD, 1),
        initial_delay_seconds=_int(errors, port, "initialDelaySeconds", path, DEFAULT_INITIAL_DELAY_SECONDS, 0),
    )
    if timing.timeout_seconds > timing.period_seconds:
        errors.add(f"{path}.timeoutSeconds", f"must not exceed periodSeconds ({timing.timeout_seconds} > "
                                             f"{timing.period_seconds})")
    return timing


def _port(errors: _Errors, raw: Any, path: str, default_period: int, allow_loopback: bool,
          need_name: bool) -> PortSpec | None:
    if not isinstance(raw, dict):
        errors.add(path, f"must be an object, got {type(raw).__name__}")
        return None
    name = raw.get("name", "")
    if name is None:
        name = ""
    if not isinstance(name, str) or (name and not (len(name) <= 63 and DNS1123_LABEL.match(name))):
        errors.add(f"{path}.name", f"must be a DNS label (lower case letters, digits, '-'), got {name!r}")
        name = ""
    elif need_name and not name:
        errors.add(f"{path}.name", "is required when there is more than one port")
    protocol = raw.get("protocol") or "TCP"
    if protocol not in PROTOCOLS:
        errors.add(f"{path}.protocol", f"must be one of TCP, UDP, SCTP, got {protocol!r}")
        protocol = "TCP"
    raw_port = raw.get("port")
    port = _port_number(raw_port) or 0
    if not port:
        errors.add(f"{path}.port", f"must be a port number between 1 and 65535, got {raw_port!r}")
    raw_target = raw.get("targetPort")
    target = _port_number(raw_target) or port
    if raw_target is not None and _port_number(raw_target) is None:
        errors.add(f"{path}.targetPort", f"must be a port number between 1 and 65535, got {raw_target!r}")
    hosts_raw = raw.get("hosts") or []
    if not isinstance(hosts_raw, list):
        errors.add(f"{path}.hosts", "must be a list of IP addresses or DNS names")
        hosts_raw = []
    if len(hosts_raw) > MAX_HOSTS:
        errors.add(f"{path}.hosts", f"must have at most {MAX_HOSTS} items, got {len(hosts_raw)}")
        hosts_raw = []
    hosts: list[str] = []
    for i, host in enumerate(hosts_raw):
        problem = host_error(host, allow_loopback)
        if problem:
            errors.add(f"{path}.hosts[{i}]", problem)
        elif host not in hosts:
            hosts.append(host)
    probe = _probe(errors, raw, path)
    timing = _timing(errors, raw, path, default_period)
    return PortSpec(name=name, protocol=protocol, port=port, target_port=target, hosts=tuple(hosts), probe=probe,
                    timing=timing)


def parse_cluster_endpoint(doc: Any, *, allow_loopback: bool = False
                           ) -> tuple[ClusterEndpointSpec | None, list[FieldError]]:
    """Return ``(spec, [])`` for a valid document, or ``(None, errors)``. Never raises."""
    errors = _Errors()
    try:
        spec = _parse(errors, doc, allow_loopback)
    except RecursionError:
        errors.add("", "document is nested too deeply")
        spec = None
    if errors.items:
        return None, errors.items
    return spec, []


def _parse(errors: _Errors, doc: Any, allow_loopback: bool) -> ClusterEndpointSpec | None:
    if not isinstance(doc, dict):
        errors.add("", f"a ClusterEndpoint must be an object, got {type(doc).__name__}")
        return None
    for where, message in unknown_fields(doc):
        errors.items.append(FieldError(where, message, whole=True))
    api_version = doc.get("apiVersion")
    if api_version not in ACCEPTED_API_VERSIONS:
        errors.add("apiVersion", f"must be one of {', '.join(ACCEPTED_API_VERSIONS)}, got {api_version!r}")
    if doc.get("kind") != KIND:
        errors.add("kind", f"must be {KIND}, got {doc.get('kind')!r}")
    meta = _mapping(errors, doc.get("metadata"), "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not (len(name) <= 63 and DNS1035_LABEL.match(name)):
        errors.add("metadata.name", "must be a DNS-1035 label (it names the Service: lower case letters, digits, "
                                    f"'-', starting with a letter), got {name!r}")
        name = ""
    namespace = meta.get("namespace") or "default"
    if not isinstance(namespace, str):
        errors.add("metadata.namespace", f"must be a string, got {namespace!r}")
        namespace = "default"
    spec = _mapping(errors, doc.get("spec"), "spec")
    period = _int(errors, spec, "periodSeconds", "spec", DEFAULT_PERIOD_SECONDS, 1)
    cluster_ip = spec.get("clusterIP")
    if cluster_ip not in (None, "", "None"):
        try:
            ipaddress.ip_address(cluster_ip)
        except (TypeError, ValueError):
            errors.add("spec.clusterIP", f'must be "None" (headless) or an IP address, got {cluster_ip!r}')
    openstack = _discovery(errors, spec.get("discovery"))
    discovery = openstack is not None or spec.get("discovery") is not None
    raw_ports = spec.get("ports")
    if not isinstance(raw_ports, list) or not raw_ports:
        errors.add("spec.ports", "must list at least one port")
        raw_ports = []
    elif len(raw_ports) > MAX_PORTS:
        errors.add("spec.ports", f"must have at most {MAX_PORTS} items, got {len(raw_ports)}")
        raw_ports = []
    ports: list[PortSpec] = []
    names: dict[str, int] = {}
    numbers: dict[tuple[int, str], int] = {}
    for i, raw in enumerate(raw_ports):
        port = _port(errors, raw, f"spec.ports[{i}]", period, allow_loopback, need_name=len(raw_ports) > 1)
        if port is None:
            continue
        if port.name and port.name in names:
            errors.add(f"spec.ports[{i}].name",
                       f"duplicate port name {port.name!r} (also spec.ports[{names[port.name]}])")
        names.setdefault(port.name, i)
        if port.port and (port.port, port.protocol) in numbers:
            errors.add(f"spec.ports[{i}].port", f"duplicate {port.protocol} port {port.port} "
                                                f"(also spec.ports[{numbers[(port.port, port.protocol)]}])")
        numbers.setdefault((port.port, port.protocol), i)
        raw_hosts = raw.get("hosts") if isinstance(raw, dict) else None
        if not raw_hosts and not discovery:
            errors.add(f"spec.ports[{i}].hosts", "must list at least one host (or set spec.discovery)")
        ports.append(port)
    listed = {h for p in ports for h in p.hosts}
    zones = _zones(errors, spec.get("zones"), listed, discovery, allow_loopback)
    drain = _drain(errors, meta.get("annotations"), allow_loopback)
    uid = meta.get("uid", "")
    generation = meta.get("generation", 0)
    return ClusterEndpointSpec(
        name=name, namespace=namespace, ports=tuple(ports),
        cluster_ip=cluster_ip if cluster_ip not in (None, "") else None, period_seconds=period,
        openstack=openstack, uid=uid if isinstance(uid, str) else "",
        generation=generation if _is_int(generation) else 0,
        api_version=api_version if isinstance(api_version, str) else "", drain=drain, zones=zones)


# topology.kubernetes.io/zone is a label value: what kube-proxy compares with its Node's label
ZONE = re.compile(r"^(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def _named_host_error(host: Any, listed: set[str], discovery: bool, allow_loopback: bool, what: str) -> str | None:
    """Why ``host`` (from spec.zones or the drain annotation) names no host of this ClusterEndpoint.
    With discovery it may also name a discovered server, which is only known at run time."""
    if isinstance(host, str) and host in listed:
        return None
    if discovery and isinstance(host, str) and host:
        return None
    problem = host_error(host, allow_loopback)
    if problem:
        return problem
    return f"{host!r} is not in any port's hosts ({what} names hosts as written there)"


def _zones(errors: _Errors, raw: Any, listed: set[str], discovery: bool,
           allow_loopback: bool) -> tuple[tuple[str, str], ...]:
    """``spec.zones``: zone -> hosts. A host is in one zone; the zone reaches ``endpoints[].zone``."""
    zones = _mapping(errors, raw, "spec.zones")
    out: dict[str, str] = {}
    for zone, hosts in zones.items():
        path = f"spec.zones[{zone}]"
        if not isinstance(zone, str) or not ZONE.match(zone):
            errors.add(path, "a zone must be a label value (at most 63 letters, digits, '-', '_', '.', starting and "
                             f"ending with a letter or digit), got {zone!r}")
            continue
        if not isinstance(hosts, list):
            errors.add(path, "must be a list of hosts")
            continue
        for i, host in enumerate(hosts):
            problem = _named_host_error(host, listed, discovery, allow_loopback, "spec.zones")
            if problem:
                errors.add(f"{path}[{i}]", problem)
            elif host in out and out[host] != zone:
                errors.add(f"{path}[{i}]", f"{host!r} is already in zone {out[host]!r}: a host is in one zone")
            else:
                out[host] = zone
    return tuple(sorted(out.items()))


def _drain(errors: _Errors, annotations: Any, allow_loopback: bool) -> tuple[str, ...]:
    """The annotation ``epctl.io/drain``: hosts in maintenance, comma-separated (spaces ignored).

    Only the syntax is an error here: a host that is (no longer) in the ClusterEndpoint is reported by
    the controller instead (status ``drainingHosts[].matched: false`` and an Event), because the usual
    maintenance is "drain, then remove the host from the list", and that edit must not make the whole
    ClusterEndpoint invalid. ``epctl drain`` refuses unknown hosts up front (:func:`unknown_drained`)."""
    value = annotations.get(DRAIN_ANNOTATION) if isinstance(annotations, dict) else None
    if value is None:
        return ()
    path = f"metadata.annotations[{DRAIN_ANNOTATION}]"
    if not isinstance(value, str):
        errors.add(path, f"must be a string, got {type(value).__name__}")
        return ()
    out: list[str] = []
    for host in (h.strip() for h in value.split(",")):
        if not host:
            continue
        problem = host_error(host, allow_loopback)
        if problem:
            errors.add(path, problem)
        elif host not in out:
            out.append(host)
    return tuple(out)


def _regex(errors: _Errors, value: Any, path: str) -> str | None:
    if not isinstance(value, str):
        errors.add(path, f"must be a regular expression string, got {type(value).__name__}")
        return None
    try:
        re.compile(value)
    except re.error as exc:
        errors.add(path, f"invalid regular expression: {exc}")
        return None
    return value


def _strings(errors: _Errors, node: dict[str, Any], key: str, path: str) -> list[str]:
    value = node.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        errors.add(f"{path}.{key}", "must be a list of non-empty strings")
        return []
    return list(value)


def parse_server_query(errors: _Errors, node: dict[str, Any], path: str) -> ServerQuery:
    """The query half of ``spec.discovery.openstack`` (shared with ``epctl manager``'s flags)."""
    name_regex = None
    if node.get("nameRegex") not in (None, ""):
        name_regex = _regex(errors, node["nameRegex"], f"{path}.nameRegex")
    metadata: list[tuple[str, str]] = []
    for key, value in sorted(_mapping(errors, node.get("metadata"), f"{path}.metadata").items()):
        key_ok = _regex(errors, key, f"{path}.metadata[{key}]")
        value_ok = _regex(errors, value, f"{path}.metadata[{key}]")
        if key_ok is not None and value_ok is not None:
            metadata.append((key_ok, value_ok))
    tags = _strings(errors, node, "tags", path)
    for i, tag in enumerate(tags):
        if "," in tag or "/" in tag:
            errors.add(f"{path}.tags[{i}]", f"a Nova tag cannot contain ',' or '/', got {tag!r}")
    statuses = [s.upper() for s in _strings(errors, node, "status", path)] or ["ACTIVE"]
    for i, status in enumerate(statuses):
        if status not in NOVA_STATUSES:
            errors.add(f"{path}.status[{i}]", f"unknown Nova server status {status!r} "
                                              f"(one of {', '.join(sorted(NOVA_STATUSES))})")
    network = _string(errors, node, "network", path) or None
    kind = node.get("addressKind", "fixed")
    if kind not in ADDRESS_KINDS:
        errors.add(f"{path}.addressKind", f"must be one of {', '.join(ADDRESS_KINDS)}, got {kind!r}")
        kind = "fixed"
    version = node.get("ipVersion", 4)
    if version not in (4, 6) or isinstance(version, bool):
        errors.add(f"{path}.ipVersion", f"must be 4 or 6, got {version!r}")
        version = 4
    return ServerQuery(name_regex, tuple(metadata), tuple(sorted(set(tags))), tuple(sorted(set(statuses))),
                       network, kind, int(version))


def _discovery(errors: _Errors, raw: Any) -> OpenStackDiscovery | None:
    if raw is None:
        return None
    node = _mapping(errors, raw, "spec.discovery")  # unknown sources: see fields.py
    if "openstack" not in node:
        return None
    path = "spec.discovery.openstack"
    openstack = _mapping(errors, node["openstack"], path)
    secret = _mapping(errors, openstack.get("secretRef"), f"{path}.secretRef").get("name")
    if not isinstance(secret, str) or not DNS1123_SUBDOMAIN.match(secret):
        errors.add(f"{path}.secretRef.name", "must name a Secret in the ClusterEndpoint's namespace holding the "
                                             f"OpenStack credentials, got {secret!r}")
        secret = ""
    query = parse_server_query(errors, openstack, path)
    poll = _int(errors, openstack, "pollSeconds", path, DEFAULT_POLL_SECONDS, 1)
    keep = openstack.get("keepLastOnEmpty", False)
    if not isinstance(keep, bool):
        errors.add(f"{path}.keepLastOnEmpty", f"must be true or false, got {keep!r}")
        keep = False
    return OpenStackDiscovery(secret, query, poll, keep)


def unknown_drained(spec: ClusterEndpointSpec) -> list[str]:
    """The drained hosts that name no host of ``spec`` (with discovery any name may be a server's)."""
    if spec.openstack is not None:
        return []
    listed = {h for p in spec.ports for h in p.hosts}
    return [h for h in spec.drain if h not in listed]
