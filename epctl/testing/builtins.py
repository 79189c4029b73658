"""The built-in resource types the test API server serves, with their defaulting and validation.

Only the rules that matter to a controller are here, but those follow kube-apiserver closely:
names, labels, Service ports and cluster IPs, EndpointSlice address types (immutable), sizes,
address syntax and the loopback/link-local ban, node names, zone hints, Endpoints subsets
(ValidateEndpoints), Lease specs (ValidateLeaseSpec), core/v1 Events (legacyValidateEvent),
Secret data encoding. Everything epctl writes goes through these, so what the real server would
refuse fails in CI too.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from epctl.testing.apierrors import FieldCause

Obj = dict[str, Any]

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass
class ResourceType:
    """One served resource (group, version, plural) and the rules of its strategy."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    status_subresource: bool = False
    allow_create_on_update: bool = False
    name_rule: str = "subdomain"  # subdomain | label | dns1035
    schema: dict[str, Any] | None = None
    printer_columns: list[dict[str, Any]] = field(default_factory=list)
    selectable_fields: frozenset[str] = frozenset()
    categories: tuple[str, ...] = ()
    crd: bool = False
    strategic_merge: bool = True
    validate: Callable[[Obj, Obj | None, ValidationContext], list[FieldCause]] | None = None
    default: Callable[[Obj, Obj | None, ValidationContext], None] | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def field_selectors(self) -> frozenset[str]:
        base = {"metadata.name"} | ({"metadata.namespace"} if self.namespaced else set())
        return frozenset(base) | self.selectable_fields


@dataclass
class ValidationContext:
    """Server switches and allocators a strategy may need."""

    allow_loopback: bool
    allocate_cluster_ip: Callable[[], str]
    allocate_node_port: Callable[[], int]


def validate_name(rt: ResourceType, name: str, path: str = "metadata.name") -> list[FieldCause]:
    if not name:
        return [FieldCause(path, "Required value: name or generateName is required", "FieldValueRequired")]
    if rt.name_rule == "label":
        ok, rule = len(name) <= 63 and DNS1123_LABEL.match(name), "a lowercase RFC 1123 label"
    elif rt.name_rule == "dns1035":
        ok, rule = len(name) <= 63 and DNS1035_LABEL.match(name), "a DNS-1035 label"
    else:
        ok, rule = len(name) <= 253 and DNS1123_SUBDOMAIN.match(name), "a lowercase RFC 1123 subdomain"
    if ok:
        return []
    return [FieldCause(path, f'Invalid value: "{name}": {rule} must consist of lower case alphanumeric '
                             "characters, '-' or '.', and must start and end with an alphanumeric character")]


def _qualified_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(QUALIFIED_NAME.match(name))


def validate_metadata(obj: Obj) -> list[FieldCause]:
    causes = []
    meta = obj.get("metadata", {})
    for key, value in (meta.get("labels") or {}).items():
        if not _qualified_key_ok(key):
            causes.append(FieldCause("metadata.labels", f'Invalid value: "{key}": name part must consist of '
                                     "alphanumeric characters, '-', '_' or '.'"))
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            causes.append(FieldCause("metadata.labels", f'Invalid value: "{value}": a valid label must be '
                                     "an empty string or consist of alphanumeric characters, '-', '_' or "
                                     "'.', and must start and end with an alphanumeric character"))
    for key in (meta.get("annotations") or {}):
        if not _qualified_key_ok(key):
            causes.append(FieldCause("metadata.annotations", f'Invalid value: "{key}": name part must '
                                     "consist of alphanumeric characters, '-', '_' or '.'"))
    controllers = []
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        for req in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(req):
                causes.append(FieldCause(f"metadata.ownerReferences[{i}].{req}", "Required value",
                                         "FieldValueRequired"))
        if ref.get("controller") is True:
            controllers.append(f"{ref.get('kind')}/{ref.get('name')}")
    if len(controllers) > 1:
        causes.append(FieldCause("metadata.ownerReferences", "Invalid value: Only one reference can have "
                                 f'Controller set to true. Found "true" in references for {controllers[0]} and '
                                 f"{controllers[1]}"))
    return causes


