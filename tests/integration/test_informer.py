"""The informer against the test API server under every fault it must survive.

The invariant checked everywhere: the cache converges to the server's truth, and subscribers see
a sequence of events that, replayed, yields that same truth (no lost deletes).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from epctl.kube.backoff import Backoff
from epctl.kube.client import CONFIGMAPS, KubeClient
from epctl.kube.informer import Informer, InformerEvent
from epctl.testing.kubeapi import FaultRule, KubeAPIServer
from epctl.testing.waiting import eventually


class Recorder:
    """Metrics hooks plus a replica rebuilt only from delivered events."""

    def __init__(self) -> None:
        self.restarts: Counter[str] = Counter()
        self.relists = 0
        self.events: list[InformerEvent] = []
        self.replica: dict[str, str] = {}

    def known(self, resource: str) -> None:
        pass

    def event(self, resource: str, type_: str) -> None:
        pass

    def restart(self, resource: str, reason: str) -> None:
        self.restarts[reason] += 1

    def relist(self, resource: str) -> None:
        self.relists += 1

    def on_event(self, event: InformerEvent) -> None:
        self.events.append(event)
        if event.type == "DELETED":
            self.replica.pop(event.key, None)
        else:
            self.replica[event.key] = event.obj["metadata"]["resourceVersion"]


def truth(api: KubeAPIServer, namespace: str = "default") -> dict[str, str]:
    return {f"{ns}/{name}": o["metadata"]["resourceVersion"]
            for (ns, name), o in api.store.objects[("", "configmaps")].items() if ns == namespace}


def converged(api: KubeAPIServer, informer: Informer, rec: Recorder) -> bool:
    want = truth(api)
    have = {k: o["metadata"]["resourceVersion"] for k, o in informer.cache.items()}
    return have == want and rec.replica == want


def cm(name: str, value: str = "1") -> dict[str, Any]:
    return {"metadata": {"name": name}, "data": {"v": value}}


@pytest.fixture(params=[False, True], ids=["dicts", "frozen"])
async def informer(client: KubeClient, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Informer, Recorder]]:
    """Every informer test runs on both cache forms: plain dicts and deflated JSON (epctl.kube.frozen)."""
    rec = Recorder()
    inf = Informer(client, CONFIGMAPS, "default", page_size=2, inactivity_timeout=1.5,
                   backoff=Backoff(0.02, 0.2), metrics=rec, frozen=request.param)
    inf.subscribe(rec.on_event)
    yield inf, rec
    await inf.stop()


async def put(client: KubeClient, name: str, value: str = "1") -> None:
    await client.request("POST", CONFIGMAPS.path("default"), body=cm(name, value))


async def test_initial_list_is_paginated_then_events_flow(api: KubeAPIServer, client: KubeClient,
                                                          informer: tuple[Informer, Recorder]) -> None:
    inf, rec = informer
    for i in range(5):
        await put(client, f"c{i}")
    inf.start()
    await inf.wait_synced(10)
    assert sorted(inf.cache) == [f"default/c{i}" for i in range(5)]
    lists = [r for r in api.request_log if r.verb == "list" and r.resource == "configmaps"]
    assert len(lists) == 3  # page_size=2
    await put(client, "c5")
    await client.request("PATCH", CONFIGMAPS.path("default", "c0"), body={"data": {"v": "2"}},
                         content_type="application/merge-patch+json")
    await client.request("DELETE", CONFIGMAPS.path("default", "c1"))
    await eventually(lambda: converged(api, inf, rec), message="cache follows changes")
    kinds = [(e.type, e.obj["metadata"]["name"]) for e in rec.events[5:]]
    assert kinds == [("ADDED", "c5"), ("MODIFIED", "c0"), ("DELETED", "c1")]
    assert rec.events[6].old is not None and rec.events[6].old["data"] == {"v": "1"}


async def test_async_iterator_replays_cache_then_follows(api: KubeAPIServer, client: KubeClient,
                                                         informer: tuple[Informer, Recorder]) -> None:
    inf, _ = informer
    await put(client, "a")
    inf.start()
    await inf.wait_synced(10)
    stream = inf.events(replay=True)
    first = await asyncio.wait_for(stream.__anext__(), 5)
    assert (first.type, first.key) == ("ADDED", "default/a")
    await put(client, "b")
    second = await asyncio.wait_for(stream.__anext__(), 5)
    assert (second.type, second.key) == ("ADDED", "default/b")
    await stream.aclose()


async def test_410_while_disconnected_relists_and_delivers_missed_deletions(
        api: KubeAPIServer, client: KubeClient, informer: tuple[Informer, Recorder]) -> None:
    inf, rec = informer
    for name in ("keep", "gone1", "gone2"):
        await put(client, name)
    inf.start()
    await inf.wait_synced(10)
    await eventually(lambda: inf.watching, message="watch established")
    block = api.inject_fault(FaultRule(verb="watch", resource="configmaps", code=503, count=10**6))
    api.drop_watches()
    await eventually(lambda: rec.restarts["http_503"] >= 1, message="reconnect attempts fail")
    await client.request("DELETE", CONFIGMAPS.path("default", "gone1"))
    await client.request("DELETE", CONFIGMAPS.path("default", "gone2"))
    await put(client, "new")
    api.compact()  # the informer's resourceVersion is now too old
    api.faults.remove(block)
    await eventually(lambda: converged(api, inf, rec), message="relist converges")
    assert rec.relists >= 1 and rec.restarts["expired"] >= 1
    deleted = sorted(e.key for e in rec.events if e.type == "DELETED")
    assert deleted == ["default/gone1", "default/gone2"]


async def test_dropped_watch_resumes_from_last_version_without_relist(
        api: KubeAPIServer, client: KubeClient, informer: tuple[Informer, Recorder]) -> None:
    inf, rec = informer
    inf.start()
    await inf.wait_synced(10)
    await eventually(lambda: inf.watching, message="watch established")
    lists_before = sum(1 for r in api.request_log if r.verb == "list")
    api.drop_watches()
    await put(client, "after-drop")
    await eventually(lambda: converged(api, inf, rec) and "default/after-drop" in inf.cache,
                     message="resumed watch delivers the change")
    assert rec.restarts["closed"] >= 1 and rec.relists == 0
    assert sum(1 for r in api.request_log if r.verb == "list") == lists_before


async def test_silent_stall_trips_the_inactivity_deadline(api: KubeAPIServer, client: KubeClient,
                                                          informer: tuple[Informer, Recorder]) -> None:
    inf, rec = informer
    inf.start()
    await inf.wait_synced(10)
    await eventually(lambda: inf.watching, message="watch established")
    api.stall_watches()  # connection stays open, nothing arrives: not even bookmarks
    await put(client, "during-stall")
    await eventually(lambda: "default/during-stall" in inf.cache, timeout=15,
                     message="reconnected after the inactivity deadline")
    assert rec.restarts["inactivity"] >= 1


async def test_healthy_idle_watch_is_kept_alive_by_bookmarks(api: KubeAPIServer, client: KubeClient,
                                                             informer: tuple[Informer, Recorder]) -> None:
    inf, rec = informer
    inf.start()
    await inf.wait_synced(10)
    await eventually(lambda: inf.watching, message="watch established")
    watches_before = sum(1 for r in api.request_log if r.verb == "watch")
    # Advance the clock elsewhere (another namespace) so bookmarks carry a newer resourceVersion.
    await client.request("POST", CONFIGMAPS.path("kube-system"), body=cm("elsewhere"))
    target = api.store.rv
    await eventually(lambda: int(inf.resource_version or 0) >= target, timeout=5,
                     message="a bookmark advanced the informer's resourceVersion")
    # Idle for twice the inactivity deadline: bookmarks (every 0.5 s) must keep the watch alive.
    deadline = asyncio.get_running_loop().time() + 2 * inf.inactivity_timeout
    await eventually(lambda: asyncio.get_running_loop().time() >= deadline, timeout=10, message="idle period")
    assert rec.restarts["inactivity"] == 0
    assert sum(1 for r in api.request_log if r.verb == "watch") == watches_before


async def test_error_bursts_back_off_and_recover(api: KubeAPIServer, client: KubeClient,
                                                 informer: tuple[Informer, Recorder]) -> None:
    inf, rec = informer
    await put(client, "a")
    api.inject_fault(FaultRule(verb="list", resource="configmaps", code=500, count=3))
    api.inject_fault(FaultRule(verb="list", resource="configmaps", code=429, count=2, retry_after=0))
    inf.start()
    await inf.wait_synced(10)
    assert rec.restarts["http_500"] == 3 and rec.restarts["http_429"] == 2
    api.inject_fault(FaultRule(verb="watch", resource="configmaps", code=500, count=4))
    api.drop_watches()
    await put(client, "b")
    await eventually(lambda: converged(api, inf, rec) and "default/b" in inf.cache, message="recovered")
    assert rec.restarts["http_500"] == 7


async def test_server_restart_is_survived(api: KubeAPIServer, client: KubeClient,
                                          informer: tuple[Informer, Recorder]) -> None:
    inf, rec = informer
    await put(client, "a")
    inf.start()
    await inf.wait_synced(10)
    await eventually(lambda: inf.watching, message="watch established")
    await api.stop()
    api.store.create(api.store.type_for("", "v1", "configmaps"), "default", cm("while-down"))
    await eventually(lambda: rec.restarts["connection"] >= 1, message="informer notices the outage")
    await api.start()
    await eventually(lambda: converged(api, inf, rec) and "default/while-down" in inf.cache, timeout=15,
                     message="converged after restart")


async def test_random_changes_and_faults_always_converge(api: KubeAPIServer, client: KubeClient,
                                                         informer: tuple[Informer, Recorder]) -> None:
    inf, rec = informer
    rng = random.Random(7)
    inf.start()
    await inf.wait_synced(10)
    rt = api.store.type_for("", "v1", "configmaps")
    for step in range(150):
        name = f"c{rng.randrange(12)}"
        exists = ("default", name) in api.store.objects[("", "configmaps")]
        roll = rng.random()
        if not exists:
            api.store.create(rt, "default", cm(name, str(step)))
        elif roll < 0.4:
            api.store.patch(rt, "default", name, "merge", {"data": {"v": str(step)}})
        else:
            api.store.delete(rt, "default", name)
        fault = rng.random()
        if fault < 0.05:
            api.drop_watches()
        elif fault < 0.08:
            api.compact()
            api.drop_watches()
        elif fault < 0.10:
            api.inject_fault(FaultRule(verb=rng.choice(["list", "watch"]), code=rng.choice([500, 429, 503])))
        if step % 10 == 0:
            await asyncio.sleep(0)  # let the informer interleave with the writers
    await eventually(lambda: converged(api, inf, rec), timeout=20, message="converged after chaos")


async def test_cached_objects_drop_what_nobody_reads(api: KubeAPIServer, client: KubeClient) -> None:
    """managedFields always; kubectl's last-applied copy only where asked (objects never written back)."""
    from epctl.kube.client import SERVICES
    from epctl.kube.informer import LAST_APPLIED

    await client.request("POST", SERVICES.path("default"), body={
        "metadata": {"name": "s", "annotations": {LAST_APPLIED: "{...}", "keep": "me"}},
        "spec": {"ports": [{"port": 80}]}})
    plain = Informer(client, SERVICES, "default")
    slimmed = Informer(client, SERVICES, "default", drop_last_applied=True)
    plain.start()
    slimmed.start()
    try:
        await asyncio.wait_for(asyncio.gather(plain.synced.wait(), slimmed.synced.wait()), 10)
        assert "managedFields" not in plain.cache["default/s"]["metadata"]
        assert plain.cache["default/s"]["metadata"]["annotations"] == {LAST_APPLIED: "{...}", "keep": "me"}
        assert slimmed.cache["default/s"]["metadata"]["annotations"] == {"keep": "me"}
    finally:
        await plain.stop()
        await slimmed.stop()


