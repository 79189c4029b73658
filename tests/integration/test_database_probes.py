"""Database role probes against the real servers (Debian's postgresql, redis-server and mariadb-server packages),
a primary and a replica each (MariaDB for the mysql probe), started once per module (epctl/testing/databases.py).

The scenario that matters: the replica is promoted while the old primary still runs (both claim
primary), then the old primary stops. The ``primary`` Service must never list two ready primaries
that disagree, and must follow within failureThreshold x period; the ``replica`` Service follows
too. Every slice the API server holds is watched, so a single bad write would be seen.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Iterator
from typing import Any

import pytest

from epctl.api.spec import DatabaseProbe, Expect, ProbeKind
from epctl.kube.client import ENDPOINTSLICES, EVENTS, SECRETS, KubeClient
from epctl.probe.credentials import Credentials
from epctl.probe.database import DatabaseProber
from epctl.probe.result import ProbeResult
from epctl.testing.databases import (
    PASSWORD,
    PRIMARY_ADDRESS,
    REPLICA_ADDRESS,
    MariaDBPair,
    PostgresPair,
    RedisPair,
    RedisTLS,
)
from epctl.testing.kubeapi import KubeAPIServer
from epctl.testing.tls import serving_certs
from epctl.testing.waiting import eventually
from tests.integration.controller_helpers import cep, cep_of, endpoints_of, install_crd, running_controller

ENGINES = {"postgres": PostgresPair, "redis": RedisPair, "mysql": MariaDBPair}
USERS = {"postgres": "probe", "redis": "", "mysql": "probe"}  # least privilege (Redis: the default user)
PERIOD, FAILURES = 1, 2


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Any]]:
    """One primary+replica pair per engine for the whole module, started on first use; a test that
    breaks its pair (a failover) retires it, and the next test asking for that engine gets a new one."""
    started: list[Any] = []

    class Lazy(dict[str, Any]):
        def __missing__(self, engine: str) -> Any:
            pair = self[engine] = ENGINES[engine]().start()
            started.append(pair)
            return pair

        def retire(self, engine: str) -> None:
            self.pop(engine).close()

    try:
        yield Lazy()
    finally:
        for pair in started:  # closing twice is harmless
            pair.close()


def sessions(engine: str, pair: Any, address: str) -> int:
    """Connections named epctl-probe that the server itself counts (not what epctl thinks it has)."""
    if engine == "redis":
        listing = pair.cli(address, "CLIENT", "LIST")
        return sum(1 for line in listing.splitlines() if " name=epctl-probe " in f" {line} ")
    if engine == "mysql":
        data = pair.primary if address == PRIMARY_ADDRESS else pair.replica
        return int(pair.sql(data, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'probe'"))
    data = pair.primary if address == PRIMARY_ADDRESS else pair.replica
    return int(pair.sql(data, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'epctl-probe'"))


@pytest.mark.parametrize("engine", list(ENGINES))
async def test_roles_on_one_kept_session_per_host(engine: str, servers: dict[str, Any]) -> None:
    pair = servers[engine]
    asked: list[tuple[str, str]] = []

    async def credentials(namespace: str, name: str) -> Credentials:
        asked.append((namespace, name))
        return Credentials(USERS[engine], PASSWORD if name == "good" else "wrong-password")

    prober = DatabaseProber(credentials)
    kind = ProbeKind(engine)
    primary = DatabaseProbe(kind, Expect.PRIMARY, secret_name="good")
    replica = DatabaseProbe(kind, Expect.REPLICA, secret_name="good", max_lag_seconds=30)
    try:
        async def replicating() -> bool:  # the replica may still be catching up after its start
            result = await prober.probe("ns/r/x", REPLICA_ADDRESS, pair.port, 2.0, replica)
            assert result.ok, result  # the last reason is what a timeout reports
            return True
        await eventually(replicating, timeout=30)
        # the warm-up may have dialled the replica more than once (the probe user reaches it by
        # replication, so its first login can be refused); from here on every session is counted
        warm = prober.connects
        asked.clear()
        for _ in range(5):  # five periods, the same two sessions
            on_primary = await prober.probe("ns/p/a", PRIMARY_ADDRESS, pair.port, 2.0, primary)
            on_replica = await prober.probe("ns/p/b", REPLICA_ADDRESS, pair.port, 2.0, primary)
            assert on_primary.ok and on_primary.role == "primary", on_primary
            assert not on_replica.ok and on_replica.role == "replica", on_replica
            assert "expected primary" in on_replica.reason
        assert prober.connects - warm == 2  # one session per (target, host), opened once
        assert asked == [("ns", "good")] * 2  # the Secret is read per session, not per probe
        assert sessions(engine, pair, PRIMARY_ADDRESS) == 1
        assert sessions(engine, pair, REPLICA_ADDRESS) == 2
        if engine == "postgres":
            assert on_primary.generation == 1 and on_primary.reason == "primary (timeline 1)"
        wrong = await prober.probe("ns/w/a", PRIMARY_ADDRESS, pair.port, 2.0,
                                   DatabaseProbe(kind, Expect.ANY, secret_name="bad"))
        assert not wrong.ok and "authentication failed" in wrong.reason and PASSWORD not in wrong.reason
        # a failed connect backs off: the next period does not dial again
        again = await prober.probe("ns/w/a", PRIMARY_ADDRESS, pair.port, 2.0,
                                   DatabaseProbe(kind, Expect.ANY, secret_name="bad"))
        assert not again.ok and again.reason.startswith("reconnecting after: authentication failed")
        assert prober.connects - warm == 3
    finally:
        await prober.close()
    await eventually(lambda: sessions(engine, pair, PRIMARY_ADDRESS) == 0, timeout=10)


def _hold_replication(engine: str, pair: Any) -> None:
    """Make the replica fall behind (PostgreSQL: replay paused while the primary commits) or stop
    replicating (MariaDB: replication threads stopped; Redis: link cut, re-auth refused)."""
    if engine == "postgres":
        pair.sql(pair.replica, "SELECT pg_wal_replay_pause()")
        pair.sql(pair.primary, "CREATE TABLE IF NOT EXISTS lag_marker (x int); INSERT INTO lag_marker VALUES (1)")
    elif engine == "mysql":
        pair.sql(pair.replica, "STOP SLAVE")
    else:
        pair.cli(REPLICA_ADDRESS, "CONFIG", "SET", "masterauth", "wrong")
        pair.cli(REPLICA_ADDRESS, "CLIENT", "KILL", "TYPE", "master")


def _release_replication(engine: str, pair: Any) -> None:
    if engine == "postgres":
        pair.sql(pair.replica, "SELECT pg_wal_replay_resume()")
    elif engine == "mysql":
        pair.sql(pair.replica, "START SLAVE")
    else:
        pair.cli(REPLICA_ADDRESS, "CONFIG", "SET", "masterauth", PASSWORD)


@pytest.mark.parametrize("engine", list(ENGINES))
async def test_a_lag_bound_fails_a_replica_that_falls_behind_and_nothing_else(
        engine: str, servers: dict[str, Any]) -> None:
    pair = servers[engine]

    async def credentials(namespace: str, name: str) -> Credentials:
        return Credentials(USERS[engine], PASSWORD)

    prober = DatabaseProber(credentials)
    bounded = DatabaseProbe(ProbeKind(engine), Expect.REPLICA, secret_name="s", max_lag_seconds=0)
    unbounded = DatabaseProbe(ProbeKind(engine), Expect.REPLICA, secret_name="s")

    async def probe(spec: DatabaseProbe) -> ProbeResult:
        return await prober.probe(f"ns/lag/{spec.max_lag_seconds}", REPLICA_ADDRESS, pair.port, 2.0, spec)

    try:
        await eventually(lambda: _ok(probe(bounded)), timeout=30)  # caught up: no lag at all
        opened = prober.connects
        _hold_replication(engine, pair)
        try:
            behind = await eventually(lambda: _failed(probe(bounded)), timeout=15)
            assert behind.role == "replica" and "bound is 0s" in behind.reason, behind
            still = await probe(unbounded)
            assert still.ok and still.role == "replica", still  # no bound asked: still a replica
        finally:
            _release_replication(engine, pair)
        await eventually(lambda: _ok(probe(bounded)), timeout=30)
        assert prober.connects == opened + 1  # the same session all along (+ the unbounded check's own)
    finally:
        await prober.close()


async def _failed(result: Awaitable[ProbeResult]) -> ProbeResult | None:
    done = await result
    return done if not done.ok else None


@pytest.mark.parametrize("engine", list(ENGINES))
async def test_tls_verifies_the_ca_and_the_server_name(engine: str, servers: dict[str, Any]) -> None:
    """TLS with a throw-away CA whose server certificate names localhost, not the address probed:
    PostgreSQL's primary (TLS turned on by a reload), MariaDB's primary (started with TLS), and a
    TLS-only Redis."""
    certs = serving_certs()
    pair = servers[engine]
    address, port = PRIMARY_ADDRESS, pair.port
    tls_redis = None
    if engine == "postgres":
        pair.enable_tls(certs.cert_pem, certs.key_pem)
    elif engine == "redis":
        tls_redis = await asyncio.to_thread(lambda: RedisTLS().start())
        address, port = tls_redis.address, tls_redis.port

    async def credentials(namespace: str, name: str) -> Credentials:
        return Credentials(USERS[engine], PASSWORD, certs.ca_pem.decode() if name == "with-ca" else "")

    prober = DatabaseProber(credentials)

    async def probe(secret: str, **tls: Any) -> ProbeResult:
        spec = DatabaseProbe(ProbeKind(engine), Expect.PRIMARY, secret_name=secret, tls=True, **tls)
        await prober.forget("ns/t/a", port)  # a fresh session per case
        return await prober.probe("ns/t/a", address, port, 2.0, spec)

    try:
        good = await eventually(lambda: _ok(probe("with-ca", tls_server_name="localhost")), timeout=10)
        assert good.role == "primary", good
        if engine == "postgres":  # the server says the session is encrypted
            assert pair.sql(pair.primary, "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) "
                                          "WHERE ssl AND application_name = 'epctl-probe'") == "1"
        mismatch = await probe("with-ca")  # verified against the address probed, which the certificate lacks
        assert not mismatch.ok and mismatch.reason.startswith("TLS: certificate not trusted"), mismatch
        assert "mismatch" in mismatch.reason, mismatch
        unknown_ca = await probe("without-ca", tls_server_name="localhost")  # the system roots do not know it
        assert not unknown_ca.ok and "certificate not trusted" in unknown_ca.reason, unknown_ca
        skipped = await probe("without-ca", tls_insecure_skip_verify=True)
        assert skipped.ok, skipped
    finally:
        await prober.close()
        if tls_redis is not None:
            tls_redis.close()


async def _ok(result: Awaitable[ProbeResult]) -> ProbeResult | None:
    done = await result
    return done if done.ok else None


@pytest.mark.parametrize("engine", list(ENGINES))
async def test_a_silent_server_times_out_on_time(engine: str) -> None:
    """A listener that accepts and never speaks: the probe ends at its timeout, not at the driver's."""
    silent: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    prober = DatabaseProber()
    try:
        for _ in range(2):  # connect stuck, then (after the backoff) stuck again
            await prober.forget("ns/silent/a", port)
            result = await prober.probe("ns/silent/a", "127.0.0.1", port, 0.3, DatabaseProbe(ProbeKind(engine)))
            assert result.timed_out and result.reason == "timeout after 0.3s", result
            assert result.duration < 0.3 + 0.1, result.duration
    finally:
        await prober.close()
        for writer in silent:
            writer.close()
        server.close()
        await server.wait_closed()


