"""The scheduler with real probes against local backends."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest

from epctl.api.spec import GRPCProbe, HTTPProbe, ProbeTiming, TCPProbe, UDPProbe
from epctl.probe.scheduler import Check, CheckKey, Scheduler, Transition
from epctl.testing.backends import HOST, GRPCBackend, HTTPBackend, TCPBackend, UDPBackend
from epctl.testing.waiting import eventually

PERIOD = 0.2  # scheduling period used in place of the spec's whole seconds, to keep tests fast


class Probes:
    def __init__(self) -> None:
        self.transitions: list[Transition] = []
        self.results: list[tuple[str, bool]] = []
        self.max_in_flight = 0
        self.lateness_seen: list[float] = []
        self.stretches: list[float] = []

    def observe(self, kind: str, ok: bool, duration: float) -> None:
        self.results.append((kind, ok))

    def lateness(self, seconds: float) -> None:
        self.lateness_seen.append(seconds)

    def inconclusive(self, kind: str) -> None:
        self.results.append((kind + " inconclusive", False))

    def pacing(self, stretch: float, admitted_per_second: float, loop_lag: float) -> None:
        self.stretches.append(stretch)

    def in_flight(self, count: int) -> None:
        self.max_in_flight = max(self.max_in_flight, count)


@pytest.fixture
async def sched() -> AsyncIterator[tuple[Scheduler, Probes]]:
    probes = Probes()
    scheduler = Scheduler(probes.transitions.append, metrics=probes, period_override=PERIOD, first_window=0.05)
    scheduler.start()
    yield scheduler, probes
    await scheduler.stop()


def tcp_check(port: int, name: str = "p", failure: int = 3, success: int = 1) -> Check:
    return Check(CheckKey("ns/svc", name, HOST), TCPProbe(), port,
                 ProbeTiming(timeout_seconds=1, failure_threshold=failure, success_threshold=success))


async def test_a_probe_answered_at_once_reports_after_the_dispatch_and_frees_its_slot() -> None:
    """A callback probe can fail before it returns (an address that is no IP literal): its result still
    reaches the thresholds, outside the scheduler's dispatch (a consumer may add checks), and its slot
    is freed."""
    probes = Probes()
    seen: list[tuple[bool, bool]] = []  # (healthy, called inside a dispatch)

    def on_transition(t: Transition) -> None:
        seen.append((t.healthy, scheduler._dispatching))
        scheduler.upsert(Check(CheckKey("ns/svc", "added", "not-an-ip-either"), TCPProbe(), 80,
                               ProbeTiming(timeout_seconds=1, failure_threshold=1)))

    scheduler = Scheduler(on_transition, metrics=probes, period_override=PERIOD, first_window=0.05, keep_last=True)
    scheduler.upsert(Check(CheckKey("ns/svc", "p", "not-an-ip"), TCPProbe(), 80,
                           ProbeTiming(timeout_seconds=1, failure_threshold=1)))
    scheduler.start()
    try:
        await eventually(lambda: len(seen) >= 2, message="both checks decided")
        assert seen[:2] == [(False, False), (False, False)]
        assert scheduler.last_result(CheckKey("ns/svc", "p", "not-an-ip")).reason == "not an IP address"  # type: ignore[union-attr]
        await eventually(lambda: scheduler.in_flight == 0, message="slots freed")
    finally:
        await scheduler.stop()


async def test_backend_death_and_recovery_cross_thresholds_once(sched: tuple[Scheduler, Probes]) -> None:
    scheduler, probes = sched
    async with TCPBackend() as backend:
        check = tcp_check(backend.port, failure=3, success=2)
        scheduler.upsert(check)
        await eventually(lambda: probes.transitions, message="first decision")
        assert [t.healthy for t in probes.transitions] == [True]
        assert scheduler.state(check.key).runs == 2  # type: ignore[union-attr]  # successThreshold=2
        await backend.set_mode("closed")
        died = time.monotonic()
        await eventually(lambda: len(probes.transitions) == 2, message="unhealthy after 3 failures")
        assert probes.transitions[1].healthy is False and probes.transitions[1].reason == "connection refused"
        assert time.monotonic() - died < 3 * PERIOD + 1.0
        assert scheduler.state(check.key).failures == 3  # type: ignore[union-attr]
        await backend.set_mode("accepting")
        await eventually(lambda: len(probes.transitions) == 3, message="healthy after 2 successes")
        assert probes.transitions[2].healthy is True


async def test_adopted_initial_state_does_not_flap(sched: tuple[Scheduler, Probes]) -> None:
    scheduler, probes = sched
    async with TCPBackend() as backend:
        check = tcp_check(backend.port)
        scheduler.upsert(check, initial=True)
        await eventually(lambda: scheduler.state(check.key).runs >= 3,  # type: ignore[union-attr]
                         message="a few probes ran")
        assert probes.transitions == []  # healthy stays healthy: nothing to publish
        await backend.set_mode("closed")
        await eventually(lambda: probes.transitions, message="flip after the failure threshold")
        assert [t.healthy for t in probes.transitions] == [False]


async def test_unchanged_upsert_keeps_state_changed_probe_keeps_health(sched: tuple[Scheduler, Probes]) -> None:
    scheduler, probes = sched
    async with TCPBackend() as backend, HTTPBackend() as web:
        check = tcp_check(backend.port)
        scheduler.upsert(check)
        await eventually(lambda: probes.transitions, message="healthy")
        state = scheduler.state(check.key)
        scheduler.upsert(tcp_check(backend.port))
        assert scheduler.state(check.key) is state
        scheduler.upsert(Check(check.key, HTTPProbe(), web.port, check.timing))
        assert scheduler.state(check.key) is not state
        assert scheduler.state(check.key).healthy is True  # type: ignore[union-attr]
        await eventually(lambda: len(web.requests) >= 2, message="new probe runs")
        assert [t.healthy for t in probes.transitions] == [True]


async def test_remove_stops_probing(sched: tuple[Scheduler, Probes]) -> None:
    scheduler, probes = sched
    async with HTTPBackend() as web:
        key = CheckKey("ns/svc", "p", HOST)
        scheduler.upsert(Check(key, HTTPProbe(), web.port))
        await eventually(lambda: len(web.requests) >= 2, message="probing")
        scheduler.remove_target("ns/svc")
        await eventually(lambda: scheduler.in_flight == 0, message="in-flight probe finished")
        count = len(web.requests)
        before = len(probes.results)
        deadline = time.monotonic() + 4 * PERIOD
        await eventually(lambda: time.monotonic() >= deadline, message="several periods pass")
        assert len(web.requests) == count and len(probes.results) == before and len(scheduler) == 0


async def test_global_concurrency_bound_holds() -> None:
    probes = Probes()
    scheduler = Scheduler(probes.transitions.append, metrics=probes, max_concurrent=5, period_override=0.5,
                          first_window=0.01)
    scheduler.start()
    try:
        async with HTTPBackend(delay=0.2) as web:
            for i in range(40):
                scheduler.upsert(Check(CheckKey("ns/svc", "p", f"127.0.0.{i + 1}"), HTTPProbe(), web.port))
            await eventually(lambda: len(probes.results) >= 40, timeout=20, message="every check ran")
            assert probes.max_in_flight == 5
    finally:
        await scheduler.stop()


async def test_runs_follow_the_schedule_without_drift(sched: tuple[Scheduler, Probes]) -> None:
    scheduler, _ = sched
    async with HTTPBackend(delay=0.05) as web:  # each probe takes 50 ms: must not push the next one
        scheduler.upsert(Check(CheckKey("ns/svc", "p", HOST), HTTPProbe(), web.port))
        stamps: list[float] = []
        while len(stamps) < 12:
            await eventually(lambda: len(web.requests) > len(stamps), timeout=5, interval=0.005,
                             message="next probe")
            stamps.append(time.monotonic())
        gaps = [b - a for a, b in itertools.pairwise(stamps[1:])]
        total = stamps[-1] - stamps[1]
        assert abs(total - 10 * PERIOD) < 0.15, gaps  # 10 periods, no accumulated 50 ms per run


async def test_every_probe_kind_through_the_scheduler(sched: tuple[Scheduler, Probes]) -> None:
    scheduler, probes = sched
    async with UDPBackend() as udp, GRPCBackend() as grpc_backend, HTTPBackend() as web:
        scheduler.upsert(Check(CheckKey("ns/svc", "udp", HOST), UDPProbe(data=b"hi"), udp.port))
        scheduler.upsert(Check(CheckKey("ns/svc", "grpc", HOST), GRPCProbe(), grpc_backend.port))
        scheduler.upsert(Check(CheckKey("ns/svc", "http", HOST), HTTPProbe(path="/ok"), web.port))
        await eventually(lambda: len(probes.transitions) == 3, message="all healthy")
        assert all(t.healthy for t in probes.transitions)
        grpc_backend.set_status(GRPCBackend.NOT_SERVING)
        await udp.set_mode("silent")
        await eventually(lambda: len(probes.transitions) == 5, timeout=15, message="two go unhealthy")
        reasons = {t.key.port: t.reason for t in probes.transitions[3:]}
        assert reasons == {"grpc": "health status NOT_SERVING", "udp": "no reply within 1s"}


async def test_probing_continues_after_a_burst_over_the_concurrency_bound() -> None:
    """Regression: after the in-flight bound was hit, the scheduler must keep running checks."""
    probes = Probes()
    scheduler = Scheduler(probes.transitions.append, metrics=probes, max_concurrent=3, period_override=0.3,
                          first_window=0.01)
    scheduler.start()
    try:
        async with HTTPBackend(delay=0.05) as web:
            keys = [CheckKey("ns/svc", "p", f"127.0.0.{i + 1}") for i in range(12)]
            for key in keys:
                scheduler.upsert(Check(key, HTTPProbe(), web.port))
            await eventually(lambda: all(scheduler.state(k).runs >= 4 for k in keys),  # type: ignore[union-attr]
                             timeout=15, message="every check keeps running period after period")
            assert probes.max_in_flight == 3
    finally:
        await scheduler.stop()


async def test_per_target_metrics_are_opt_in_and_forgotten_with_the_check() -> None:
    from prometheus_client import REGISTRY

    from epctl.metrics import PerTargetMetrics

    def up(address: str) -> float | None:
        return REGISTRY.get_sample_value("epctl_probe_target_up", {"clusterendpoint": "ns/per-target",
                                                                   "port": "p", "address": address})

    scheduler = Scheduler(lambda t: None, period_override=PERIOD, first_window=0.01,
                          target_metrics=PerTargetMetrics())
    scheduler.start()
    try:
        async with TCPBackend() as backend:
            key = CheckKey("ns/per-target", "p", HOST)
            scheduler.upsert(Check(key, TCPProbe(), backend.port))
            await eventually(lambda: up(HOST) == 1.0, message="series exported")
            scheduler.remove(key)
            assert up(HOST) is None
    finally:
        await scheduler.stop()


# --- truth under a stalled loop, and fair stretch (docs/design.md section 6) ------------------------------------

class StallingProbes(Probes):
    """Blocks the event loop (as a long GC pause, a big JSON decode or a CPU-starved container would) right
    after the scheduler launched probes, so those probes are in flight while nothing runs."""

    def __init__(self) -> None:
        super().__init__()
        self.stall_next = 0.0
        self.stalls = 0

    def in_flight(self, count: int) -> None:  # once per tick, after its launches
        super().in_flight(count)
        if self.stall_next and count:
            duration, self.stall_next = self.stall_next, 0.0
            # while probes are in flight, after the first steps of those this tick launched: they have sent
            # their SYN / request / datagram (stalling at a launch, before the probe's Task had run, left
            # nothing in flight whenever that launch was alone in its tick)
            asyncio.get_running_loop().call_soon(self._stall, duration)

    def _stall(self, duration: float) -> None:
        time.sleep(duration)  # the point of the test: a blocked loop
        self.stalls += 1


async def _stall_twice(probes: StallingProbes) -> None:
    for n in (1, 2):
        probes.stall_next = 1.6  # timeout 1 s: the deadline passes while the loop is blocked
        await eventually(lambda n=n: probes.stalls >= n, timeout=10, message="the loop was stalled")  # type: ignore[misc]


@pytest.mark.parametrize("kind", ["tcp", "http", "udp", "grpc"])
async def test_a_stalled_loop_never_fails_a_healthy_host(kind: str) -> None:
    probes = StallingProbes()
    scheduler = Scheduler(probes.transitions.append, metrics=probes, period_override=1.0, first_window=0.2)
    timing = ProbeTiming(timeout_seconds=1, failure_threshold=1, success_threshold=1)
    async with TCPBackend() as tcp, HTTPBackend() as web, UDPBackend() as udp, GRPCBackend() as grpc_backend:
        probe, port = {"tcp": (TCPProbe(), tcp.port), "http": (HTTPProbe(), web.port),
                       "udp": (UDPProbe(data=b"x"), udp.port), "grpc": (GRPCProbe(), grpc_backend.port)}[kind]
        keys = [CheckKey("ns/svc", f"p{i}", HOST) for i in range(8)]
        for key in keys:
            scheduler.upsert(Check(key, probe, port, timing))
        scheduler.start()
        try:
            await eventually(lambda: len(probes.transitions) == len(keys), message="all decided")
            assert all(t.healthy for t in probes.transitions)
            await _stall_twice(probes)
            runs = {k: scheduler.state(k).runs for k in keys}  # type: ignore[union-attr]
            await eventually(lambda: all(scheduler.state(k).runs > runs[k] + 1 for k in keys),  # type: ignore[union-attr]
                             timeout=10, message="probing goes on after the stalls")
            assert [t.healthy for t in probes.transitions] == [True] * len(keys), \
                f"a stall failed a healthy host: {[(t.key, t.reason) for t in probes.transitions if not t.healthy]}"
            # TCP sees the completed handshake on the socket and UDP the reply waiting in it (both asked when
            # the timer fires); the HTTP and gRPC servers here answer only once our own loop runs again
            if kind in ("http", "grpc"):
                assert (kind + " inconclusive", False) in probes.results
        finally:
            await scheduler.stop()


async def test_a_dead_host_is_still_detected_after_stalls() -> None:
    """Inconclusive is only for probes the loop watched late: a host that really does not answer (a
    blackhole, the timeout path) goes unhealthy within failureThreshold x period + timeout once the loop
    runs normally."""
    probes = StallingProbes()
    scheduler = Scheduler(probes.transitions.append, metrics=probes, period_override=1.0, first_window=0.2)
    async with TCPBackend() as tcp:
        key = CheckKey("ns/svc", "p", HOST)
        scheduler.upsert(Check(key, TCPProbe(), tcp.port, ProbeTiming(timeout_seconds=1, failure_threshold=2)))
        scheduler.start()
        try:
            await eventually(lambda: probes.transitions, message="decided")
            await _stall_twice(probes)
            await tcp.set_mode("blackhole")
            dead = time.monotonic()
            await eventually(lambda: len(probes.transitions) == 2, timeout=15, message="detected")
            assert not probes.transitions[-1].healthy and probes.transitions[-1].reason == "timeout after 1s"
            assert time.monotonic() - dead < 2 * 1.0 + 1.0 + 1.5  # failureThreshold x period + timeout + slack
        finally:
            await scheduler.stop()


async def test_overload_stretches_every_period_fairly() -> None:
    """Demand 120 probes/s against an admission capped at 60/s: every check runs at ~2x its period, in
    schedule order (each check ran about as often as every other), lateness stays bounded."""
    probes = Probes()
    scheduler = Scheduler(probes.transitions.append, metrics=probes, period_override=0.5, first_window=0.5,
                          max_rate=60)
    async with TCPBackend() as tcp:
        keys = [CheckKey("ns/svc", f"p{i}", HOST) for i in range(60)]
        for key in keys:
            scheduler.upsert(Check(key, TCPProbe(), tcp.port))
        scheduler.start()
        try:
            await eventually(lambda: scheduler.stretch.factor > 1.5, timeout=10, message="stretching")
            start = {k: scheduler.state(k).runs for k in keys}  # type: ignore[union-attr]
            began = time.monotonic()
            await eventually(lambda: time.monotonic() - began > 4.0, message="a few effective periods")
            runs = [scheduler.state(k).runs - start[k] for k in keys]  # type: ignore[union-attr]
            assert 1.6 < scheduler.stretch.factor < 2.8, scheduler.stretch.factor
            assert min(runs) >= 2 and max(runs) - min(runs) <= 2, runs  # fair: nobody starves, nobody hogs
            assert max(probes.lateness_seen[-60:]) < 2 * 0.5 * scheduler.stretch.factor
            assert probes.stretches and max(probes.stretches) > 1.5  # exported (epctl_probe_period_stretch)
        finally:
            await scheduler.stop()


class ResultTimes:
    """Per-check result times (the scheduler's TargetMetrics hook): when each check saw what."""

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[float, bool]]] = {}

    def result(self, target: str, port: str, address: str, ok: bool, duration: float) -> None:
        self.seen.setdefault(target, []).append((time.monotonic(), ok))

    def forget(self, target: str, port: str, address: str) -> None:
        pass


