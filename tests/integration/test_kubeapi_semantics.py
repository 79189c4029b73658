"""kube-apiserver semantics of the test server, driven over HTTPS with epctl's own client."""

from __future__ import annotations

import asyncio
import json
import pathlib
from typing import Any

import pytest
import yaml

from epctl.kube.client import (
    APPLY_PATCH,
    CONFIGMAPS,
    ENDPOINTS,
    ENDPOINTSLICES,
    EVENTS,
    JSON_PATCH,
    LEASES,
    MERGE_PATCH,
    NAMESPACES,
    SERVICES,
    STRATEGIC_PATCH,
    ApiError,
    KubeClient,
    Resource,
)
from epctl.testing.kubeapi import FaultRule, KubeAPIServer

DATA = pathlib.Path(__file__).parent.parent / "data"
WIDGETS = Resource("example.io", "v1", "widgets", "Widget")
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False)


def cm(name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}}, "data": data}


async def create(client: KubeClient, resource: Resource, body: dict[str, Any], ns: str | None = "default") -> Any:
    return await client.request("POST", resource.path(ns), body=body)


async def install_widgets(client: KubeClient) -> None:
    crd = yaml.safe_load((DATA / "widget-crd.yaml").read_text())
    await client.request("POST", CRDS.path(), body=crd)


def slice_body(name: str, addresses: list[str], address_type: str = "IPv4") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "svc"}},
            "addressType": address_type, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]}


async def test_resource_versions_are_global_increasing_strings(client: KubeClient) -> None:
    a = await create(client, CONFIGMAPS, cm("a"))
    b = await create(client, SERVICES, {"metadata": {"name": "b"}, "spec": {"ports": [{"port": 80}]}})
    assert isinstance(a["metadata"]["resourceVersion"], str)
    assert int(b["metadata"]["resourceVersion"]) > int(a["metadata"]["resourceVersion"])
    listed = await client.request("GET", CONFIGMAPS.path("default"))
    assert int(listed["metadata"]["resourceVersion"]) >= int(b["metadata"]["resourceVersion"])
    assert a["metadata"]["uid"] and a["metadata"]["creationTimestamp"].endswith("Z")


async def test_update_with_stale_resource_version_is_409_and_noop_keeps_version(client: KubeClient) -> None:
    first = await create(client, CONFIGMAPS, cm("a", x="1"))
    changed = await client.request("PUT", CONFIGMAPS.path("default", "a"), body={**first, "data": {"x": "2"}})
    with pytest.raises(ApiError) as err:
        await client.request("PUT", CONFIGMAPS.path("default", "a"), body={**first, "data": {"x": "3"}})
    assert err.value.code == 409 and err.value.reason == "Conflict"
    same = await client.request("PUT", CONFIGMAPS.path("default", "a"), body=changed)
    assert same["metadata"]["resourceVersion"] == changed["metadata"]["resourceVersion"]


async def test_create_errors_already_exists_missing_namespace_bad_name(client: KubeClient) -> None:
    await create(client, CONFIGMAPS, cm("a"))
    with pytest.raises(ApiError) as err:
        await create(client, CONFIGMAPS, cm("a"))
    assert (err.value.code, err.value.reason) == (409, "AlreadyExists")
    with pytest.raises(ApiError) as err:
        await create(client, CONFIGMAPS, cm("a"), ns="nope")
    assert (err.value.code, err.value.reason) == (404, "NotFound")
    with pytest.raises(ApiError) as err:
        await create(client, CONFIGMAPS, cm("Not_Valid"))
    assert err.value.code == 422 and err.value.status["details"]["causes"][0]["field"] == "metadata.name"
    generated = await create(client, CONFIGMAPS, {"metadata": {"generateName": "gen-"}})
    assert generated["metadata"]["name"].startswith("gen-") and len(generated["metadata"]["name"]) == 9


