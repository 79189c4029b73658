"""The ClusterEndpoint API: spec model, defaults and validation. Pure (no I/O)."""

from epctl.api.parse import FieldError, parse_cluster_endpoint
from epctl.api.spec import ClusterEndpointSpec, PortSpec, ProbeKind

__all__ = ["ClusterEndpointSpec", "FieldError", "PortSpec", "ProbeKind", "parse_cluster_endpoint"]