# --- Service ----------------------------------------------------------------------------------

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
PROTOCOLS = ("TCP", "UDP", "SCTP")


def default_service(obj: Obj, old: Obj | None, ctx: ValidationContext) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        if "targetPort" not in port and isinstance(port.get("port"), int):
            port["targetPort"] = port["port"]
        if spec["type"] in ("NodePort", "LoadBalancer") and not port.get("nodePort"):
            previous = {(p.get("port"), p.get("protocol")): p.get("nodePort")
                        for p in ((old or {}).get("spec", {}).get("ports") or [])}
            port["nodePort"] = previous.get((port.get("port"), port["protocol"])) or ctx.allocate_node_port()
    if spec["type"] == "ExternalName":
        return
    old_ip = (old or {}).get("spec", {}).get("clusterIP")
    if old_ip and not spec.get("clusterIP"):
        spec["clusterIP"] = old_ip
    if not spec.get("clusterIP"):
        spec["clusterIP"] = ctx.allocate_cluster_ip()
    spec["clusterIPs"] = [spec["clusterIP"]]
    if spec["clusterIP"] != "None":
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    if spec["type"] in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    obj.setdefault("status", {}).setdefault("loadBalancer", {})


def validate_service(obj: Obj, old: Obj | None, ctx: ValidationContext) -> list[FieldCause]:
    causes: list[FieldCause] = []
    spec = obj.get("spec", {})
    stype = spec.get("type", "ClusterIP")
    if stype not in SERVICE_TYPES:
        causes.append(FieldCause("spec.type", f'Unsupported value: "{stype}": supported values: '
                                 + ", ".join(f'"{t}"' for t in SERVICE_TYPES), "FieldValueNotSupported"))
    ports = spec.get("ports") or []
    headless = spec.get("clusterIP") == "None"
    if not ports and stype != "ExternalName" and not headless:
        causes.append(FieldCause("spec.ports", "Required value", "FieldValueRequired"))
    seen_names, seen_ports = set(), set()
    for i, port in enumerate(ports):
        path = f"spec.ports[{i}]"
        name = port.get("name", "")
        if len(ports) > 1 and not name:
            causes.append(FieldCause(f"{path}.name", "Required value", "FieldValueRequired"))
        if name:
            if not (len(name) <= 63 and DNS1123_LABEL.match(name)):
                causes.append(FieldCause(f"{path}.name", f'Invalid value: "{name}": a lowercase RFC 1123 '
                                         "label must consist of lower case alphanumeric characters or '-'"))
            if name in seen_names:
                causes.append(FieldCause(f"{path}.name", f'Duplicate value: "{name}"', "FieldValueDuplicate"))
            seen_names.add(name)
        number = port.get("port")
        if not isinstance(number, int) or not 1 <= number <= 65535:
            causes.append(FieldCause(f"{path}.port", f"Invalid value: {number}: must be between 1 and 65535, "
                                     "inclusive"))
        protocol = port.get("protocol", "TCP")
        if protocol not in PROTOCOLS:
            causes.append(FieldCause(f"{path}.protocol", f'Unsupported value: "{protocol}": supported '
                                     'values: "SCTP", "TCP", "UDP"', "FieldValueNotSupported"))
        if (number, protocol) in seen_ports:
            causes.append(FieldCause(path, f'Duplicate value: {{"port": {number}, "protocol": "{protocol}"}}',
                                     "FieldValueDuplicate"))
        seen_ports.add((number, protocol))
        target = port.get("targetPort")
        if isinstance(target, int) and not 1 <= target <= 65535:
            causes.append(FieldCause(f"{path}.targetPort", f"Invalid value: {target}: must be between 1 and "
                                     "65535, inclusive"))
        if isinstance(target, str) and not IANA_SVC_NAME.match(target):
            causes.append(FieldCause(f"{path}.targetPort", f'Invalid value: "{target}": must be no more '
                                     "than 15 characters, lower case alphanumeric and '-'"))
    old_ip = (old or {}).get("spec", {}).get("clusterIP")
    if old_ip and spec.get("clusterIP") != old_ip and stype != "ExternalName":
        causes.append(FieldCause("spec.clusterIPs[0]", "Invalid value: []string{\"" + str(spec.get("clusterIP"))
                                 + "\"}: may not change once set"))
    return causes