async def test_list_label_and_field_selectors_and_pagination(client: KubeClient) -> None:
    for i in range(7):
        labels = {"tier": "db" if i % 2 else "web", **({"x": "1"} if i < 2 else {})}
        await create(client, CONFIGMAPS, cm(f"c{i}", labels))

    async def names(**query: Any) -> list[str]:
        result = await client.request("GET", CONFIGMAPS.path("default"), query=query)
        return [o["metadata"]["name"] for o in result["items"]]

    assert await names(labelSelector="tier=db") == ["c1", "c3", "c5"]
    assert await names(labelSelector="tier!=db,x") == ["c0"]
    assert await names(labelSelector="tier in (db,web),!x") == ["c2", "c3", "c4", "c5", "c6"]
    assert await names(labelSelector="tier notin (web)") == ["c1", "c3", "c5"]
    assert await names(fieldSelector="metadata.name=c4") == ["c4"]
    assert await names(fieldSelector="metadata.name!=c4", labelSelector="tier=web") == ["c0", "c2", "c6"]
    with pytest.raises(ApiError) as err:
        await names(fieldSelector="spec.bogus=1")
    assert err.value.code == 400
    seen, cont, pages = [], None, 0
    first_rv = None
    while True:
        page = await client.request("GET", CONFIGMAPS.path("default"), query={"limit": 3, "continue": cont})
        pages += 1
        first_rv = first_rv or page["metadata"]["resourceVersion"]
        assert page["metadata"]["resourceVersion"] == first_rv  # one consistent snapshot
        if pages == 1:
            await create(client, CONFIGMAPS, cm("zz-late"))  # not visible in this paginated list
        seen += [o["metadata"]["name"] for o in page["items"]]
        cont = page["metadata"].get("continue")
        if not cont:
            break
    assert pages == 3 and seen == [f"c{i}" for i in range(7)]


async def test_watch_from_version_replays_history_and_410_when_compacted(api: KubeAPIServer,
                                                                        client: KubeClient) -> None:
    a = await create(client, CONFIGMAPS, cm("a"))
    await create(client, CONFIGMAPS, cm("b"))
    await client.request("DELETE", CONFIGMAPS.path("default", "a"))
    events = []
    query = {"watch": "true", "resourceVersion": a["metadata"]["resourceVersion"], "timeoutSeconds": 1}
    async for event in client.stream(CONFIGMAPS.path("default"), query):
        events.append((event["type"], event["object"]["metadata"]["name"]))
    assert events == [("ADDED", "b"), ("DELETED", "a")]
    api.compact()
    errors = [e async for e in client.stream(CONFIGMAPS.path("default"), query)]
    assert errors[0]["type"] == "ERROR" and errors[0]["object"]["code"] == 410
    assert errors[0]["object"]["reason"] == "Expired"


async def test_watch_bookmarks_and_selector_transitions(client: KubeClient) -> None:
    start = await client.request("GET", CONFIGMAPS.path("default"))
    query = {"watch": "true", "resourceVersion": start["metadata"]["resourceVersion"], "labelSelector": "on=yes",
             "allowWatchBookmarks": "true", "timeoutSeconds": 3}
    seen: list[tuple[str, str]] = []

    async def consume() -> None:
        async for event in client.stream(CONFIGMAPS.path("default"), query):
            seen.append((event["type"], event["object"]["metadata"].get("name", "")))
            if event["type"] == "DELETED":
                return

    task = asyncio.create_task(consume())
    obj = await create(client, CONFIGMAPS, cm("a", {"on": "no"}))
    obj = await client.request("PATCH", CONFIGMAPS.path("default", "a"), body={"metadata": {"labels": {"on": "yes"}}},
                               content_type=MERGE_PATCH)
    await client.request("PATCH", CONFIGMAPS.path("default", "a"), body={"metadata": {"labels": {"on": "no"}}},
                         content_type=MERGE_PATCH)
    await asyncio.wait_for(task, 10)
    assert [s for s in seen if s[0] != "BOOKMARK"] == [("ADDED", "a"), ("DELETED", "a")]
    assert obj


async def test_bookmark_arrives_when_nothing_changes(client: KubeClient) -> None:
    query = {"watch": "true", "resourceVersion": "1", "allowWatchBookmarks": "true", "timeoutSeconds": 5}
    async for event in client.stream(LEASES.path("default"), query):
        assert event["type"] == "BOOKMARK"
        assert int(event["object"]["metadata"]["resourceVersion"]) >= 1
        break


