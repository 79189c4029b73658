"""The ClusterEndpoint spec as typed, frozen values (DESIGN.md section 4). Pure: no I/O.

Defaults are the kubelet's (timeout 1 s, period 10 s, success 1, failure 3, initial delay 0) so a
probe reads the way a Pod's readinessProbe does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

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

    @property
    def short(self) -> str:
        return {"tcpSocket": "tcp", "httpGet": "http", "udpSocket": "udp", "grpc": "grpc"}[self.value]


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


Probe = TCPProbe | HTTPProbe | UDPProbe | GRPCProbe


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


@dataclass(frozen=True)
class ClusterEndpointSpec:
    """A validated ClusterEndpoint."""

    name: str
    namespace: str
    ports: tuple[PortSpec, ...]
    cluster_ip: str | None = None
    period_seconds: int = DEFAULT_PERIOD_SECONDS
    discovery: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    uid: str = ""
    generation: int = 0
    api_version: str = API_VERSION

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"
