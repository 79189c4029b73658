"""Found in review of the early lane (confirmations at the spec period, sibling sweeps) and its pacing,
each a failing reproduction first, now fixed; against real local backends (docs/design.md section 6)."""

from __future__ import annotations

import asyncio
import itertools
import time

from aiohttp import web

from epctl.api.spec import HTTPProbe, ProbeTiming, TCPProbe
from epctl.probe.scheduler import Check, CheckKey, Scheduler, Transition
from epctl.testing.backends import HOST, HTTPBackend, TCPBackend, free_port
from epctl.testing.waiting import eventually


def healthy(scheduler: Scheduler, key: CheckKey) -> bool | None:
    state = scheduler.state(key)
    return state.healthy if state is not None else None


def timing(period: int, failure: int = 1, success: int = 1, timeout: int = 1, delay: int = 0) -> ProbeTiming:
    return ProbeTiming(timeout_seconds=timeout, period_seconds=period, failure_threshold=failure,
                       success_threshold=success, initial_delay_seconds=delay)


# --- 1. the sweep memo: one sweep per change of a host probe ------------------------------------------


async def test_control_a_lone_host_change_sweeps_a_slow_sibling() -> None:
    """Control (passes): a host shared by a 1 s check and a 60 s check dies; the 1 s check flips and the
    60 s one is swept, decided down within a few seconds instead of at its next slot a minute later."""
    transitions: list[Transition] = []
    scheduler = Scheduler(transitions.append, first_window=0.1)
    fast, slow = CheckKey("ns/fast", "p", HOST), CheckKey("ns/slow", "p", HOST)
    async with TCPBackend() as tcp:
        scheduler.upsert(Check(fast, TCPProbe(), tcp.port, timing(1)))
        scheduler.upsert(Check(slow, TCPProbe(), tcp.port, timing(60)))
        scheduler.start()
        try:
            await eventually(lambda: healthy(scheduler, fast) and healthy(scheduler, slow), message="both up")
            await tcp.set_mode("closed")
            await eventually(lambda: healthy(scheduler, fast) is False, timeout=5, message="fast flipped")
            await eventually(lambda: healthy(scheduler, slow) is False, timeout=5, message="slow swept down")
        finally:
            await scheduler.stop()


async def test_each_probe_of_a_shared_host_port_sweeps_its_own_siblings() -> None:
    """An HTTP check pair and a TCP check pair share 127.0.0.1:port (four ClusterEndpoints: httpGet and
    tcpSocket probes of one backend; each pair one 1 s check and one 60 s check). The HTTP endpoint starts
    answering 500: the fast HTTP check flips and sweeps its HTTP sibling down. Then the whole host dies:
    the fast TCP check flips and must sweep the slow TCP one. (The memo was keyed by address and port: the
    HTTP sweep, which also ran the TCP checks, blocked the TCP one for a minute.) Siblings are checks of
    the same probe: an HTTP 500 says nothing about a TCP accept."""
    transitions: list[Transition] = []
    scheduler = Scheduler(transitions.append, first_window=0.1)
    http_fast, http_slow = CheckKey("ns/http-fast", "p", HOST), CheckKey("ns/http-slow", "p", HOST)
    tcp_fast, tcp_slow = CheckKey("ns/tcp-fast", "p", HOST), CheckKey("ns/tcp-slow", "p", HOST)
    async with HTTPBackend() as http:
        scheduler.upsert(Check(http_fast, HTTPProbe(), http.port, timing(1)))
        scheduler.upsert(Check(http_slow, HTTPProbe(), http.port, timing(60)))
        scheduler.upsert(Check(tcp_fast, TCPProbe(), http.port, timing(1)))
        scheduler.upsert(Check(tcp_slow, TCPProbe(), http.port, timing(60)))
        scheduler.start()
        try:
            keys = (http_fast, http_slow, tcp_fast, tcp_slow)
            await eventually(lambda: all(healthy(scheduler, k) for k in keys), message="all up")
            http.status = 500
            await eventually(lambda: healthy(scheduler, http_slow) is False, timeout=5,
                             message="the slow HTTP check swept down")  # the sweep works
            assert scheduler.state(tcp_slow).runs == 1  # type: ignore[union-attr]  # another probe: not swept
            await http.stop()  # now the host is gone for every probe
            await eventually(lambda: healthy(scheduler, tcp_fast) is False, timeout=5, message="fast TCP flipped")
            await eventually(lambda: healthy(scheduler, tcp_slow) is False, timeout=5,
                             message="the slow TCP check should be swept down like the slow HTTP one was")
        finally:
            await scheduler.stop()