async def test_status_subresource_and_generation(client: KubeClient) -> None:
    await install_widgets(client)
    w = await client.request("POST", WIDGETS.path("default"), body={
        "apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 2},
        "status": {"phase": "ignored-on-create"}})
    assert "status" not in w and w["metadata"]["generation"] == 1
    w = await client.request("PUT", WIDGETS.path("default", "w", "status"), body={**w, "status": {"phase": "Ok"},
                                                                                   "spec": {"size": 9}})
    assert w["status"] == {"phase": "Ok"} and w["spec"]["size"] == 2 and w["metadata"]["generation"] == 1
    w = await client.request("PATCH", WIDGETS.path("default", "w"),
                             body={"spec": {"size": 3}, "status": {"phase": "x"}}, content_type=MERGE_PATCH)
    assert w["spec"]["size"] == 3 and w["status"] == {"phase": "Ok"} and w["metadata"]["generation"] == 2
    w = await client.request("PATCH", WIDGETS.path("default", "w"), body={"metadata": {"labels": {"a": "b"}}},
                             content_type=MERGE_PATCH)
    assert w["metadata"]["generation"] == 2  # metadata-only change
    with pytest.raises(ApiError) as err:
        await client.request("PATCH", WIDGETS.path("default", "w"), body={"spec": {"size": 1}},
                             content_type=STRATEGIC_PATCH)
    assert err.value.code == 415  # strategic merge is for built-in types only


async def test_patch_flavours_on_builtin_types(client: KubeClient) -> None:
    await create(client, SERVICES, {"metadata": {"name": "s"}, "spec": {"ports": [
        {"name": "a", "port": 80}, {"name": "b", "port": 81}]}})
    svc = await client.request("PATCH", SERVICES.path("default", "s"), content_type=STRATEGIC_PATCH,
                               body={"spec": {"ports": [{"port": 81, "targetPort": 8081}, {"name": "c", "port": 82}]}})
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        ("a", 80, 80), ("b", 81, 8081), ("c", 82, 82)]
    svc = await client.request("PATCH", SERVICES.path("default", "s"), content_type=STRATEGIC_PATCH,
                               body={"spec": {"ports": [{"port": 80, "$patch": "delete"}]}})
    assert [p["port"] for p in svc["spec"]["ports"]] == [81, 82]
    svc = await client.request("PATCH", SERVICES.path("default", "s"), content_type=JSON_PATCH,
                               body=[{"op": "test", "path": "/spec/ports/0/port", "value": 81},
                                     {"op": "replace", "path": "/spec/ports/0/name", "value": "bb"}])
    assert svc["spec"]["ports"][0]["name"] == "bb"
    with pytest.raises(ApiError) as err:
        await client.request("PATCH", SERVICES.path("default", "s"), content_type=JSON_PATCH,
                             body=[{"op": "replace", "path": "/spec/clusterIP", "value": "10.0.0.1"}])
    assert err.value.code == 422 and "may not change once set" in err.value.message
    applied = await client.request("PATCH", CONFIGMAPS.path("default", "ssa"), content_type=APPLY_PATCH,
                                   query={"fieldManager": "me"},
                                   body={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"},
                                         "data": {"k": "v"}})
    assert applied["data"] == {"k": "v"} and applied["metadata"]["managedFields"][0]["manager"] == "me"


async def test_endpointslice_validation(api: KubeAPIServer, client: KubeClient) -> None:
    created = await create(client, ENDPOINTSLICES, slice_body("s1", ["10.0.0.1", "127.0.0.1"]))
    assert created["endpoints"][1]["addresses"] == ["127.0.0.1"]  # allow_loopback=True in tests
    api.store.allow_loopback = False
    with pytest.raises(ApiError) as err:
        await create(client, ENDPOINTSLICES, slice_body("s2", ["127.0.0.1", "169.254.1.1", "10.0.0.300"]))
    fields = [c["field"] for c in err.value.status["details"]["causes"]]
    assert fields == ["endpoints[0].addresses[0]", "endpoints[1].addresses[0]", "endpoints[2].addresses[0]"]
    assert "loopback" in err.value.message and "link-local" in err.value.message
    with pytest.raises(ApiError) as err:  # judged as the IPv4 address it maps, as Go's net.IP does
        await create(client, ENDPOINTSLICES, slice_body("s4", ["::ffff:127.0.0.1", "ff02::1"], "IPv6"))
    assert [c["field"] for c in err.value.status["details"]["causes"]] == [
        "endpoints[0].addresses[0]", "endpoints[1].addresses[0]"]
    await create(client, ENDPOINTSLICES, slice_body("s5", ["239.1.1.1"]))  # only link-local multicast is refused
    with pytest.raises(ApiError) as err:
        await client.request("PUT", ENDPOINTSLICES.path("default", "s1"),
                             body={**created, "addressType": "IPv6", "endpoints": []})
    assert "addressType: Invalid value" in err.value.message and "immutable" in err.value.message
    too_many = slice_body("s3", [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(1001)])
    with pytest.raises(ApiError) as err:
        await create(client, ENDPOINTSLICES, too_many)
    assert "must have at most 1000 items" in err.value.message