async def _watch_slices(client: KubeClient, seen: list[tuple[str, frozenset[str]]], opened: asyncio.Event) -> None:
    """Every state of every slice, as a watching client sees it: (service, ready addresses)."""
    async for event in client.stream(ENDPOINTSLICES.path("default"), {"watch": "true"}, on_open=opened.set):
        obj = event["object"]
        service = obj["metadata"].get("labels", {}).get("kubernetes.io/service-name", "")
        ready = frozenset(e["addresses"][0] for e in obj.get("endpoints") or [] if e["conditions"].get("ready"))
        seen.append((service, ready))


def _ready(api: KubeAPIServer, service: str) -> set[str]:
    return {address for (_, address), ready in endpoints_of(api, service).items() if ready}


async def _set_hosts(client: KubeClient, hosts: list[str]) -> None:
    path = "/apis/epctl.io/v1beta1/namespaces/default/clusterendpoints/db-primary"
    current = await client.request("GET", path)
    current["spec"]["ports"][0]["hosts"] = hosts
    await client.request("PUT", path, body=current)


def _unhealthy_events(api: KubeAPIServer) -> set[tuple[str, int]]:
    """(name, count) of every EndpointUnhealthy Event stored: a new one, or one counted up, is new here."""
    return {(e["metadata"]["name"], int(e.get("count") or 1)) for e in api.store.objects[("", "events")].values()
            if e["reason"] == "EndpointUnhealthy"}