async def test_a_host_that_dies_again_within_a_minute_is_swept_again() -> None:
    """Host down, up, down within 60 s, with no sweep "up" in between: ``a`` (1 s, failureThreshold 1,
    successThreshold 8) flips down on the first outage and is still confirming its way back up when the
    host dies again. The first outage sweeps ``b`` (1 s) and ``c`` (5 s), both failureThreshold 2: one
    failure each, then the host is back and their confirmations succeed, so they stay up. The host dies
    again; ``b`` flips down after its own two failures, a new change of the host: ``c`` (up, idle, not
    pending) must be swept. (The memo said "swept down" for a minute; now any answer against a sweep's
    direction ends it.)"""
    # each transition: (check, healthy, its idle, up, not pending siblings that the sweep did not queue)
    seen: list[tuple[str, bool, list[str]]] = []

    def on_transition(t: Transition) -> None:  # the sweep runs before the consumers: its work is visible here
        early = {g for _, g in scheduler._early}
        unswept = [k.target for k in (a, b, c) if k != t.key and (s := scheduler._entries[k]).passing
                   and not s.pending and not s.in_flight and s.generation not in early]
        seen.append((t.key.target, t.healthy, unswept))

    scheduler = Scheduler(on_transition, first_window=0.1)
    a, b, c = CheckKey("ns/a", "p", HOST), CheckKey("ns/b", "p", HOST), CheckKey("ns/c", "p", HOST)
    async with TCPBackend() as tcp:
        scheduler.upsert(Check(a, TCPProbe(), tcp.port, timing(1, failure=1, success=8)), initial=True)
        scheduler.upsert(Check(b, TCPProbe(), tcp.port, timing(1, failure=2)), initial=True)
        scheduler.upsert(Check(c, TCPProbe(), tcp.port, timing(5, failure=2)), initial=True)
        scheduler.start()
        try:
            await eventually(lambda: all(scheduler.state(k).runs for k in (a, b, c)), message="all ran, up")  # type: ignore[union-attr]
            await tcp.set_mode("closed")
            await eventually(lambda: healthy(scheduler, a) is False, timeout=5, message="a flipped: sweep")
            assert seen == [("ns/a", False, [])], seen  # the first outage: b and c were swept (control)
            await eventually(lambda: scheduler.state(c).failures == 1, timeout=5,  # type: ignore[union-attr]
                             message="c swept: its first failure")
            await tcp.set_mode("accepting")  # a blip: back before the confirmations
            await eventually(lambda: scheduler.state(c).runs == 3, timeout=8,  # type: ignore[union-attr]
                             message="c's confirmation ran (one spec period, 5 s, after its sweep)")
            assert healthy(scheduler, c) and healthy(scheduler, b) and not scheduler.state(c).pending  # type: ignore[union-attr]
            assert healthy(scheduler, a) is False  # nothing came back "up": no sweep up reset the memo
            await tcp.set_mode("closed")  # and down again, for good
            await eventually(lambda: healthy(scheduler, b) is False, timeout=6, message="b flipped")
            assert seen[-1] == ("ns/b", False, []), seen  # c should have been swept when b saw the host change again
        finally:
            await scheduler.stop()


# --- 2. a sibling in flight at the sweep -------------------------------------------------------------


