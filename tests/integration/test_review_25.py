"""Second review of issue 25 (routing first, the v1 Endpoints hold): one reproduction per problem found.

F1: the Endpoints copy holds a host not ready until a probe of ours passes. A probe that passes while
its check already counts healthy (adopted healthy from the slices at a start or takeover; or one failure
under the threshold) is no transition, so nothing planned the target again and the hold stayed for good.
F2: under contention a removed target's Endpoints delete waits behind the others' slices; it was then
skipped as "removed meanwhile" and never retried, leaving an Endpoints object nobody publishes."""

from __future__ import annotations

from epctl.kube.client import ENDPOINTS, MERGE_PATCH, SERVICES, KubeClient
from epctl.testing.backends import TCPBackend
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import (
    CLUSTERENDPOINTS,
    cep,
    endpoints_of,
    install_crd,
    running_controller,
    source_service,
    v1_addresses,
    v1_endpoints,
)


async def test_a_hold_on_the_endpoints_copy_lifts_after_a_passing_probe_that_is_no_transition(
        api: KubeAPIServer, client: KubeClient) -> None:
    """A process is killed after writing a host's slice ready and before its deferred Endpoints write
    (routing first: the copy goes after the slices): the copy still says not ready while no controller
    runs. The next one adopts the host healthy from the slice; its Endpoints plan holds the copy's not
    ready until a probe of its own passes. That probe passes, but the check is healthy already: no
    transition. The copy must still follow within a few periods; before the fix it never did."""
    await install_crd(client)
    async with TCPBackend() as db:
        await client.request("POST", CLUSTERENDPOINTS.path("default"), body=cep("db", [
            {"name": "pg", "port": 5432, "targetPort": db.port, "hosts": ["127.0.0.1"], "tcpSocket": {},
             "periodSeconds": 1, "failureThreshold": 3}]))
        async with running_controller(api, client) as first:
            await eventually(lambda: endpoints_of(api, "db") == {("pg", "127.0.0.1"): True}
                             and v1_addresses(api, "db") == {("pg", "127.0.0.1"): True}, message="published ready")
            await first.writer.wait_idle(10)
        # while none runs: the copy as the killed process left it (the slice ready, the Endpoints behind)
        stale = dict(v1_endpoints(api, "db") or {})
        stale["subsets"] = [{"notReadyAddresses": s["addresses"], "ports": s["ports"]} for s in stale["subsets"]]
        await client.request("PUT", ENDPOINTS.path("default", "db"), body=stale)
        assert v1_addresses(api, "db") == {("pg", "127.0.0.1"): False}
        async with running_controller(api, client):
            await eventually(lambda: v1_addresses(api, "db") == {("pg", "127.0.0.1"): True}, timeout=10,
                             message="the copy follows the passing probes")
            assert endpoints_of(api, "db") == {("pg", "127.0.0.1"): True}


async def test_removed_targets_delete_their_endpoints_when_the_deletes_wait_behind_slices(
        api: KubeAPIServer, client: KubeClient) -> None:
    """Twelve mirrored Services stop asking to be mirrored at once, with one write slot pair: each
    deletes its slices, and its Endpoints delete waits for a slot behind the others' slices. Every
    epctl Endpoints object must be gone in the end; before the fix the waiting deletes were dropped."""
    await install_crd(client)
    count = 12
    await source_service(client, "origin", ("db", 5432, 5432), {"10.1.0.1": True})
    for i in range(count):
        await client.request("POST", SERVICES.path("default"), body={
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"m{i}", "annotations": {"epctl.io/mirror-from": "default/origin"}},
            "spec": {"ports": [{"name": "db", "port": 5432}]}})
    async with running_controller(api, client, write_concurrency=1, routing_first_bound=60.0) as controller:
        await eventually(lambda: all(v1_addresses(api, f"m{i}") == {("db", "10.1.0.1"): True} for i in range(count)),
                         timeout=30, message="every mirror's Endpoints written")
        await controller.writer.wait_idle(10)
        controller.writer.batch_delay = controller.writer.max_batch_delay = 30.0  # all due in one pass
        for i in range(count):
            await client.request("PATCH", SERVICES.path("default", f"m{i}"), content_type=MERGE_PATCH,
                                 body={"metadata": {"annotations": {"epctl.io/mirror-from": None}}})
        await eventually(lambda: all(controller.state.get(("default", f"m{i}")) is None for i in range(count)),
                         message="every target removed from the desired state")
        assert await controller.writer.flush(30)
        await eventually(lambda: not any(v1_endpoints(api, f"m{i}") for i in range(count)), timeout=20,
                         message="every removed target's Endpoints deleted")
        assert not any(endpoints_of(api, f"m{i}") for i in range(count))
