from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from epctl.api import parse_cluster_endpoint
from epctl.api.spec import GRPCProbe, HTTPProbe, ProbeTiming, TCPProbe, UDPProbe

SEALOS = {  # the endpoints-operator README example, unchanged but for the group
    "apiVersion": "sealos.io/v1beta1", "kind": "ClusterEndpoint",
    "metadata": {"name": "wordpress", "namespace": "default"},
    "spec": {"periodSeconds": 10, "ports": [
        {"name": "wp-https", "hosts": ["10.33.40.151", "10.33.40.152"], "protocol": "TCP", "port": 38081,
         "targetPort": 443, "tcpSocket": {"enable": True}, "timeoutSeconds": 1, "failureThreshold": 3,
         "successThreshold": 1},
        {"name": "wp-http", "hosts": ["10.33.40.151", "10.33.40.152"], "protocol": "TCP", "port": 38082,
         "targetPort": 80, "httpGet": {"path": "/healthz", "scheme": "http"}, "timeoutSeconds": 1,
         "failureThreshold": 3, "successThreshold": 1},
        {"name": "wp-udp", "hosts": ["10.33.40.151"], "protocol": "UDP", "port": 38003, "targetPort": 1234,
         "udpSocket": {"enable": True, "data": "This is flag data for UDP svc test"}},
        {"name": "wp-grpc", "hosts": ["10.33.40.151"], "protocol": "TCP", "port": 38083, "targetPort": 8080,
         "grpc": {"enable": True}},
    ]},
}


def doc(**port: Any) -> dict[str, Any]:
    base = {"name": "p", "port": 80, "hosts": ["10.0.0.1"]}
    return {"apiVersion": "epctl.io/v1beta1", "kind": "ClusterEndpoint", "metadata": {"name": "svc"},
            "spec": {"ports": [{**base, **port}]}}


def errors_of(document: Any) -> list[str]:
    spec, errors = parse_cluster_endpoint(document)
    assert (spec is None) == bool(errors)
    return [str(e) for e in errors]


def test_endpoints_operator_document_parses_unchanged() -> None:
    spec, errors = parse_cluster_endpoint(SEALOS)
    assert errors == [] and spec is not None
    https, http, udp, grpc = spec.ports
    assert https.probe == TCPProbe() and https.target_port == 443 and https.hosts == ("10.33.40.151", "10.33.40.152")
    assert http.probe == HTTPProbe(path="/healthz", scheme="HTTP")  # lower-case scheme accepted
    assert udp.probe == UDPProbe(data=b"This is flag data for UDP svc test") and udp.protocol == "UDP"
    assert grpc.probe == GRPCProbe(service="") and grpc.probe_port == 8080
    assert spec.key == "default/wordpress"


def test_kubelet_defaults() -> None:
    spec, _ = parse_cluster_endpoint(doc(tcpSocket={}))
    assert spec is not None
    port = spec.ports[0]
    assert port.timing == ProbeTiming(1, 10, 1, 3, 0) and port.target_port == 80 and port.protocol == "TCP"
    spec, _ = parse_cluster_endpoint({**doc(), "spec": {**doc()["spec"], "periodSeconds": 5}})
    assert spec is not None and spec.ports[0].timing.period_seconds == 5 and spec.ports[0].probe is None
    spec, _ = parse_cluster_endpoint(doc(httpGet={"enable": False}, grpc={"service": "db", "port": 9000}))
    assert spec is not None and spec.ports[0].probe == GRPCProbe(service="db", port=9000)
    assert spec.ports[0].probe_port == 9000


