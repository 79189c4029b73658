"""Zones and topology hints end to end: Nodes in the test API server, a ClusterEndpoint with spec.zones,
the Service asking for topology-aware routing through kubectl, and after every change, per zone,
exactly the endpoints that zone's kube-proxy would route to (epctl.testing.kubeproxy)."""

from __future__ import annotations

from typing import Any

from epctl.kube.client import EVENTS, MERGE_PATCH, KubeClient
from epctl.sources.topology import NODES
from epctl.testing.backends import TCPBackend
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.kubeproxy import routes
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import CRD, cep_of, running_controller, service_of, slices_of


def node(name: str, zone: str, cpu: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
            "status": {"allocatable": {"cpu": cpu}, "conditions": [{"type": "Ready", "status": "True"}]}}


async def add_node(client: KubeClient, name: str, zone: str, cpu: str) -> None:
    """A Node as the kubelet leaves it: created, then its status (allocatable CPU, Ready) written."""
    body = node(name, zone, cpu)
    await client.request("POST", NODES.path(), body=body)
    await client.request("PATCH", NODES.path(None, name, "status"), body={"status": body["status"]},
                         content_type=MERGE_PATCH)


def routing(api: KubeAPIServer, service: str) -> dict[str, set[str]]:
    """zone -> the addresses that zone's kube-proxy routes new connections to."""
    svc = service_of(api, service) or {}
    nodes = {n["metadata"]["labels"]["topology.kubernetes.io/zone"]: n
             for n in api.store.objects[("", "nodes")].values()}
    return {zone: routes(svc, slices_of(api, service), n, "pg") for zone, n in sorted(nodes.items())}


def hints_condition(api: KubeAPIServer, name: str) -> tuple[str, str] | None:
    for condition in ((cep_of(api, name) or {}).get("status") or {}).get("conditions") or []:
        if condition["type"] == "TopologyHints":
            return condition["status"], condition["reason"]
    return None


async def test_zone_routing_follows_every_change(api: KubeAPIServer, client: KubeClient, kubectl: Any) -> None:
    await kubectl("apply", "-f", str(CRD))
    await kubectl("wait", "--for=condition=established", "crd/clusterendpoints.epctl.io", "--timeout=10s")
    for name, zone, cpu in (("node-a", "a", "1"), ("node-b", "b", "3000m")):
        await add_node(client, name, zone, cpu)
    async with TCPBackend() as one, running_controller(api, client):
        backends = {f"127.0.0.{i}": await TCPBackend(one.port, host=f"127.0.0.{i}").start() for i in (2, 3, 4)}
        await kubectl("apply", "-f", "-", stdin=f"""apiVersion: epctl.io/v1beta1
kind: ClusterEndpoint
metadata: {{name: pg}}
spec:
  zones: {{a: [127.0.0.1], b: [127.0.0.2, 127.0.0.3, 127.0.0.4]}}
  ports:
  - {{name: pg, port: 5432, targetPort: {one.port}, hosts: [127.0.0.1, 127.0.0.2, 127.0.0.3, 127.0.0.4],
      tcpSocket: {{}}, periodSeconds: 1, failureThreshold: 1}}
""")
        everyone = {"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"}
        await eventually(lambda: routing(api, "pg") == {"a": everyone, "b": everyone}, message="no hints asked")
        zones = {e["addresses"][0]: e.get("zone") for s in slices_of(api, "pg") for e in s["endpoints"]}
        assert zones == {"127.0.0.1": "a", "127.0.0.2": "b", "127.0.0.3": "b", "127.0.0.4": "b"}
        assert hints_condition(api, "pg") is None  # not asked: no condition

        await kubectl("annotate", "service", "pg", "service.kubernetes.io/topology-mode=Auto")
        await eventually(lambda: routing(api, "pg") == {"a": {"127.0.0.1"}, "b": {"127.0.0.2", "127.0.0.3",
                                                                                  "127.0.0.4"}}, message="hinted")
        await eventually(lambda: hints_condition(api, "pg") == ("True", "HintsSet"), message="condition")

        await backends["127.0.0.4"].stop()  # 3 ready: a keeps its 1 (its minimum), b 2
        await eventually(lambda: routing(api, "pg") == {"a": {"127.0.0.1"}, "b": {"127.0.0.2", "127.0.0.3"}},
                         message="one fewer in b")

        await one.stop()  # zone a loses its last ready endpoint: hints drop, every zone routes to every ready
        await eventually(lambda: routing(api, "pg") == {"a": {"127.0.0.2", "127.0.0.3"},
                                                        "b": {"127.0.0.2", "127.0.0.3"}}, message="hints off")
        assert all("hints" not in e for s in slices_of(api, "pg") for e in s["endpoints"])
        await eventually(lambda: hints_condition(api, "pg") == ("False", "ZoneWithoutEndpoints"), message="why")

        async def told() -> bool:  # Events go after the slices and status (routing first)
            events = (await client.request("GET", EVENTS.path("default")))["items"]
            return any(e["reason"] == "TopologyAwareHintsDisabled" and e["involvedObject"]["kind"] == "Service"
                       and "zone a has Nodes but no ready endpoint" in e["message"] for e in events)

        await eventually(told, message="TopologyAwareHintsDisabled Event")

        await one.start()  # back: hints return
        await eventually(lambda: routing(api, "pg") == {"a": {"127.0.0.1"}, "b": {"127.0.0.2", "127.0.0.3"}},
                         message="hints back")

        await kubectl("annotate", "cep", "pg", "epctl.io/drain=127.0.0.1")  # drained: not ready, so a is empty
        await eventually(lambda: routing(api, "pg") == {"a": {"127.0.0.2", "127.0.0.3"},
                                                        "b": {"127.0.0.2", "127.0.0.3"}}, message="drained")

        await add_node(client, "node-c", "c", "2")  # a zone without endpoints
        await kubectl("annotate", "cep", "pg", "epctl.io/drain-")
        await eventually(lambda: hints_condition(api, "pg") == ("False", "ZoneWithoutEndpoints"), message="c")
        await eventually(lambda: routing(api, "pg") == {z: {"127.0.0.1", "127.0.0.2", "127.0.0.3"}
                                                        for z in "abc"}, message="no hints with zone c")
        await client.request("DELETE", NODES.path(None, "node-c"))
        await eventually(lambda: routing(api, "pg") == {"a": {"127.0.0.1"}, "b": {"127.0.0.2", "127.0.0.3"}},
                         message="c gone")

        await kubectl("annotate", "service", "pg", "service.kubernetes.io/topology-mode-")
        await eventually(lambda: all("hints" not in e for s in slices_of(api, "pg") for e in s["endpoints"]),
                         message="hints removed when no longer asked")
        await eventually(lambda: hints_condition(api, "pg") is None, message="condition gone")
        for backend in backends.values():
            await backend.stop()