async def test_a_stretched_schedule_still_flips_a_shared_host_together_at_the_spec_period() -> None:
    """The loop is kept busy by work of its own (80 ms of CPU in a callback every 120 ms), so admission
    cuts probing to its floor and every period stretches ~4x (80 checks at 1 s, 20 admitted a second).
    A host shared by 40 checks then dies. Each check still needs its own two failures, but the
    confirming probe runs one *spec* period after the first, and once one check flips, its 39 siblings
    run at once (their next runs moved early, on the early lane's own budget): all 40 flip within about
    one spec period of each other, where the stretched schedule alone spreads them over a whole
    stretched period (~4 s). Back up, the first success brings the rest along the same way."""
    probes, times = Probes(), ResultTimes()
    scheduler = Scheduler(probes.transitions.append, metrics=probes, period_override=1.0, first_window=1.0,
                          target_metrics=times)
    loop = asyncio.get_running_loop()
    busy: list[asyncio.TimerHandle] = []

    def burn() -> None:  # the loop's own work: lag that is work, which admission answers
        end = time.thread_time() + 0.08
        while time.thread_time() < end:
            pass
        busy[:] = [loop.call_later(0.04, burn)]

    burn()
    async with TCPBackend() as shared, TCPBackend() as other:
        timing = ProbeTiming(timeout_seconds=1, failure_threshold=2, success_threshold=1)
        for i in range(40):
            scheduler.upsert(Check(CheckKey(f"ns/shared{i}", "p", HOST), TCPProbe(), shared.port, timing))
            scheduler.upsert(Check(CheckKey(f"ns/other{i}", "p", HOST), TCPProbe(), other.port, timing))
        scheduler.start()
        try:
            await eventually(lambda: scheduler.stretch.factor > 3.0, timeout=20, message="stretching")
            await eventually(lambda: len(probes.transitions) == 80, timeout=20, message="all decided healthy")
            assert all(t.healthy for t in probes.transitions)
            stretch = scheduler.stretch.factor
            probes.transitions.clear()
            await shared.set_mode("closed")
            await eventually(lambda: len(probes.transitions) == 40, timeout=30, message="the shared host flipped")
            assert {t.key.target for t in probes.transitions} == {f"ns/shared{i}" for i in range(40)}
            assert not any(t.healthy for t in probes.transitions)
            at = sorted(t.at for t in probes.transitions)
            assert at[-1] - at[0] < 2.0 < stretch, (at[-1] - at[0], stretch)  # together, not a stretched period apart
            for i in range(40):  # each on its own two failures, one spec period apart (not ~4 s)
                failures = [t for t, ok in times.seen[f"ns/shared{i}"] if not ok]
                assert len(failures) >= 2 and 0.9 < failures[1] - failures[0] < 1.9, failures
            assert scheduler.stretch.factor > 2.5  # the rest of the fleet still ran stretched throughout
            probes.transitions.clear()
            await shared.set_mode("accepting")
            await eventually(lambda: len(probes.transitions) == 40, timeout=30, message="the shared host is back")
            at = sorted(t.at for t in probes.transitions)
            assert all(t.healthy for t in probes.transitions) and at[-1] - at[0] < 1.5, at[-1] - at[0]
        finally:
            busy[0].cancel()
            await scheduler.stop()


