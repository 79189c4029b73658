from __future__ import annotations

from epctl.sidecar import default_namespace, endpoints_from_slices


def eps(ip: str, ready: bool | None = True, terminating: bool = False, **extra: object) -> dict[str, object]:
    conditions: dict[str, object] = {"terminating": terminating}
    if ready is not None:
        conditions["ready"] = ready
    return {"addresses": [ip], "conditions": conditions, **extra}


def test_slices_become_endpoints_grouped_by_port_set() -> None:
    http = [{"name": "http", "port": 8080, "protocol": "TCP"}]
    slices = [
        {"addressType": "IPv4", "ports": http, "endpoints": [eps("10.0.0.2"), eps("10.0.0.1", nodeName="n1"),
                                                             eps("10.0.0.3", ready=False)]},
        {"addressType": "IPv4", "ports": http, "endpoints": [eps("10.0.0.4", ready=None),
                                                             eps("10.0.0.5", terminating=True, ready=False)]},
        {"addressType": "IPv6", "ports": [{"name": "grpc", "port": 9000}], "endpoints": [eps("fd00::1")]},
        {"addressType": "FQDN", "ports": http, "endpoints": [eps("db.example")]},
    ]
    out = endpoints_from_slices("ns", "web", slices)
    assert out["kind"] == "Endpoints" and out["metadata"] == {"name": "web", "namespace": "ns"}
    assert out["subsets"] == [
        {"addresses": [{"ip": "fd00::1"}], "ports": [{"name": "grpc", "port": 9000, "protocol": "TCP"}]},
        {"addresses": [{"ip": "10.0.0.1", "nodeName": "n1"}, {"ip": "10.0.0.2"}, {"ip": "10.0.0.4"}],
         "notReadyAddresses": [{"ip": "10.0.0.3"}], "ports": http},
    ]
    assert endpoints_from_slices("ns", "web", [])["subsets"] == []


def test_namespace_from_the_service_account_mount(tmp_path: object) -> None:
    path = f"{tmp_path}/namespace"
    with open(path, "w") as f:
        f.write("team-a\n")
    assert default_namespace(path) == "team-a"
    assert default_namespace(f"{tmp_path}/missing") is None