async def test_a_frozen_cache_returns_what_the_server_sent_and_keeps_its_index(
        api: KubeAPIServer, client: KubeClient) -> None:
    """The frozen form loses nothing (a read-modify-write from it sends back every field others set),
    a reader's change to what it read never reaches the cache, and the index follows every change."""
    inf = Informer(client, CONFIGMAPS, "default", frozen=True)
    inf.index_by(lambda o: (o.get("data") or {}).get("group"))
    inf.start()
    try:
        await inf.wait_synced(10)
        body = {"metadata": {"name": "a", "labels": {"x": "1"}, "annotations": {"note": "ü" * 300}},
                "data": {"group": "g1", "big": "y" * 5000}}
        created = await client.request("POST", CONFIGMAPS.path("default"), body=body)
        await eventually(lambda: inf.get("default", "a") is not None, timeout=10, message="cached")
        read = inf.get("default", "a")
        assert read is not None
        created["metadata"].pop("managedFields", None)  # the one thing every cache drops (slim)
        assert {k: read[k] for k in created} == created  # everything else the server sent, unicode and all
        read["data"]["group"] = "changed by a reader"
        assert inf.get("default", "a")["data"]["group"] == "g1"  # type: ignore[index]
        assert [o["metadata"]["name"] for o in inf.indexed("g1")] == ["a"]
        await client.request("PATCH", CONFIGMAPS.path("default", "a"), body={"data": {"group": "g2"}},
                             content_type="application/merge-patch+json")
        await eventually(lambda: [o["metadata"]["name"] for o in inf.indexed("g2")] == ["a"], timeout=10,
                         message="re-indexed")
        assert inf.indexed("g1") == []
        await client.request("DELETE", CONFIGMAPS.path("default", "a"))
        await eventually(lambda: inf.get("default", "a") is None, timeout=10, message="deleted")
        assert inf.indexed("g2") == [] and len(inf.cache) == 0
    finally:
        await inf.stop()