def test_every_error_is_reported_with_its_field_path() -> None:
    bad = {"apiVersion": "epctl.io/v1beta1", "kind": "ClusterEndpoint", "metadata": {"name": "svc"},
           "spec": {"ports": [
               {"name": "a", "port": 70000, "hosts": ["10.0.0.1", "not a host", "127.0.0.1"],
                "protocol": "ICMP"},
               {"name": "a", "port": 80, "targetPort": 0, "hosts": ["db.example.com"],
                "httpGet": {"scheme": "ftp", "path": "x"}, "tcpSocket": {"enable": True}},
               {"name": "c", "port": 81, "hosts": ["10.0.0.2"], "failureThreshold": 0, "timeoutSeconds": 20,
                "httpGet": {"scheme": "gopher"}},
           ]}}
    errors = errors_of(bad)
    assert "spec.ports[0].port: must be a port number between 1 and 65535, got 70000" in errors
    assert "spec.ports[0].protocol: must be one of TCP, UDP, SCTP, got 'ICMP'" in errors
    assert "spec.ports[0].hosts[1]: must be an IP address or DNS name, got 'not a host'" in errors
    assert "spec.ports[0].hosts[2]: 127.0.0.1 is a loopback address, which EndpointSlices may not contain " \
           "(--allow-loopback accepts it, for development)" in errors
    assert "spec.ports[1].name: duplicate port name 'a' (also spec.ports[0])" in errors
    assert "spec.ports[1].targetPort: must be a port number between 1 and 65535, got 0" in errors
    assert "spec.ports[1]: at most one probe may be enabled, found tcpSocket, httpGet" in errors
    assert "spec.ports[2].failureThreshold: must be at least 1, got 0" in errors
    assert "spec.ports[2].timeoutSeconds: must not exceed periodSeconds (20 > 10)" in errors
    assert "spec.ports[2].httpGet.scheme: must be HTTP or HTTPS, got 'gopher'" in errors
    assert len(errors) == 10
    assert errors_of(doc(grpc={"tls": {"enable": True, "insecureSkipVerify": True}})) == [
        "spec.ports[0].grpc.tls.insecureSkipVerify: is not supported: gRPC TLS probes always verify the server "
        "certificate against the system roots"]
    spec, _ = parse_cluster_endpoint(doc(hosts=["127.0.0.1"]), allow_loopback=True)
    assert spec is not None


def test_document_level_errors() -> None:
    assert errors_of([]) == ["a ClusterEndpoint must be an object, got list"]
    errors = errors_of({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "Bad_Name"}, "spec": {}})
    assert errors[0].startswith("apiVersion: must be one of epctl.io/v1beta1")
    assert errors[1] == "kind: must be ClusterEndpoint, got 'Service'"
    assert errors[2].startswith("metadata.name: must be a DNS-1035 label")
    assert errors[3] == "spec.ports: must list at least one port"
    two = [{"port": 1, "hosts": ["10.0.0.1"]}, {"name": "b", "port": 2, "hosts": ["10.0.0.1"]}]
    assert "spec.ports[0].name: is required when there is more than one port" in errors_of(
        {**doc(), "spec": {"ports": two}})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 70000) | st.text(max_size=8) | st.sampled_from(
        ["TCP", "UDP", "HTTP", "https", "10.0.0.1", "::1", "db.local", "/healthz", "epctl.io/v1beta1",
         "ClusterEndpoint"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "port", "targetPort", "hosts", "protocol", "tcpSocket", "httpGet", "udpSocket",
                         "grpc", "enable", "scheme", "path", "data", "service", "httpHeaders", "value", "ports",
                         "periodSeconds", "timeoutSeconds", "failureThreshold", "spec", "metadata", "tls",
                         "apiVersion", "kind", "discovery", "clusterIP"]), children, max_size=6),
    max_leaves=40)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_parser_never_raises_on_random_documents(document: Any) -> None:
    spec, errors = parse_cluster_endpoint(document)
    assert (spec is None) != (errors == [])


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({"port": st.integers(-5, 70000), "hosts": st.lists(
    st.sampled_from(["10.0.0.1", "fe80::1", "2001:db8::1", "x..y", "db", "999.1.1.1"]), max_size=3),
    "httpGet": st.fixed_dictionaries({"scheme": st.sampled_from(["http", "HTTPS", "ftp", None])}),
    "failureThreshold": st.integers(-2, 5)}))
def test_parser_accepts_exactly_the_valid_ports(port: dict[str, Any]) -> None:
    spec, errors = parse_cluster_endpoint(doc(**port))
    valid = (1 <= port["port"] <= 65535 and port["failureThreshold"] >= 1 and port["hosts"] != []
             and all(h in ("10.0.0.1", "2001:db8::1", "db") for h in port["hosts"])
             and port["httpGet"]["scheme"] in ("http", "HTTPS", None))
    assert (spec is not None) == valid, errors