def _unhealthy(api: KubeAPIServer) -> list[dict[str, Any]]:
    return list(cep_of(api, "db-primary")["status"]["ports"][0].get("unhealthy") or [])  # type: ignore[index]


@pytest.mark.parametrize("engine", list(ENGINES))
async def test_failover_primary_and_replica_services_follow_never_two_primaries(
        engine: str, servers: Any, api: KubeAPIServer, client: KubeClient,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pair = servers[engine]
    await install_crd(client)
    await client.request("POST", SECRETS.path("default"), body={
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db-probe"}, "type": "Opaque",
        "data": {"username": base64.b64encode(USERS[engine].encode()).decode(),
                 "password": base64.b64encode(PASSWORD.encode()).decode()}})

    def port(expect: str) -> dict[str, Any]:
        return {"name": "db", "port": 5432, "targetPort": pair.port, "hosts": [PRIMARY_ADDRESS, REPLICA_ADDRESS],
                "periodSeconds": PERIOD, "timeoutSeconds": 1, "failureThreshold": FAILURES,
                engine: {"expect": expect, "secretRef": {"name": "db-probe"}}}

    seen: list[tuple[str, frozenset[str]]] = []
    opened = asyncio.Event()
    watcher = asyncio.create_task(_watch_slices(client, seen, opened))
    await opened.wait()
    try:
        async with running_controller(api, client):
            for name, expect in (("db-primary", "primary"), ("db-replica", "replica")):
                await client.request("POST", "/apis/epctl.io/v1beta1/namespaces/default/clusterendpoints",
                                     body=cep(name, [port(expect)]))
            await eventually(lambda: _ready(api, "db-primary") == {PRIMARY_ADDRESS}
                             and _ready(api, "db-replica") == {REPLICA_ADDRESS}, timeout=30)

            pair.promote_replica()  # both claim primary now
            if engine == "postgres":  # the promoted standby is on a newer timeline: it alone is the primary
                await eventually(lambda: _ready(api, "db-primary") == {REPLICA_ADDRESS}, timeout=15)
                await eventually(lambda: [u["address"] for u in _unhealthy(api) if "newer timeline (2 > 1)" in
                                          u["reason"]] == [PRIMARY_ADDRESS], timeout=10)  # status follows the slices
            else:  # Redis and MySQL cannot tell which primary holds the writes that count: neither is published
                await eventually(lambda: _ready(api, "db-primary") == set(), timeout=15)
                await eventually(lambda: len([u for u in _unhealthy(api) if "split brain" in u["reason"]]) == 2,
                                 timeout=10)
                # the operator takes the old primary out of the list: the other claimant is published at once
                await _set_hosts(client, [REPLICA_ADDRESS])
                await eventually(lambda: _ready(api, "db-primary") == {REPLICA_ADDRESS}, timeout=10)
                await _set_hosts(client, [PRIMARY_ADDRESS, REPLICA_ADDRESS])  # and back: split brain again
                await eventually(lambda: _ready(api, "db-primary") == set(), timeout=10)

            unhealthy_before = _unhealthy_events(api)
            pair.stop_primary()
            stopped = time.monotonic()
            await eventually(lambda: _ready(api, "db-primary") == {REPLICA_ADDRESS}, timeout=20)
            took = time.monotonic() - stopped
            # within failureThreshold x period (+ one period of phase, + slack for a loaded machine)
            assert took < (FAILURES + 1) * PERIOD + 3.0, took
            await eventually(lambda: _ready(api, "db-replica") == set(), timeout=20)  # no replica is left
            print(f"{engine}: the primary Service followed {took:.2f}s after the old primary stopped")

            # Events go after the slices and status they explain: wait on the one this flip owes (a new
            # EndpointUnhealthy Event, or a similar one counted up: the recorder correlates them)
            await eventually(lambda: _unhealthy_events(api) - unhealthy_before,
                             message="an EndpointUnhealthy Event for the stopped primary")
            events = (await client.request("GET", EVENTS.path("default")))["items"]
            for text in [str(events), str(cep_of(api, "db-primary")), str(cep_of(api, "db-replica")), caplog.text]:
                assert PASSWORD not in text
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        servers.retire(engine)  # promoted and stopped: no use to another test
    secret_reads = {r.verb for r in api.request_log if r.resource == "secrets" and r.verb != "create"}
    assert secret_reads == {"get"}, secret_reads  # one GET per session: what the overlay grants, no list/watch
    primaries = [ready for service, ready in seen if service == "db-primary"]
    assert primaries and all(len(ready) <= 1 for ready in primaries), primaries