# --- EndpointSlice ----------------------------------------------------------------------------

ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")
MAX_ENDPOINTS = 1000
MAX_PORTS = 20000  # discovery validation's maxPorts (it was 100 in v1beta1 days)
MAX_ADDRESSES = 100
MAX_ZONE_HINTS = 8


def _link_local_multicast(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Go's IP.IsLinkLocalMulticast, which ValidateNonSpecialIP uses: 224.0.0.0/24, or IPv6
    multicast of link-local scope (other multicast addresses are accepted)."""
    if ip.version == 4:
        return ip in ipaddress.ip_network("224.0.0.0/24")
    return ip.packed[0] == 0xFF and ip.packed[1] & 0x0F == 0x02


def _address_causes(address: Any, address_type: str, path: str, allow_loopback: bool) -> list[FieldCause]:
    if address_type == "FQDN":  # IsFullyQualifiedDomainName: a subdomain of at least two labels
        name = address[:-1] if isinstance(address, str) and address.endswith(".") else address
        if not isinstance(name, str) or len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
            return [FieldCause(path, f'Invalid value: "{address}": must be a valid DNS subdomain')]
        if "." not in name:
            return [FieldCause(path, f'Invalid value: "{address}": should be a domain with at least two segments '
                                     "separated by dots")]
        return []
    try:
        ip = ipaddress.ip_address(address)
    except (TypeError, ValueError):
        return [FieldCause(path, f'Invalid value: "{address}": must be a valid IP address')]
    if (ip.version == 4) != (address_type == "IPv4"):
        return [FieldCause(path, f'Invalid value: "{address}": must be a valid {address_type} address')]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # Go's net.IP judges ::ffff:a.b.c.d as the IPv4 address
    if ip.is_unspecified:
        return [FieldCause(path, f'Invalid value: "{address}": may not be unspecified (0.0.0.0)')]
    if ip.is_loopback and not allow_loopback:
        return [FieldCause(path, f'Invalid value: "{address}": may not be in the loopback range '
                                 "(127.0.0.0/8, ::1/128)")]
    if ip.is_link_local:
        return [FieldCause(path, f'Invalid value: "{address}": may not be in the link-local range '
                                 "(169.254.0.0/16, fe80::/10)")]
    if _link_local_multicast(ip):
        return [FieldCause(path, f'Invalid value: "{address}": may not be in the link-local multicast '
                                 "range (224.0.0.0/24, ff02::/10)")]
    return []


MAX_ZONE_HINTS = 8
LABEL_VALUE = re.compile(r"^(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def validate_endpointslice(obj: Obj, old: Obj | None, ctx: ValidationContext) -> list[FieldCause]:
    causes: list[FieldCause] = []
    address_type = obj.get("addressType")
    if address_type is None:
        causes.append(FieldCause("addressType", "Required value", "FieldValueRequired"))
    elif address_type not in ADDRESS_TYPES:
        causes.append(FieldCause("addressType", f'Unsupported value: "{address_type}": supported values: '
                                 '"FQDN", "IPv4", "IPv6"', "FieldValueNotSupported"))
    if old is not None and old.get("addressType") != address_type:
        causes.append(FieldCause("addressType", f'Invalid value: "{address_type}": field is immutable'))
    endpoints = obj.get("endpoints") or []
    if len(endpoints) > MAX_ENDPOINTS:
        causes.append(FieldCause("endpoints", f"Too many: {len(endpoints)}: must have at most "
                                 f"{MAX_ENDPOINTS} items", "FieldValueTooMany"))
    for i, endpoint in enumerate(endpoints[:MAX_ENDPOINTS]):
        path = f"endpoints[{i}]"
        addresses = endpoint.get("addresses") or []
        if not addresses:
            causes.append(FieldCause(f"{path}.addresses", "Required value: must contain at least 1 address",
                                     "FieldValueRequired"))
        if len(addresses) > MAX_ADDRESSES:
            causes.append(FieldCause(f"{path}.addresses", f"Too many: {len(addresses)}: must have at most "
                                     f"{MAX_ADDRESSES} items", "FieldValueTooMany"))
        if address_type in ADDRESS_TYPES:
            for j, address in enumerate(addresses):
                causes += _address_causes(address, address_type, f"{path}.addresses[{j}]", ctx.allow_loopback)
        for cond, value in (endpoint.get("conditions") or {}).items():
            if cond not in ("ready", "serving", "terminating") or not isinstance(value, (bool, type(None))):
                causes.append(FieldCause(f"{path}.conditions.{cond}", f"Invalid value: {value!r}"))
        zone_hints = ((endpoint.get("hints") or {}).get("forZones") or [])
        if len(zone_hints) > MAX_ZONE_HINTS:  # validateHints (pkg/apis/discovery/validation)
            causes.append(FieldCause(f"{path}.hints.forZones", f"Too many: {len(zone_hints)}: must have at most "
                                     f"{MAX_ZONE_HINTS} items", "FieldValueTooMany"))
        seen_zones: set[str] = set()
        for j, hint in enumerate(zone_hints[:MAX_ZONE_HINTS]):
            zone = (hint or {}).get("name") or ""
            if not LABEL_VALUE.match(zone):
                causes.append(FieldCause(f"{path}.hints.forZones[{j}].name", f'Invalid value: "{zone}": a valid '
                                         "label must be an empty string or consist of alphanumeric characters, '-', "
                                         "'_' or '.'"))
            elif zone in seen_zones:
                causes.append(FieldCause(f"{path}.hints.forZones[{j}].name", f'Duplicate value: "{zone}"',
                                         "FieldValueDuplicate"))
            seen_zones.add(zone)
        hostname = endpoint.get("hostname")
        if hostname is not None and not DNS1123_LABEL.match(str(hostname)):
            causes.append(FieldCause(f"{path}.hostname", f'Invalid value: "{hostname}": a lowercase RFC 1123 '
                                     "label must consist of lower case alphanumeric characters or '-'"))
        causes += _node_name_causes(endpoint.get("nodeName"), f"{path}.nodeName")
    ports = obj.get("ports") or []
    if len(ports) > MAX_PORTS:
        causes.append(FieldCause("ports", f"Too many: {len(ports)}: must have at most {MAX_PORTS} items",
                                 "FieldValueTooMany"))
    names = set()
    for i, port in enumerate(ports):
        name = port.get("name", "") or ""
        if name and not (len(name) <= 63 and DNS1123_LABEL.match(name)):
            causes.append(FieldCause(f"ports[{i}].name", f'Invalid value: "{name}": a lowercase RFC 1123 label '
                                     "must consist of lower case alphanumeric characters or '-'"))
        if name in names:
            causes.append(FieldCause(f"ports[{i}].name", f'Duplicate value: "{name}"', "FieldValueDuplicate"))
        names.add(name)
        protocol = port.get("protocol", "TCP")
        if protocol not in PROTOCOLS:
            causes.append(FieldCause(f"ports[{i}].protocol", f'Unsupported value: "{protocol}": supported '
                                     'values: "SCTP", "TCP", "UDP"', "FieldValueNotSupported"))
        number = port.get("port")
        if number is not None and (not isinstance(number, int) or not 0 <= number <= 65535):
            causes.append(FieldCause(f"ports[{i}].port", f"Invalid value: {number}: must be between 0 and "
                                     "65535, inclusive"))
        causes += _app_protocol_causes(port.get("appProtocol"), f"ports[{i}].appProtocol")
    return causes


def _node_name_causes(node: Any, path: str) -> list[FieldCause]:
    """ValidateNodeName: a DNS subdomain."""
    if node is None or (isinstance(node, str) and len(node) <= 253 and DNS1123_SUBDOMAIN.match(node)):
        return []
    return [FieldCause(path, f'Invalid value: "{node}": a lowercase RFC 1123 subdomain must consist of lower case '
                             "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                             "character")]


def _app_protocol_causes(value: Any, path: str) -> list[FieldCause]:
    """ValidateQualifiedName, as for an appProtocol."""
    if value is None or (isinstance(value, str) and _qualified_key_ok(value)):
        return []
    return [FieldCause(path, f'Invalid value: "{value}": name part must consist of alphanumeric characters, '
                             "'-', '_' or '.', and must start and end with an alphanumeric character")]


def default_endpointslice(obj: Obj, old: Obj | None, ctx: ValidationContext) -> None:
    for port in obj.get("ports") or []:
        port.setdefault("protocol", "TCP")
    for endpoint in obj.get("endpoints") or []:
        endpoint.setdefault("conditions", {})


# --- Endpoints --------------------------------------------------------------------------------

def default_endpoints(obj: Obj, old: Obj | None, ctx: ValidationContext) -> None:
    """SetDefaults_EndpointPort: an empty protocol is TCP."""
    for subset in obj.get("subsets") or []:
        for port in subset.get("ports") or []:
            if not port.get("protocol"):
                port["protocol"] = "TCP"


def _label_causes(value: Any, path: str) -> list[FieldCause]:
    if isinstance(value, str) and len(value) <= 63 and DNS1123_LABEL.match(value):
        return []
    return [FieldCause(path, f'Invalid value: "{value}": a lowercase RFC 1123 label must consist of lower case '
                             "alphanumeric characters or '-', and must start and end with an alphanumeric character")]


def validate_endpoints(obj: Obj, old: Obj | None, ctx: ValidationContext) -> list[FieldCause]:
    """ValidateEndpoints / validateEndpointSubsets: a subset needs ``addresses`` or
    ``notReadyAddresses``; each address a valid, non-special IP, an RFC 1123 label hostname and a
    subdomain nodeName; each port a number in 1-65535, a supported protocol, and a name (an RFC
    1123 label) when the subset has more than one."""
    causes: list[FieldCause] = []
    for i, subset in enumerate(obj.get("subsets") or []):
        path = f"subsets[{i}]"
        if not subset.get("addresses") and not subset.get("notReadyAddresses"):
            causes.append(FieldCause(path, "Required value: must specify `addresses` or `notReadyAddresses`",
                                     "FieldValueRequired"))
        for key in ("addresses", "notReadyAddresses"):
            for j, address in enumerate(subset.get(key) or []):
                where = f"{path}.{key}[{j}]"
                ip = address.get("ip", "")
                family = "IPv6" if ":" in str(ip) else "IPv4"
                causes += _address_causes(ip, family, f"{where}.ip", ctx.allow_loopback)
                if address.get("hostname"):
                    causes += _label_causes(address["hostname"], f"{where}.hostname")
                causes += _node_name_causes(address.get("nodeName"), f"{where}.nodeName")
        ports = subset.get("ports") or []
        for j, port in enumerate(ports):
            where = f"{path}.ports[{j}]"
            name = port.get("name") or ""
            if len(ports) > 1 and not name:
                causes.append(FieldCause(f"{where}.name", "Required value", "FieldValueRequired"))
            elif name:
                causes += _label_causes(name, f"{where}.name")
            number = port.get("port")
            if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
                causes.append(FieldCause(f"{where}.port", f"Invalid value: {number}: must be between 1 and 65535, "
                                         "inclusive"))
            protocol = port.get("protocol")
            if not protocol:
                causes.append(FieldCause(f"{where}.protocol", "Required value", "FieldValueRequired"))
            elif protocol not in PROTOCOLS:
                causes.append(FieldCause(f"{where}.protocol", f'Unsupported value: "{protocol}": supported '
                                         'values: "SCTP", "TCP", "UDP"', "FieldValueNotSupported"))
            causes += _app_protocol_causes(port.get("appProtocol"), f"{where}.appProtocol")
    return causes


# --- Lease / Event ------------------------------------------------------------------------------

def validate_lease(obj: Obj, old: Obj | None, ctx: ValidationContext) -> list[FieldCause]:
    """coordination ValidateLeaseSpec: a duration above 0, transitions not negative, a preferred
    holder only with a strategy."""
    causes: list[FieldCause] = []
    spec = obj.get("spec") or {}
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and (not isinstance(duration, int) or duration <= 0):
        causes.append(FieldCause("spec.leaseDurationSeconds", f"Invalid value: {duration}: must be greater than 0"))
    transitions = spec.get("leaseTransitions")
    if transitions is not None and (not isinstance(transitions, int) or transitions < 0):
        causes.append(FieldCause("spec.leaseTransitions", f"Invalid value: {transitions}: must be greater than or "
                                 "equal to 0"))
    if spec.get("preferredHolder") and not spec.get("strategy"):
        causes.append(FieldCause("spec.preferredHolder", "Forbidden: may only be specified if `strategy` is defined",
                                 "FieldValueForbidden"))
    return causes


def validate_core_event(obj: Obj, old: Obj | None, ctx: ValidationContext) -> list[FieldCause]:
    """legacyValidateEvent, which is all a core/v1 Event gets: without eventTime (a client-go
    broadcaster's Event) the namespaces must agree; with it, the reporting fields are required."""
    causes: list[FieldCause] = []
    namespace = (obj.get("metadata") or {}).get("namespace", "")
    involved_ns = (obj.get("involvedObject") or {}).get("namespace", "")
    if not obj.get("eventTime"):
        mismatch = namespace not in ("", "default") if not involved_ns else namespace != involved_ns
        if mismatch:
            causes.append(FieldCause("involvedObject.namespace", f'Invalid value: "{involved_ns}": does not match '
                                     "event.namespace"))
    else:
        if not involved_ns and namespace not in ("default", "kube-system"):
            causes.append(FieldCause("involvedObject.namespace", f'Invalid value: "{involved_ns}": does not match '
                                     "event.namespace"))
        controller = obj.get("reportingComponent") or ""
        if not controller:
            causes.append(FieldCause("reportingComponent", "Required value", "FieldValueRequired"))
        elif not _qualified_key_ok(controller):
            causes.append(FieldCause("reportingComponent", f'Invalid value: "{controller}": name part must consist '
                                     "of alphanumeric characters, '-', '_' or '.'"))
        for key, limit in (("reportingInstance", 128), ("action", 128), ("reason", 128)):
            value = obj.get(key) or ""
            if not value:
                causes.append(FieldCause(key, "Required value", "FieldValueRequired"))
            elif len(value.encode()) > limit:
                causes.append(FieldCause(key, f'Invalid value: "": can have at most {limit} characters'))
        if len((obj.get("message") or "").encode()) > 1024:
            causes.append(FieldCause("message", 'Invalid value: "": can have at most 1024 characters'))
    if not (len(namespace) <= 253 and DNS1123_SUBDOMAIN.match(namespace)):
        causes.append(FieldCause("namespace", f'Invalid value: "{namespace}": a lowercase RFC 1123 subdomain'))
    return causes


# --- Secret / Namespace -----------------------------------------------------------------------

def default_secret(obj: Obj, old: Obj | None, ctx: ValidationContext) -> None:
    """``stringData`` is write-only: merged into ``data`` (base64) and dropped, as on a real server."""
    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
    obj.setdefault("type", "Opaque")


def validate_secret(obj: Obj, old: Obj | None, ctx: ValidationContext) -> list[FieldCause]:
    causes = []
    for key, value in (obj.get("data") or {}).items():
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            causes.append(FieldCause(f"data[{key}]", "Invalid value: illegal base64 data"))
    if old is not None and old.get("type") != obj.get("type"):
        causes.append(FieldCause("type", f'Invalid value: "{obj.get("type")}": field is immutable'))
    return causes


def default_namespace(obj: Obj, old: Obj | None, ctx: ValidationContext) -> None:
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")
    labels = obj.setdefault("metadata", {}).setdefault("labels", {})
    labels["kubernetes.io/metadata.name"] = obj["metadata"].get("name", "")


# --- CRD ----------------------------------------------------------------------------------------

def validate_crd(obj: Obj, old: Obj | None, ctx: ValidationContext) -> list[FieldCause]:
    causes: list[FieldCause] = []
    spec = obj.get("spec", {})
    names = spec.get("names", {})
    group = spec.get("group", "")
    for req in ("plural", "kind"):
        if not names.get(req):
            causes.append(FieldCause(f"spec.names.{req}", "Required value", "FieldValueRequired"))
    if not group or "." not in group:
        causes.append(FieldCause("spec.group", f'Invalid value: "{group}": should be a domain with at least '
                                 "one dot", "FieldValueInvalid"))
    expected = f"{names.get('plural', '')}.{group}"
    if obj.get("metadata", {}).get("name") != expected:
        causes.append(FieldCause("metadata.name", f'Invalid value: "{obj.get("metadata", {}).get("name")}": '
                                 f'must be spec.names.plural+"."+spec.group'))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(FieldCause("spec.scope", f'Unsupported value: "{spec.get("scope")}": supported values: '
                                 '"Cluster", "Namespaced"', "FieldValueNotSupported"))
    versions = spec.get("versions") or []
    if not versions:
        causes.append(FieldCause("spec.versions", "Required value", "FieldValueRequired"))
    if sum(1 for v in versions if v.get("storage")) != 1:
        causes.append(FieldCause("spec.versions", "Invalid value: must have exactly one version marked as "
                                 "storage version"))
    for i, version in enumerate(versions):
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:
            causes.append(FieldCause(f"spec.versions[{i}].schema.openAPIV3Schema", "Required value: schemas "
                                     "are required", "FieldValueRequired"))
    if old is not None:
        if old.get("spec", {}).get("scope") != spec.get("scope"):
            causes.append(FieldCause("spec.scope", "Invalid value: field is immutable"))
    return causes


def builtin_types() -> list[ResourceType]:
    """Every built-in resource the server serves at start-up."""
    event_fields = frozenset({"involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                              "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
                              "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"})
    return [
        ResourceType("", "v1", "namespaces", "Namespace", False, ("ns",), status_subresource=True,
                     name_rule="label", default=default_namespace, selectable_fields=frozenset({"status.phase"})),
        ResourceType("", "v1", "services", "Service", True, ("svc",), status_subresource=True,
                     name_rule="dns1035", validate=validate_service, default=default_service,
                     categories=("all",)),
        ResourceType("", "v1", "endpoints", "Endpoints", True, ("ep",), allow_create_on_update=True,
                     validate=validate_endpoints, default=default_endpoints),
        ResourceType("", "v1", "events", "Event", True, ("ev",), allow_create_on_update=True,
                     selectable_fields=event_fields, validate=validate_core_event),
        ResourceType("", "v1", "secrets", "Secret", True, validate=validate_secret, default=default_secret,
                     selectable_fields=frozenset({"type"})),
        ResourceType("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
        ResourceType("", "v1", "pods", "Pod", True, ("po",), status_subresource=True, categories=("all",)),
        ResourceType("", "v1", "nodes", "Node", False, ("no",), status_subresource=True),
        ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True, ("sa",)),
        ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True,
                     validate=validate_endpointslice, default=default_endpointslice),
        ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True, validate=validate_lease),
        ResourceType("events.k8s.io", "v1", "events", "Event", True, ("ev",), allow_create_on_update=True),
        ResourceType("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                     False, ("crd", "crds"), status_subresource=True, validate=validate_crd),
        ResourceType("apps", "v1", "deployments", "Deployment", True, ("deploy",), status_subresource=True,
                     categories=("all",)),
        ResourceType("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, ("pdb",),
                     status_subresource=True),
        ResourceType("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
        ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
        ResourceType("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
        ResourceType("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    ]