def test_address_guard_unwraps_mapped_addresses_and_refuses_metadata_services() -> None:
    from epctl.api.parse import address_error, host_error
    for address in ("169.254.169.254", "::ffff:169.254.169.254", "fd00:ec2::254", "100.100.100.200",
                    "169.254.170.2"):
        assert "metadata" in (address_error(address, allow_loopback=True) or ""), address
    assert "loopback" in (host_error("::ffff:127.0.0.1", allow_loopback=False) or "")
    assert "write 10.0.0.1 instead" in (host_error("::ffff:10.0.0.1", allow_loopback=False) or "")
    assert host_error("10.0.0.1", allow_loopback=False) is None
    assert host_error("db.example.com", allow_loopback=False) is None  # names: checked once resolved


async def test_every_resolved_address_is_checked() -> None:
    from epctl.probe.resolve import resolve
    addresses, error = await resolve("localhost", allow_loopback=False)
    assert addresses == [] and error and "loopback" in error
    addresses, error = await resolve("localhost", allow_loopback=True)
    assert "127.0.0.1" in addresses
    assert (await resolve("::ffff:169.254.169.254", allow_loopback=True))[0] == []


def test_ports_and_hosts_are_bounded_like_the_crd() -> None:
    many_hosts = {"name": "a", "port": 80, "hosts": [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(1001)]}
    spec, errors = parse_cluster_endpoint({"apiVersion": "epctl.io/v1beta1", "kind": "ClusterEndpoint",
                                           "metadata": {"name": "x"}, "spec": {"ports": [many_hosts]}})
    assert spec is None and any("spec.ports[0].hosts" in str(e) and "at most 1000" in str(e) for e in errors)
    ports = [{"name": f"p{i}", "port": 1000 + i, "hosts": ["10.0.0.1"]} for i in range(101)]
    spec, errors = parse_cluster_endpoint({"apiVersion": "epctl.io/v1beta1", "kind": "ClusterEndpoint",
                                           "metadata": {"name": "x"}, "spec": {"ports": ports}})
    assert spec is None and any("at most 100" in str(e) for e in errors)


# --- strict fields: a typo is an error with its path, never a silently dropped probe -------------------------

def test_misspelt_probe_keys_are_errors_with_their_path() -> None:
    cases = {
        "tcpsocket": ({"tcpsocket": {"enable": True}},
                      'unknown field "spec.ports[0].tcpsocket" (did you mean "tcpSocket"?'),
        "exec": ({"exec": {"command": ["true"]}}, 'unknown field "spec.ports[0].exec": exec probes are not supported'),
        "periodSecond": ({"periodSecond": 5}, 'unknown field "spec.ports[0].periodSecond" (did you mean '
                                              '"periodSeconds"?)'),
        "failureTreshold": ({"failureTreshold": 5}, 'unknown field "spec.ports[0].failureTreshold" (did you mean '
                                                    '"failureThreshold"?)'),
        "shceme": ({"httpGet": {"shceme": "HTTP"}}, 'unknown field "spec.ports[0].httpGet.shceme" (did you mean '
                                                    '"scheme"?)'),
        "foo": ({"tcpSocket": {"foo": 1}}, 'unknown field "spec.ports[0].tcpSocket.foo"'),
    }
    for name, (port, expected) in cases.items():
        errors = errors_of(doc(**port))
        assert len(errors) == 1 and errors[0].startswith(expected), (name, errors)


def test_unknown_fields_anywhere_in_spec_and_lists_are_reported() -> None:
    document = doc(httpGet={"httpHeaders": [{"name": "X", "vaule": "1"}]})
    document["spec"]["discovery"] = {"consul": {}}
    document["spec"]["colour"] = "blue"
    assert errors_of(document) == [
        'unknown field "spec.ports[0].httpGet.httpHeaders[0].vaule" (did you mean "value"?)',
        'unknown field "spec.discovery.consul"', 'unknown field "spec.colour"']
    # metadata, status and the openstack metadata map are free-form
    free = doc()
    free["metadata"]["labels"] = {"a": "b"}
    free["status"] = {"anything": 1}
    assert errors_of(free) == []


def test_field_tree_matches_the_crd_schema() -> None:
    """The parser's known fields and the CRD's properties are one list: adding a field to one without the
    other would either reject a valid object or let a typo through."""
    from pathlib import Path

    import yaml

    from epctl.api.fields import SPEC_FIELDS

    crd = yaml.safe_load(Path("manifests/base/crd.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def tree(node: dict[str, Any]) -> Any:
        if node.get("type") == "array":
            return tree(node["items"])
        if "properties" not in node:
            return None
        return {key: tree(child) for key, child in node["properties"].items()}

    assert tree(schema) == SPEC_FIELDS