@pytest.mark.parametrize("mode", ["pause", "busy"])
async def test_admission_cuts_probes_for_a_busy_loop_not_for_a_paused_process(mode: str) -> None:
    """Admission steers by the part of the loop's lateness the loop thread spent running. A process that
    is stopped now and then (as a CFS quota throttles it: 80 ms of every 150 here) lags as much, but no
    probe it holds back would give it that time: admission keeps following the demand. A loop kept busy
    by its own work (80 ms of CPU in a callback every 150 ms) still cuts it."""
    import json
    import os
    import signal
    import sys
    from pathlib import Path
    child = await asyncio.create_subprocess_exec(sys.executable, str(Path(__file__).with_name("paused_scheduler.py")),
                                                 mode, "4", stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    try:
        assert await asyncio.wait_for(child.stdout.readline(), 30) == b"ready\n"
        if mode == "pause":
            end = time.monotonic() + 4
            while time.monotonic() < end:  # the stimulus itself: stop 80 ms, run 70 ms
                os.kill(child.pid, signal.SIGSTOP)
                await asyncio.sleep(0.08)
                os.kill(child.pid, signal.SIGCONT)
                await asyncio.sleep(0.07)
        report = json.loads(await asyncio.wait_for(child.stdout.readline(), 30))
    finally:
        if child.returncode is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
        await child.wait()
    assert report["worst_lag"] > 0.06, report  # the loop was late either way
    assert report["healthy"] == 200, report  # and no host was failed for it
    if mode == "pause":
        assert report["lowest_rate"] >= report["demand"], report  # nothing held back
    else:
        assert report["lowest_rate"] < report["demand"] / 2, report  # probes yield to the loop's own work


async def test_yielding_to_queued_writes_does_not_stretch_the_schedule() -> None:
    """While API writes queue, probes get a quarter of what they ran before; those windows measure the
    yield, not the engine, so the stretch factor holds. (A write burst once stretched every period
    20-80x, and relaxing that took most of a minute of under-probing after the writes were out.)"""
    probes = Probes()
    backlog = [False]
    scheduler = Scheduler(probes.transitions.append, metrics=probes, period_override=0.5, first_window=0.5,
                          api_backlog=lambda: backlog[0])
    async with TCPBackend() as tcp:
        for i in range(100):
            scheduler.upsert(Check(CheckKey(f"ns/t{i}", "p", HOST), TCPProbe(), tcp.port))
        scheduler.start()
        try:
            await eventually(lambda: len(probes.transitions) == 100, message="all decided")
            runs = sum(scheduler.state(CheckKey(f"ns/t{i}", "p", HOST)).runs for i in range(100))  # type: ignore[union-attr]
            backlog[0] = True
            began = time.monotonic()
            await eventually(lambda: time.monotonic() - began > 3.0, message="three stretch windows of writes")
            yielded = sum(scheduler.state(CheckKey(f"ns/t{i}", "p", HOST)).runs for i in range(100)) - runs  # type: ignore[union-attr]
            assert yielded < 0.5 * 3.0 * 200, yielded  # probes did yield (demand 200/s; a quarter of it ran)
            assert scheduler.stretch.factor == 1.0, scheduler.stretch.factor
            backlog[0] = False
            await eventually(lambda: scheduler.admission.rate >= 2 * scheduler.demand, message="back to demand")
            assert scheduler.stretch.factor == 1.0
        finally:
            await scheduler.stop()
