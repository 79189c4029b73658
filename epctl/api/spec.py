"""The ClusterEndpoint spec as typed, frozen values (docs/design.md section 4). Pure: no I/O.

Defaults are the kubelet's (timeout 1 s, period 10 s, success 1, failure 3, initial delay 0) so a
probe reads the way a Pod's readinessProbe does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

GROUP = "epctl.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ClusterEndpoint"
# Document shapes accepted unchanged: ours and the endpoints-operator's (all its historic groups).
ACCEPTED_API_VERSIONS = (API_VERSION, "sealos.io/v1beta1", "sealyun.com/v1beta1",
                         "khulnasoft-lab.github.io/v1beta1")

DEFAULT_TIMEOUT_SECONDS = 1
DEFAULT_PERIOD_SECONDS = 10
DEFAULT_SUCCESS_THRESHOLD = 1
DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_INITIAL_DELAY_SECONDS = 0


class ProbeKind(StrEnum):
    TCP = "tcpSocket"
    HTTP = "httpGet"
    UDP = "udpSocket"
    GRPC = "grpc"
    POSTGRES = "postgres"
    MYSQL = "mysql"
    REDIS = "redis"

    @property
    def short(self) -> str:
        return {"tcpSocket": "tcp", "httpGet": "http", "udpSocket": "udp"}.get(self.value, self.value)


@dataclass(frozen=True)
class TCPProbe:
    """Healthy when a TCP connection is accepted."""

    port: int | None = None
    kind: ProbeKind = ProbeKind.TCP


@dataclass(frozen=True)
class HTTPProbe:
    """kubelet httpGet: GET, 200-399 is healthy, same-host redirects followed."""

    path: str = "/"
    scheme: str = "HTTP"
    port: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    insecure_skip_verify: bool = True  # kubelet parity: HTTPS probes do not verify certificates
    kind: ProbeKind = ProbeKind.HTTP


@dataclass(frozen=True)
class UDPProbe:
    """Healthy when any datagram comes back within the timeout."""

    data: bytes = b""
    port: int | None = None
    kind: ProbeKind = ProbeKind.UDP


@dataclass(frozen=True)
class GRPCProbe:
    """grpc.health.v1 Check; only SERVING is healthy."""

    service: str = ""
    port: int | None = None
    tls: bool = False  # an extension (the kubelet has none); always verified, see parse.py
    kind: ProbeKind = ProbeKind.GRPC


class Expect(StrEnum):
    """Which role a database host must have to be ready."""

    PRIMARY = "primary"
    REPLICA = "replica"
    ANY = "any"


DATABASE_KINDS = (ProbeKind.POSTGRES, ProbeKind.MYSQL, ProbeKind.REDIS)


@dataclass(frozen=True)
class DatabaseProbe:
    """A role probe (postgres, mysql, redis): one kept authenticated connection per host, a role query
    each period. Credentials are *named* here (a Secret in the ClusterEndpoint's namespace), never held."""

    kind: ProbeKind
    expect: Expect = Expect.ANY
    max_lag_seconds: int | None = None  # a replica further behind is not ready
    secret_name: str = ""  # keys username, password, ca.crt (all optional)
    database: str = ""  # postgres/mysql: the database to connect to ("" = the driver's default)
    port: int | None = None
    tls: bool = False
    tls_server_name: str = ""  # verify the certificate for this name (default: the address probed)
    tls_insecure_skip_verify: bool = False


Probe = TCPProbe | HTTPProbe | UDPProbe | GRPCProbe | DatabaseProbe


@dataclass(frozen=True)
class ProbeTiming:
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    period_seconds: int = DEFAULT_PERIOD_SECONDS
    success_threshold: int = DEFAULT_SUCCESS_THRESHOLD
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    initial_delay_seconds: int = DEFAULT_INITIAL_DELAY_SECONDS


@dataclass(frozen=True)
class PortSpec:
    """One Service port and the external hosts behind it."""

    name: str
    protocol: str
    port: int
    target_port: int
    hosts: tuple[str, ...]
    probe: Probe | None
    timing: ProbeTiming = field(default_factory=ProbeTiming)

    @property
    def label(self) -> str:
        """How checks, status and reports name this port: its name, or its number when unnamed."""
        return self.name or str(self.port)

    @property
    def probe_port(self) -> int:
        """The port the probe connects to: the probe's own ``port`` if set, else ``targetPort``."""
        if self.probe is not None and self.probe.port is not None:
            return self.probe.port
        return self.target_port


# Nova's server statuses (api-ref "List Servers"): a typo in spec.discovery.openstack.status would
# otherwise silently match nothing and empty the Service.
NOVA_STATUSES = frozenset({
    "ACTIVE", "BUILD", "DELETED", "ERROR", "HARD_REBOOT", "MIGRATING", "PASSWORD", "PAUSED", "REBOOT",
    "REBUILD", "RESCUE", "RESIZE", "REVERT_RESIZE", "SHELVED", "SHELVED_OFFLOADED", "SHUTOFF",
    "SOFT_DELETED", "SUSPENDED", "UNKNOWN", "VERIFY_RESIZE"})
ADDRESS_KINDS = ("fixed", "floating", "any")
DEFAULT_POLL_SECONDS = 30
DRAIN_ANNOTATION = "epctl.io/drain"


@dataclass(frozen=True)
class ServerQuery:
    """Which OpenStack servers, and which of their addresses, become endpoints.

    Hashable: ClusterEndpoints with equal queries (and credentials) share one poller.
    ``name_regex`` is a search (like Nova's own ``name`` filter and the seed's FILTER_NAME: anchor
    it with ``^``/``$``); ``metadata`` pairs are key regex -> value regex, full match, all must hold.
    """

    name_regex: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    tags: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ("ACTIVE",)
    network: str | None = None
    address_kind: str = "fixed"
    ip_version: int = 4


@dataclass(frozen=True)
class OpenStackDiscovery:
    """``spec.discovery.openstack``: credentials from a Secret, a query, how often to poll."""

    secret_name: str
    query: ServerQuery
    poll_seconds: int = DEFAULT_POLL_SECONDS
    keep_last_on_empty: bool = False


@dataclass(frozen=True)
class ClusterEndpointSpec:
    """A validated ClusterEndpoint."""

    name: str
    namespace: str
    ports: tuple[PortSpec, ...]
    cluster_ip: str | None = None
    period_seconds: int = DEFAULT_PERIOD_SECONDS
    openstack: OpenStackDiscovery | None = None
    uid: str = ""
    generation: int = 0
    api_version: str = API_VERSION
    # hosts (as written, an address, or a discovered server's name) in maintenance: the annotation
    # epctl.io/drain, published ready=false, serving=<probe>, terminating=true (docs/design.md section 4)
    drain: tuple[str, ...] = ()
    zones: tuple[tuple[str, str], ...] = ()  # (host as written, zone) from spec.zones

    def zone_of(self, host: str) -> str | None:
        return dict(self.zones).get(host)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"