async def test_endpoints_validation_as_kube_apiserver(client: KubeClient) -> None:
    """ValidateEndpoints: a subset needs addresses or notReadyAddresses; ports need names when there are
    several, numbers in 1-65535 and a known protocol (defaulted to TCP); addresses valid IPs with label
    hostnames and subdomain nodeNames."""
    def body(name: str, subsets: list[dict[str, Any]]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name}, "subsets": subsets}

    created = await create(client, ENDPOINTS, body("ok", [{"notReadyAddresses": [{"ip": "10.0.0.1"}],
                                                            "ports": [{"port": 80}]}]))
    assert created["subsets"][0]["ports"][0]["protocol"] == "TCP"
    with pytest.raises(ApiError) as err:
        await create(client, ENDPOINTS, body("empty", [{"ports": [{"port": 80}]}]))
    assert err.value.code == 422 and err.value.status["details"]["causes"][0]["field"] == "subsets[0]"
    assert "must specify `addresses` or `notReadyAddresses`" in err.value.message
    with pytest.raises(ApiError) as err:
        await create(client, ENDPOINTS, body("bad", [{
            "addresses": [{"ip": "10.0.0.1", "hostname": "Not_A_Label", "nodeName": "node_1"}, {"ip": "10.0.0.300"}],
            "ports": [{"port": 80}, {"name": "b", "port": 0, "protocol": "HTTP"}]}]))
    fields = {c["field"] for c in err.value.status["details"]["causes"]}
    assert fields == {"subsets[0].addresses[0].hostname", "subsets[0].addresses[0].nodeName",
                      "subsets[0].addresses[1].ip", "subsets[0].ports[0].name", "subsets[0].ports[1].port",
                      "subsets[0].ports[1].protocol"}
    with pytest.raises(ApiError) as err:  # an update is validated the same way
        await client.request("PUT", ENDPOINTS.path("default", "ok"), body={**created, "subsets": [{"ports": [
            {"port": 80}]}]})
    assert err.value.code == 422


async def test_lease_event_and_endpointslice_rules_as_kube_apiserver(client: KubeClient) -> None:
    """ValidateLeaseSpec, legacyValidateEvent (core/v1) and the discovery rules epctl's writes meet."""
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
             "spec": {"holderIdentity": "a", "leaseDurationSeconds": 0, "leaseTransitions": -1,
                      "preferredHolder": "b"}}
    with pytest.raises(ApiError) as err:
        await create(client, LEASES, lease)
    assert {c["field"] for c in err.value.status["details"]["causes"]} == {
        "spec.leaseDurationSeconds", "spec.leaseTransitions", "spec.preferredHolder"}
    await create(client, LEASES, {**lease, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 1}})

    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1"}, "reason": "R", "message": "m",
             "involvedObject": {"kind": "Service", "name": "s", "namespace": "other"}}
    with pytest.raises(ApiError) as err:
        await create(client, EVENTS, event)
    assert "involvedObject.namespace" in err.value.message and "does not match event.namespace" in err.value.message
    await create(client, EVENTS, {**event, "involvedObject": {"kind": "Node", "name": "n"}})  # cluster-scoped
    with pytest.raises(ApiError) as err:  # a "new" Event (eventTime set) needs the reporting fields
        await create(client, EVENTS, {**event, "metadata": {"name": "e2"}, "eventTime": "2026-01-01T00:00:00.000000Z",
                                      "involvedObject": {"kind": "Service", "name": "s", "namespace": "default"}})
    assert {c["field"] for c in err.value.status["details"]["causes"]} == {
        "reportingComponent", "reportingInstance", "action"}

    fqdn = slice_body("f", ["db"], address_type="FQDN")
    with pytest.raises(ApiError) as err:
        await create(client, ENDPOINTSLICES, fqdn)
    assert "at least two segments" in err.value.message
    await create(client, ENDPOINTSLICES, slice_body("f", ["db.example.com"], address_type="FQDN"))
    bad_node = slice_body("n", ["10.0.0.1"])
    bad_node["endpoints"][0].update(nodeName="Node_1", hints={"forZones": [{"name": "a"}, {"name": "a"}]})
    bad_node["ports"][0]["appProtocol"] = "not a name"
    with pytest.raises(ApiError) as err:
        await create(client, ENDPOINTSLICES, bad_node)
    assert {c["field"] for c in err.value.status["details"]["causes"]} == {
        "endpoints[0].nodeName", "endpoints[0].hints.forZones[1].name", "ports[0].appProtocol"}