class SnapshotHTTP:
    """An HTTP server whose answer (status) is decided when the request arrives, then delayed: a probe in
    flight when the host changes reports what the host was when it asked."""

    def __init__(self) -> None:
        self.port = free_port()
        self.status = 200
        self.delay = 0.0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        status, delay = self.status, self.delay
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status)

    async def __aenter__(self) -> SnapshotHTTP:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port, reuse_address=True).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def test_a_sibling_in_flight_when_the_host_changed_looks_again_when_it_answers() -> None:
    """Two ClusterEndpoints share an HTTP host, the same probe: one checked every second (timeout 1 s), one
    every 60 s (timeout 5 s). The host hangs for 3 s and then fails: the fast check times out and flips,
    and sweeps while the slow check's probe is in flight; that probe then gets an answer from before the
    change (200). It must run again at once and go down, not stay published ready until its slot a
    minute later (the sweep skipped siblings in flight, and the memo blocked any later sweep)."""
    transitions: list[Transition] = []
    scheduler = Scheduler(transitions.append, first_window=0.1)
    fast, slow = CheckKey("ns/fast", "p", HOST), CheckKey("ns/slow", "p", HOST)
    async with SnapshotHTTP() as server:
        server.delay = 3.0
        scheduler.upsert(Check(fast, HTTPProbe(), server.port, timing(1)), initial=True)
        scheduler.upsert(Check(slow, HTTPProbe(), server.port, timing(60, timeout=5)), initial=True)
        scheduler.start()
        try:
            await eventually(lambda: scheduler.state(slow).in_flight, message="the slow probe is in flight")  # type: ignore[union-attr]
            await eventually(lambda: healthy(scheduler, fast) is False, timeout=5, message="fast timed out: flipped")
            assert scheduler.state(slow).in_flight and scheduler.state(slow).runs == 0  # type: ignore[union-attr]
            server.status, server.delay = 500, 0.0
            await eventually(lambda: scheduler.state(slow).runs >= 1, timeout=5,  # type: ignore[union-attr]
                             message="the slow probe answered (200, from before the change)")
            await eventually(lambda: healthy(scheduler, slow) is False, timeout=5,
                             message="the slow check runs again at once and goes down")
            assert scheduler.state(slow).runs == 2  # type: ignore[union-attr]
        finally:
            await scheduler.stop()


# --- 3. initialDelaySeconds ----------------------------------------------------------------------------


async def test_a_sweep_leaves_a_check_in_its_initial_delay_alone() -> None:
    """A check adopted not ready (initial=False: after a restart, or a new address of a ClusterEndpoint whose
    status says the port is not ready) with initialDelaySeconds: 30 must not be probed for 30 s: "an initial
    delay means 'not ready until then' (kubelet)" (sources/clusterendpoint.py). A sibling on the same
    address:port comes up; the sweep ran the delayed check at once and it was published ready ~0.1 s in.
    A check that has not had its first run keeps its schedule."""
    transitions: list[Transition] = []
    scheduler = Scheduler(transitions.append, first_window=0.1)
    a, b = CheckKey("ns/a", "p", HOST), CheckKey("ns/b", "p", HOST)
    async with TCPBackend() as tcp:
        scheduler.upsert(Check(a, TCPProbe(), tcp.port, timing(10)), initial=False)
        scheduler.upsert(Check(b, TCPProbe(), tcp.port, timing(10, delay=30)), initial=False)
        began = time.monotonic()
        scheduler.start()
        try:
            await eventually(lambda: healthy(scheduler, a), message="a up")
            # give b a moment to be (wrongly) probed: wait for it, or for 2 s
            await eventually(lambda: scheduler.state(b).runs > 0 or time.monotonic() - began > 2.0, timeout=5)  # type: ignore[union-attr]
            elapsed = time.monotonic() - began
            assert scheduler.state(b).runs == 0, (elapsed, [(t.key.target, t.healthy) for t in transitions])  # type: ignore[union-attr]
            assert healthy(scheduler, b) is False
        finally:
            await scheduler.stop()


# --- 4. pacing: a flapping backlog ---------------------------------------------------------------------


async def test_a_flapping_api_backlog_keeps_the_documented_share() -> None:
    """100 checks at 0.5 s (demand 200/s) run at demand; then API writes queue in every other 100 ms
    window. While they queue probing keeps a quarter of what the engine runs (50/s); the cap was once
    taken from the probes started in windows without a backlog, each of which still ran at the cut rate,
    and it ratcheted down to the 20/s floor within a second."""
    transitions: list[Transition] = []
    flapping = [False]
    toggle = itertools.cycle([True, False])
    scheduler = Scheduler(transitions.append, period_override=0.5, first_window=0.5,
                          api_backlog=lambda: next(toggle) if flapping[0] else False)
    rates: list[float] = []

    def sample() -> bool:
        rates.append(scheduler.admission.rate)
        return len(rates) >= 150  # three seconds of samples, 20 ms apart

    async with TCPBackend() as tcp:
        for i in range(100):
            scheduler.upsert(Check(CheckKey(f"ns/t{i}", "p", HOST), TCPProbe(), tcp.port))
        scheduler.start()
        try:
            await eventually(lambda: len(transitions) == 100, message="all decided")
            assert scheduler.stretch.factor == 1.0
            flapping[0] = True
            await eventually(sample, timeout=20, interval=0.02, message="three seconds of a flapping backlog")
            assert min(rates[50:]) >= 0.8 * 0.25 * scheduler.demand, [round(r) for r in rates[::10]]
            assert min(rates) < scheduler.demand  # it did yield
        finally:
            await scheduler.stop()


# --- 5. --max-probe-rate -------------------------------------------------------------------------------


class Launches:
    """ProbeMetrics that timestamps every launch (``lateness`` is called once per probe started)."""

    def __init__(self) -> None:
        self.at: list[float] = []

    def lateness(self, seconds: float) -> None:
        self.at.append(time.monotonic())

    def observe(self, kind: str, ok: bool, duration: float) -> None: ...
    def inconclusive(self, kind: str) -> None: ...
    def in_flight(self, count: int) -> None: ...
    def pacing(self, stretch: float, admitted_per_second: float, loop_lag: float) -> None: ...


async def test_max_probe_rate_caps_the_early_lane_too() -> None:
    """``--max-probe-rate`` is documented as "probes started per second at most, to bound the traffic to
    external hosts" (README, cli.py). A host behind 60 ClusterEndpoints (60 s period) and one 1 s check
    dies, with --max-probe-rate 20: the 1 s check flips and the sweep runs the other 60 early, but within
    the cap (the early lane's own 2,000/s budget once started all 60 in 15 ms)."""
    launches = Launches()
    scheduler = Scheduler(lambda t: None, metrics=launches, first_window=0.1, max_rate=20)
    fast = CheckKey("ns/fast", "p", HOST)
    slow = [CheckKey(f"ns/slow{i}", "p", HOST) for i in range(60)]
    async with TCPBackend() as tcp:
        scheduler.upsert(Check(fast, TCPProbe(), tcp.port, timing(1)), initial=True)
        for key in slow:
            scheduler.upsert(Check(key, TCPProbe(), tcp.port, timing(60)), initial=True)
        scheduler.start()
        try:
            await eventually(lambda: all(scheduler.state(k).runs for k in slow), timeout=15,  # type: ignore[union-attr]
                             message="every check ran once (at 20/s)")
            await tcp.set_mode("closed")
            await eventually(lambda: healthy(scheduler, fast) is False, timeout=5, message="fast flipped")
            flipped = time.monotonic()
            await eventually(lambda: time.monotonic() - flipped > 1.0
                             or all(healthy(scheduler, k) is False for k in slow), timeout=5)
            window = [t for t in launches.at if flipped - 0.05 <= t <= flipped + 1.0]
            assert len(window) <= 2 * 20, (len(window), round(window[-1] - window[0], 3))  # 20/s, plus a burst
        finally:
            await scheduler.stop()