async def test_gc_background_foreground_orphan(api: KubeAPIServer, client: KubeClient) -> None:
    from epctl.testing.waiting import eventually

    async def family(name: str) -> dict[str, Any]:
        owner = await create(client, CONFIGMAPS, cm(name))
        ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": owner["metadata"]["uid"]}
        for i in range(2):
            body = cm(f"{name}-child{i}")
            body["metadata"]["ownerReferences"] = [ref]
            await create(client, CONFIGMAPS, body)
        return owner

    def names() -> set[str]:
        return {k[1] for k in api.store.objects[("", "configmaps")]}

    await family("bg")
    await client.request("DELETE", CONFIGMAPS.path("default", "bg"))
    await eventually(lambda: not {"bg", "bg-child0", "bg-child1"} & names(), message="background GC")
    await family("fg")
    await client.request("DELETE", CONFIGMAPS.path("default", "fg"), body={"propagationPolicy": "Foreground"})
    await eventually(lambda: not {"fg", "fg-child0", "fg-child1"} & names(), message="foreground GC")
    await family("or")
    await client.request("DELETE", CONFIGMAPS.path("default", "or"), body={"propagationPolicy": "Orphan"})
    await eventually(lambda: "or" not in names(), message="orphaning owner deleted")
    child = await client.request("GET", CONFIGMAPS.path("default", "or-child0"))
    assert "ownerReferences" not in child["metadata"]


async def test_gc_multiple_owners_dangling_and_foreign_owners_namespaces_and_a_paused_collector(
        api: KubeAPIServer, client: KubeClient) -> None:
    """The collector's other rules, each of which only a change elsewhere sets off: a dependent of two
    owners loses one reference and stays; a dependent naming an owner that never existed, or one in
    another namespace, is deleted; a foreground deletion waits for grandchildren; a deleted namespace
    takes everything in it; and what happens while the collector is paused is done when it is back."""
    from epctl.testing.waiting import eventually

    def names(namespace: str = "default") -> set[str]:
        return {k[1] for k in api.store.objects[("", "configmaps")] if k[0] == namespace}

    def ref(owner: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ConfigMap", "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"]}

    async def child(name: str, *owners: dict[str, Any], ns: str = "default") -> dict[str, Any]:
        body = cm(name)
        body["metadata"]["ownerReferences"] = [ref(o) for o in owners]
        return await create(client, CONFIGMAPS, body, ns=ns)

    one, two = await create(client, CONFIGMAPS, cm("one")), await create(client, CONFIGMAPS, cm("two"))
    await child("shared", one, two)
    await client.request("DELETE", CONFIGMAPS.path("default", "one"))
    await eventually(lambda: "one" not in names(), message="owner one deleted")
    shared = await eventually(lambda: [o for k, o in api.store.objects[("", "configmaps")].items()
                                       if k == ("default", "shared") and len(o["metadata"]["ownerReferences"]) == 1],
                              message="one reference stripped")
    assert shared[0]["metadata"]["ownerReferences"][0]["uid"] == two["metadata"]["uid"]
    ghost = {"metadata": {"name": "ghost", "uid": "00000000-0000-0000-0000-000000000000"}}
    await child("dangling", ghost)
    await create(client, NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}, ns=None)
    await child("foreign", two, ns="other")  # an owner in another namespace does not count
    await eventually(lambda: "dangling" not in names() and "foreign" not in names("other"),
                     message="dependents of absent owners deleted")
    top = await create(client, CONFIGMAPS, cm("top"))
    middle = await child("middle", top)
    await child("bottom", middle)
    await client.request("DELETE", CONFIGMAPS.path("default", "top"), body={"propagationPolicy": "Foreground"})
    await eventually(lambda: not {"top", "middle", "bottom"} & names(), message="foreground through two levels")
    held = cm("in-other")
    held["metadata"]["finalizers"] = ["example.com/hold"]
    await create(client, CONFIGMAPS, held, ns="other")
    await create(client, CONFIGMAPS, cm("plain"), ns="other")
    await client.request("DELETE", NAMESPACES.path(None, "other"))
    await eventually(lambda: names("other") == {"in-other"}, message="the namespace's objects deleted")
    terminating = await client.request("GET", NAMESPACES.path(None, "other"))
    assert terminating["status"]["phase"] == "Terminating"  # held by the finalizer of what is left
    await client.request("PATCH", CONFIGMAPS.path("other", "in-other"), body={"metadata": {"finalizers": None}},
                         content_type=MERGE_PATCH)
    await eventually(lambda: not names("other") and ("", "other") not in api.store.objects[("", "namespaces")],
                     message="the namespace goes once its last object does")
    api.store.gc_paused = True
    await child("orphan-to-be", two)
    await client.request("DELETE", CONFIGMAPS.path("default", "two"))
    assert "orphan-to-be" in names() and "shared" in names()  # nothing collected while paused
    api.store.resume_gc()
    await eventually(lambda: not {"orphan-to-be", "shared"} & names(), message="collected once resumed")


async def test_fault_injection_request_log_and_restart(api: KubeAPIServer, client: KubeClient) -> None:
    api.inject_fault(FaultRule(verb="create", resource="configmaps", code=500, count=2))
    for _ in range(2):
        with pytest.raises(ApiError) as err:
            await create(client, CONFIGMAPS, cm("a"))
        assert err.value.code == 500 and err.value.retryable
    await create(client, CONFIGMAPS, cm("a"))
    api.inject_fault(FaultRule(verb="get", code=429, retry_after=2))
    with pytest.raises(ApiError) as err:
        await client.request("GET", CONFIGMAPS.path("default", "a"))
    assert err.value.code == 429 and err.value.retry_after == 2
    creates = [(r.verb, r.resource, r.name, r.code) for r in api.request_log if r.verb == "create"]
    assert creates[-3:] == [("create", "configmaps", "", 500)] * 2 + [("create", "configmaps", "", 201)]
    assert len(api.writes("configmaps")) == 1
    port = api.port
    await api.restart()
    assert api.port == port
    again = await client.request("GET", CONFIGMAPS.path("default", "a"))
    assert again["metadata"]["name"] == "a"


async def test_unauthenticated_requests_are_401(api: KubeAPIServer) -> None:
    import ssl

    import aiohttp

    context = ssl.create_default_context(cadata=api.certs.ca_pem.decode())
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{api.url}/api/v1/namespaces", ssl=context) as response:
            assert response.status == 401
            assert json.loads(await response.text())["reason"] == "Unauthorized"
        async with session.get(f"{api.url}/version", ssl=context) as response:
            assert response.status == 200


async def test_client_refuses_kubeconfig_that_skips_tls_verification(api: KubeAPIServer, tmp_path: Any) -> None:
    from epctl.kube.client import TLSVerificationRequired

    config = api.kubeconfig()
    cluster = config["clusters"][0]["cluster"]
    del cluster["certificate-authority-data"]
    cluster["insecure-skip-tls-verify"] = True
    path = tmp_path / "insecure"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(TLSVerificationRequired):
        await KubeClient.connect(str(path))


async def test_a_managed_fields_entry_keeps_its_time_while_others_write(client: KubeClient) -> None:
    """Who set a field, and when, survives other managers' writes (epctl's drain Event and status read it)."""
    from epctl.kube.status import now_rfc3339
    from epctl.testing.waiting import eventually

    await client.request("POST", CONFIGMAPS.path("default"), body={"metadata": {"name": "cm"}, "data": {"a": "1"}},
                         query={"fieldManager": "creator"})
    await client.request("PATCH", CONFIGMAPS.path("default", "cm"), content_type=MERGE_PATCH,
                         body={"metadata": {"annotations": {"x": "1"}}}, query={"fieldManager": "annotator"})

    def times(obj: dict[str, Any]) -> dict[str, str]:
        return {m["manager"]: m["time"] for m in obj["metadata"]["managedFields"]}

    first = times(await client.request("GET", CONFIGMAPS.path("default", "cm")))
    await eventually(lambda: now_rfc3339() > max(first.values()), message="the clock moves on")
    await client.request("PATCH", CONFIGMAPS.path("default", "cm"), content_type=MERGE_PATCH,
                         body={"data": {"a": "2"}}, query={"fieldManager": "editor"})
    later = times(await client.request("GET", CONFIGMAPS.path("default", "cm")))
    assert later["annotator"] == first["annotator"] and later["editor"] > first["annotator"]
    assert "creator" not in later or later["creator"] == first["creator"]


def _blocking_ref(owner: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "blockOwnerDeletion": True}


async def test_gc_foreground_owner_goes_when_its_last_blocking_dependent_drops_the_reference(
        api: KubeAPIServer, client: KubeClient) -> None:
    """kube-controller-manager's GraphBuilder re-examines an owner waiting in foreground deletion when a
    dependent *removes* its blocking ownerReference (addUnblockedOwnersToDeleteQueue), not only when the
    dependent is deleted: the owner then has nothing left to wait for and goes."""
    from epctl.testing.waiting import eventually

    top = await create(client, CONFIGMAPS, cm("fg-top"))
    held = cm("fg-held")
    held["metadata"]["finalizers"] = ["example.com/hold"]  # its deletion waits: the owner waits for it
    held["metadata"]["ownerReferences"] = [_blocking_ref(top)]
    await create(client, CONFIGMAPS, held)
    await client.request("DELETE", CONFIGMAPS.path("default", "fg-top"), body={"propagationPolicy": "Foreground"})
    await eventually(lambda: (api.store.objects[("", "configmaps")].get(("default", "fg-held")) or {})
                     .get("metadata", {}).get("deletionTimestamp"), message="the dependent is being deleted")
    assert ("default", "fg-top") in api.store.objects[("", "configmaps")]  # waits for it
    await client.request("PATCH", CONFIGMAPS.path("default", "fg-held"),
                         body={"metadata": {"ownerReferences": None}}, content_type=MERGE_PATCH)
    await eventually(lambda: ("default", "fg-top") not in api.store.objects[("", "configmaps")],
                     timeout=5.0, message="the owner goes once no dependent blocks it")


async def test_gc_foreground_deletion_keeps_a_dependent_that_has_another_live_owner(
        api: KubeAPIServer, client: KubeClient) -> None:
    """attemptToDeleteItem: a dependent with a solid (live, not being deleted) owner is never collected;
    the reference to an owner waiting in foreground deletion is removed from it instead, and that owner
    then goes."""
    from epctl.testing.waiting import eventually

    doomed = await create(client, CONFIGMAPS, cm("fg-doomed"))
    keeper = await create(client, CONFIGMAPS, cm("fg-keeper"))
    shared = cm("fg-shared")
    shared["metadata"]["ownerReferences"] = [_blocking_ref(doomed), _blocking_ref(keeper)]
    await create(client, CONFIGMAPS, shared)
    await client.request("DELETE", CONFIGMAPS.path("default", "fg-doomed"), body={"propagationPolicy": "Foreground"})
    await eventually(lambda: ("default", "fg-doomed") not in api.store.objects[("", "configmaps")],
                     timeout=5.0, message="the foreground-deleted owner goes")
    kept = await client.request("GET", CONFIGMAPS.path("default", "fg-shared"))  # 404 if it was collected
    assert not kept["metadata"].get("deletionTimestamp")
    assert [r["uid"] for r in kept["metadata"]["ownerReferences"]] == [keeper["metadata"]["uid"]]


async def test_gc_never_collects_a_cluster_scoped_dependent_of_a_namespaced_owner(
        api: KubeAPIServer, client: KubeClient) -> None:
    """attemptToDeleteItem: a cluster-scoped dependent naming a namespaced owner has an unresolvable
    reference (an OwnerRefInvalidNamespace Event), and is *not* garbage collected, whether or not the
    owner still exists (a namespaced dependent of an owner in another namespace is, the other rule)."""
    from epctl.testing.waiting import eventually

    owner = await create(client, CONFIGMAPS, cm("ns-owner"))
    await create(client, NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "owned-ns", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "ns-owner",
                                                  "uid": owner["metadata"]["uid"]}]}}, ns=None)
    # a marker the collector handles after the namespace (one queue): once it is gone, the namespace was seen
    marker = cm("gc-marker")
    marker["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost",
                                              "uid": "00000000-0000-0000-0000-00000000beef"}]
    await create(client, CONFIGMAPS, marker)
    await eventually(lambda: ("default", "gc-marker") not in api.store.objects[("", "configmaps")],
                     message="the collector ran")
    namespace = await client.request("GET", NAMESPACES.path(None, "owned-ns"))  # 404 if collected
    assert not namespace["metadata"].get("deletionTimestamp")
