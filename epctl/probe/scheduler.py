"""One scheduler for every check: even spread, no drift, bounded concurrency, hysteresis.

- A check is keyed by (target, port, address). :meth:`Scheduler.upsert` adds or changes one while
  running; an upsert that does not change the check keeps its state and schedule, one that does
  (new probe, new timing) keeps the current health but restarts the threshold counters, so an edit
  never flaps a healthy host to not-ready on its own.
- Each check owns a fixed phase inside its period, derived from a hash of its key (deterministic
  across restarts and processes): 10,000 checks with a 10 s period run ~1,000 a second, not in
  bursts. The first run comes early (within ``first_window`` seconds, after initialDelaySeconds)
  so a new host is decided quickly; after that the check snaps to its slot and every next run is
  planned from the schedule (``due + period``), never from when the last probe finished.
- At most ``max_concurrent`` probes are in flight. Every prober enforces its own timeout (each
  has a test proving it never overruns by more than a few ms), so a probe cannot hold a slot.
- Launches are paced (pacing.py): one wake-up per tick starts the admitted due checks, at a rate
  that keeps the event loop's measured lag low so API work never waits behind probes; when demand
  exceeds that rate every check's period is stretched by the same factor (fair, bounded lateness).
- Truth first: a timed-out probe whose deadline the loop noticed late is *inconclusive* (counted as
  such, not fed to the thresholds); the next run is its retry. One rule for every prober.
- TCP, HTTP and UDP probes run on event-loop callbacks (epctl/probe/callback.py: a socket, an fd
  watcher and a timer handle, no Task per probe) and report to :meth:`Scheduler._finish`; gRPC and
  database probes (kept channels and sessions, client libraries with coroutine APIs) run as one
  Task each and report to the same method. The in-flight gauge is set once per tick, not per probe.
- A stretch degrades freshness, not detection. A check whose last result started a streak against
  its verdict (a healthy host's first failure, with failureThreshold > 1) runs its confirming probe
  one *spec* period after the last, in a lane ahead of the stretched schedule; and when a check's
  verdict changes, every sibling (another check of the same probe, address and port, still on the
  old verdict; siblings.py) runs next at once, in that lane. Each check still counts its own results at
  the spec's period. So a host shared by 1,000 ClusterEndpoints is published down for all of them
  about failureThreshold spec periods after the first one noticed, however far the schedule is
  stretched. An early run replaces the check's next scheduled one; the run after it is back on the
  check's own slot. A check's first run goes the same way (it decides what is published: a cold
  start's decisions are not held back by a stretch, nor by the yield to the writes they cause).
- Only threshold transitions leave the scheduler (``on_transition``); every result feeds metrics.
- Role probes expecting a primary are arbitrated per port (roles.arbitrate): a host outranked by
  another claimant is vetoed at once, whatever the thresholds say, so two disagreeing primaries are
  never ready together. A veto of a host already not ready is announced as a Transition with
  ``previous`` equal to ``healthy`` (a new reason, not a new state).
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from epctl.api.spec import DatabaseProbe, Expect, GRPCProbe, HTTPProbe, Probe, ProbeKind, ProbeTiming, UDPProbe
from epctl.probe.callback import SocketProbe
from epctl.probe.database import DatabaseProber
from epctl.probe.grpc import GRPCProber
from epctl.probe.http import start_http
from epctl.probe.pacing import Admission, Stretch, timeout_was_seen_late
from epctl.probe.result import ProbeResult
from epctl.probe.roles import PRIMARY, arbitrate
from epctl.probe.siblings import HostIndex, SweepMemo
from epctl.probe.state import CheckState
from epctl.probe.tcp import start_tcp
from epctl.probe.udp import start_udp
from epctl.tasks import cancel_and_wait, ensure_running

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, order=True)
class CheckKey:
    target: str
    port: str
    address: str

    def __str__(self) -> str:
        return f"{self.target}/{self.port}/{self.address}"


@dataclass(frozen=True, slots=True)
class Check:
    """What to probe: ``probe`` against ``address:port`` with ``timing``."""

    key: CheckKey
    probe: Probe
    port: int
    timing: ProbeTiming = field(default_factory=ProbeTiming)


@dataclass(frozen=True)
class Transition:
    key: CheckKey
    healthy: bool
    reason: str
    at: float  # wall-clock seconds (time.time())
    duration: float
    previous: bool | None = None  # None: the first decision; == healthy: the same state, a new reason (a veto)


class ProbeMetrics(Protocol):
    def observe(self, kind: str, ok: bool, duration: float) -> None: ...
    def inconclusive(self, kind: str) -> None: ...
    def lateness(self, seconds: float) -> None: ...
    def in_flight(self, count: int) -> None: ...
    def pacing(self, stretch: float, admitted_per_second: float, loop_lag: float) -> None: ...


class TargetMetrics(Protocol):
    def result(self, target: str, port: str, address: str, ok: bool, duration: float) -> None: ...
    def forget(self, target: str, port: str, address: str) -> None: ...


@dataclass(slots=True, kw_only=True)
class _Entry(CheckState):
    """A check, its schedule, and its threshold state: the entry *is* the check's CheckState (one
    object per check instead of two; what ``Scheduler.state`` returns, and callers may adjust)."""

    check: Check
    phase: float
    generation: int
    first: bool = True
    in_flight: bool = False
    last: tuple[bool, str, float, bool] | None = None  # the last ProbeResult's fields (keep_last)
    claim: int | None = None  # role probes: the generation of the host's last "I am primary" answer


def _arbitrated(probe: Probe) -> bool:
    """Checks whose hosts compete for one role: at most one of them may be published (roles.arbitrate)."""
    return isinstance(probe, DatabaseProbe) and probe.expect is Expect.PRIMARY


def phase_fraction(key: CheckKey) -> float:
    """A stable pseudo-random number in [0, 1) for a key: the check's slot within its period."""
    digest = hashlib.blake2b(str(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def next_slot(after: float, phase: float, period: float) -> float:
    """The first time ``phase + k * period`` that is at or after ``after``."""
    k = -(-(after - phase) // period)  # ceil division
    return phase + k * period


TICK = 0.01  # seconds between launches while checks wait for admission
LAG_WINDOW = 0.1  # admission adjusts once per window; the loop is looked at at least this often
# admitted probes saved up at most for this long: a tick that runs late launches two ticks' worth, not
# a window's (probes launched together complete together, in one loop iteration: a window's worth at
# 4,000/s was a 40 ms iteration, which the lag measurement then read as overload)
BURST = 2 * TICK
# Runs moved early (confirmations, a changed host's siblings) may also draw on a budget of their own, so a
# change is confirmed promptly even while admission is cut (a loop lagging under a CPU quota admitted ~150
# probes/s, and a host shared by 1,000 ClusterEndpoints took 7 s to flip for all of them). At ~70 us a probe
# this is at most ~14 % of a core, and only while changes are being confirmed.
EARLY_RATE = 2000.0
STRETCH_WINDOW = 1.0  # the stretch factor is re-estimated once per window
DELAYED_ON, DELAYED_OFF = 2.0, 1.5  # "ProbesDelayed" above 2x the spec's period, cleared below 1.5x ...
DELAYED_SUSTAIN_ON, DELAYED_SUSTAIN_OFF = 30.0, 60.0  # ... once that has held for this many seconds


class Scheduler:
    def __init__(self, on_transition: Callable[[Transition], None], *, max_concurrent: int = 1000,
                 metrics: ProbeMetrics | None = None, grpc_prober: GRPCProber | None = None,
                 database_prober: DatabaseProber | None = None,
                 first_window: float = 1.0, period_override: float | None = None,
                 target_metrics: TargetMetrics | None = None, max_rate: float | None = None,
                 on_delayed: Callable[[bool], None] | None = None,
                 api_backlog: Callable[[], bool] | None = None, keep_last: bool = False) -> None:
        self.on_transition = on_transition
        # keep each check's last result for last_result() (`epctl check` prints it); off in the controller,
        # where it was a tuple and a float per check that nothing read
        self.keep_last = keep_last
        self.max_concurrent = max_concurrent
        self.metrics = metrics
        self.target_metrics = target_metrics
        self.grpc = grpc_prober or GRPCProber()
        self.database = database_prober or DatabaseProber()
        self.first_window = first_window
        self.period_override = period_override
        self.on_delayed = on_delayed
        self.api_backlog = api_backlog  # True while API writes queue: admission yields to them
        self._entries: dict[CheckKey, _Entry] = {}
        # target -> its checks (a dict as an ordered set: a third of a set's size at 10 keys)
        self._by_target: dict[str, dict[CheckKey, None]] = {}
        self._news: set[CheckKey] = set()  # vetoed while already not ready: a transition says why
        # (due, generation): atomic values only, so the collector untracks them (30,000 queued entries
        # holding a CheckKey each made every full collection walk them; docs/design.md section 6)
        self._heap: list[tuple[float, int]] = []
        self._queued: dict[int, _Entry] = {}  # generation -> entry, for the heap
        # (real due, generation): runs moved early, confirmations of a streak under way and siblings of a host
        # that changed; launched before anything in the heap (docs/design.md section 6, "degrade freshness,
        # never truth")
        self._early: list[tuple[float, int]] = []
        self._hosts: HostIndex[CheckKey] = HostIndex()  # address -> its checks (siblings.py)
        self._sweeps = SweepMemo()
        # swept siblings whose probe was in flight at the sweep: their answer may predate the change
        self._stale: set[CheckKey] = set()
        self._generation = itertools.count(1)
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[int, SocketProbe] = {}  # generation -> its callback probe in flight
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatching = False  # inside _dispatch_due: results answered at once are deferred
        self._wakeup = asyncio.Event()
        self.progress = asyncio.Event()  # set after every recorded result; waiters clear it
        self._timer: asyncio.TimerHandle | None = None
        self._runner: asyncio.Task[None] | None = None
        # pacing (see pacing.py): admission by measured loop lag, period stretch by demand/achieved
        self.admission = Admission(max_rate=max_rate or Admission.max_rate, rate=max_rate or Admission.rate)
        self.stretch = Stretch()
        # Schedules live on a *virtual* clock that runs 1/stretch as fast as the real one, so a change of
        # the stretch factor rescales every check's schedule at once, fairly, with no re-queueing.
        self._vbase = self._vbase_real = time.monotonic()
        self.delayed = False  # stretch above DELAYED_ON (with hysteresis and a sustain time)
        self._delayed_pending: float | None = None  # since when the other state has been wanted
        self.delayed_sustain = (DELAYED_SUSTAIN_ON, DELAYED_SUSTAIN_OFF)
        self._demand = 0.0  # probes per second the checks ask for at their spec periods
        self._tokens = 0.0
        self._early_tokens = 0.0  # the early lane's own budget (EARLY_RATE), used once admission's is spent
        # none under --max-probe-rate: that is an absolute bound on traffic to the hosts
        self._early_rate = 0.0 if max_rate else EARLY_RATE
        self._refilled = 0.0
        self._expected_at: float | None = None  # when the run loop asked to be woken (for loop lag)
        self._slept_cpu = 0.0  # the loop thread's CPU time when it last went to sleep (busy lag, below)
        self._lag_window = (0.0, 0.0)  # (window start, worst busy lag)
        self._stretch_since = 0.0
        self._window = (0, 0, 0)  # (ticks, ticks that left due checks waiting, launches) in the stretch window
        self._worst_lag = 0.0  # in the current stretch window (exported)
        self._yielded = False  # admission yielded to queued API writes in the current stretch window

    # --- configuration --------------------------------------------------------------------------

    def _vnow(self, now: float) -> float:
        """The virtual time at real time ``now`` (equal to it while nothing was ever stretched)."""
        return self._vbase + (now - self._vbase_real) / self.stretch.factor

    def _period(self, check: Check) -> float:
        return self.period_override or float(check.timing.period_seconds)

    def upsert(self, check: Check, initial: bool | None = None) -> None:
        """Add or update a check. ``initial`` seeds its health (adopted from published conditions).

        The first run of a new check comes within ``first_window`` at a slot chosen by its *target*
        (plus a sliver per address): the checks of one ClusterEndpoint run together, so at a cold
        start under load each ClusterEndpoint is decided, and published, as soon as its own checks
        ran, not after the whole fleet."""
        entry = self._entries.get(check.key)
        if entry is not None and entry.check == check:
            return
        timing = check.timing
        generation = next(self._generation)
        if entry is None:
            healthy = initial
            delay = float(timing.initial_delay_seconds)
        else:
            self._demand -= 1.0 / self._period(entry.check)
            healthy = entry.healthy
            delay = 0.0
        period = self._period(check)
        self._demand += 1.0 / period
        if entry is not None:
            del self._queued[entry.generation]
        entry = _Entry(timing.success_threshold, timing.failure_threshold, healthy=healthy, check=check,
                       phase=phase_fraction(check.key) * period, generation=generation)
        self._entries[check.key] = entry
        self._queued[generation] = entry
        self._by_target.setdefault(check.key.target, {})[check.key] = None
        self._hosts.add(check.key.address, check.key)
        window = min(period, self.first_window)
        slot = phase_fraction(CheckKey(check.key.target, "", "")) * 0.98 + phase_fraction(check.key) * 0.02
        # in the early lane, on real time: a first run decides what is published (a stretch or a yield to
        # queued writes must not hold a cold start's decisions back), and its initial delay is real seconds
        self._run_at(entry, time.monotonic() + delay + slot * window)

    def remove(self, key: CheckKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            del self._queued[entry.generation]
        keys = self._by_target.get(key.target)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self._by_target[key.target]
        self._hosts.remove(key.address, key)
        self._stale.discard(key)
        if entry is not None:
            self._demand = max(0.0, self._demand - 1.0 / self._period(entry.check))
        if entry is not None and self.target_metrics:
            self.target_metrics.forget(key.target, key.port, key.address)
        if entry is not None and entry.check.probe.kind is ProbeKind.GRPC:
            self._forget_grpc(key.address, entry.check.port)
        self._news.discard(key)
        if entry is not None and isinstance(entry.check.probe, DatabaseProbe):
            self._spawn(self.database.forget(str(key), entry.check.port))
            if _arbitrated(entry.check.probe) and entry.claim is not None:
                self._emit(self._arbitrate(key, {}))  # a claimant left: the others may be decided now

    def remove_target(self, target: str) -> None:
        for key in self.keys_of(target):
            self.remove(key)

    def _forget_grpc(self, address: str, port: int) -> None:
        if any(e.check.probe.kind is ProbeKind.GRPC and e.check.key.address == address and e.check.port == port
               for e in self._entries.values()):
            return
        self._spawn(self.grpc.forget(address, port))

    def state(self, key: CheckKey) -> CheckState | None:
        entry = self._entries.get(key)
        return entry

    def last_result(self, key: CheckKey) -> ProbeResult | None:
        """The check's last result (None before the first, and always unless built with ``keep_last``)."""
        entry = self._entries.get(key)
        return ProbeResult(*entry.last) if entry and entry.last else None

    def keys(self) -> list[CheckKey]:
        return list(self._entries)

    def keys_of(self, target: str) -> list[CheckKey]:
        """The checks of one target (indexed: thousands of targets each re-planned must not scan all)."""
        return list(self._by_target.get(target, ()))

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def demand(self) -> float:
        """Probes per second the checks ask for at their spec periods."""
        return self._demand

    # --- running ----------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        self._runner = ensure_running(self._runner, self.run, "probe-scheduler")
        return self._runner

    async def stop(self) -> None:
        """Stop scheduling, cancel probes in flight, close kept gRPC channels."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await cancel_and_wait(self._runner)
        self._runner = None
        running, self._running = self._running, {}
        handed_over = [t for t in (getattr(p, "task", None) for p in running.values()) if t is not None]
        for generation, probe in running.items():
            probe.cancel()  # closes its socket (and cancels an HTTPS/redirect Task); nothing is reported
            self._in_flight -= 1
            entry = self._queued.get(generation)
            if entry is not None:
                entry.in_flight = False
        for task in list(self._tasks):
            task.cancel()
        if self._tasks or handed_over:
            await asyncio.gather(*self._tasks, *handed_over, return_exceptions=True)
        await self.grpc.close()
        await self.database.close()

    def _push(self, due: float, entry: _Entry) -> None:
        first = not self._heap or due < self._heap[0][0]
        heapq.heappush(self._heap, (due, entry.generation))
        if first:
            self._wakeup.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _dispatch_due(self, now: float) -> tuple[int, bool]:
        """Launch due checks as far as admission (tokens) and the in-flight bound allow.
        Returns (launched, due checks still waiting)."""
        self._dispatching = True
        try:
            return self._launch_due(now)
        finally:
            self._dispatching = False

    def _launch_due(self, now: float) -> tuple[int, bool]:
        """Returns (regular runs launched, due runs left waiting). Early runs are not counted: the stretch
        measures the capacity the regular schedule got."""
        launched = 0
        vnow = self._vnow(now)
        early = self._early
        while early and early[0][0] <= now:  # first: their results may change where traffic goes
            if self._in_flight >= self.max_concurrent or (self._tokens < 1.0 and self._early_tokens < 1.0):
                return launched, True
            due, generation = heapq.heappop(early)
            entry = self._queued.get(generation)
            if entry is None:
                continue  # removed or replaced since it was queued
            if self._early_tokens >= 1.0:  # its own budget first: the stretched schedule keeps admission's
                self._early_tokens -= 1.0
            else:
                self._tokens -= 1.0
            entry.first = False
            period = self._period(entry.check)
            # back on its own slot, at least half a spec period from now: a confirmation one spec period after an
            # on-schedule run is itself on the slot, and the next run is then exactly one period later
            self._push(next_slot(vnow + period / (2 * self.stretch.factor), entry.phase, period), entry)
            self._launch(entry, now - due)
        heap = self._heap
        while heap and heap[0][0] <= vnow:
            if self._in_flight >= self.max_concurrent or self._tokens < 1.0:
                return launched, True
            due, generation = heapq.heappop(heap)
            entry = self._queued.get(generation)
            if entry is None:
                continue  # removed, replaced or moved early since it was queued
            self._tokens -= 1.0
            launched += 1
            self._push(self._next_run(entry, due, vnow), entry)
            self._launch(entry, (vnow - due) * self.stretch.factor)
        return launched, False

    def _run_early(self, entry: _Entry, at: float) -> None:
        """Run ``entry`` next at real time ``at``, ahead of the (stretched) schedule: its result may change
        what is published. Its queued regular run is dropped (a new generation): a run moved, not added."""
        del self._queued[entry.generation]
        entry.generation = next(self._generation)
        self._queued[entry.generation] = entry
        self._run_at(entry, at)

    def _run_at(self, entry: _Entry, at: float) -> None:
        """Queue ``entry``'s current generation in the early lane at real time ``at``."""
        first = not self._early or at < self._early[0][0]
        heapq.heappush(self._early, (at, entry.generation))
        if first:
            self._wakeup.set()

    def _sweep(self, origin: _Entry, was: bool, now: float) -> None:
        """``origin``'s verdict just changed from ``was``: every sibling (the same probe of the same address
        and port) still on ``was`` and not already confirming a streak runs at once; one in flight runs
        again as soon as it answers, unless that answer already starts a streak. A check that has not had
        its first run keeps its schedule (its initialDelaySeconds: not ready until then)."""
        check = origin.check
        for sibling in self._hosts.of(check.key.address):
            entry = self._entries.get(sibling)
            if (entry is None or entry is origin or entry.passing is not was or entry.pending or entry.first
                    or entry.check.port != check.port or entry.check.probe != check.probe):
                continue
            if entry.in_flight:
                self._stale.add(sibling)
            else:
                self._run_early(entry, now)

    def _fire(self) -> None:
        self._timer = None
        self._wakeup.set()

    async def run(self) -> None:
        """One wake-up per tick launches every admitted due check (no timer or wake-up per probe).

        Each wake-up measures loop lag (how late it runs against the time it asked for): the
        signal admission and the inconclusive rule are built on."""
        loop = self._loop = asyncio.get_running_loop()
        now = time.monotonic()
        self._refilled = now
        self._lag_window = (now, 0.0)
        self._stretch_since, self._window = now, (0, 0, 0)
        while True:
            now = time.monotonic()
            lag = max(0.0, now - self._expected_at) if self._expected_at is not None else 0.0
            # Of that lateness, only what the loop thread spent running can be work on the loop (probes
            # among it); the rest it was not running at all: a CFS quota's throttling, or another process
            # on the core. Admission steers by the busy part: cutting probes cannot shorten time the
            # thread was not given (under a 0.5-CPU quota every write burst cut admission to its floor,
            # 20 probes/s, and the stretch that followed reached 20x).
            busy_lag = min(lag, time.thread_time() - self._slept_cpu)
            rate = self.admission.rate
            self._tokens = min(self._tokens + (now - self._refilled) * rate, max(1.0, rate * BURST))
            self._early_tokens = min(self._early_tokens + (now - self._refilled) * self._early_rate,
                                     self._early_rate * BURST)
            self._refilled = now
            launched, waiting = self._dispatch_due(now)
            if self.metrics:  # once per tick, not per probe
                self.metrics.in_flight(self._in_flight)
            self._account(now, lag, busy_lag, launched, waiting)
            self._wakeup.clear()
            if waiting:
                wake = now + TICK
            elif self._heap or self._early:  # at most one wake-up per tick: checks due within it start together
                due_in = min((self._heap[0][0] - self._vnow(now)) * self.stretch.factor if self._heap else LAG_WINDOW,
                             self._early[0][0] - now if self._early else LAG_WINDOW)
                wake = now + max(TICK, min(due_in, LAG_WINDOW))
            else:
                wake = None  # idle: an upsert wakes us
            self._expected_at = wake
            if wake is not None:
                self._timer = loop.call_later(max(0.0, wake - now), self._fire)
            self._slept_cpu = time.thread_time()
            try:
                await self._wakeup.wait()
            finally:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            if self._expected_at is not None and time.monotonic() < self._expected_at:
                self._expected_at = None  # woken early by an upsert: no lag sample this time

    def _account(self, now: float, lag: float, busy_lag: float, launched: int, waiting: bool) -> None:
        """Feed the pacing loops: admission (by ``busy_lag``) once per LAG_WINDOW, stretch once per
        STRETCH_WINDOW; ``lag`` (all of it) is what the loop-lag metric shows."""
        started, worst = self._lag_window
        worst = max(worst, busy_lag)
        if now - started >= LAG_WINDOW:
            backlog = self.api_backlog() if self.api_backlog else False
            self._yielded = self._yielded or backlog
            self.admission.update(worst, self._demand, backlog, self.stretch.factor)
            started, worst = now, 0.0
        self._lag_window = (started, worst)
        since = self._stretch_since
        self._worst_lag = max(self._worst_lag, lag)
        ticks, waiting_ticks, launches = self._window
        self._window = (ticks + 1, waiting_ticks + waiting, launches + launched)
        if now - since >= STRETCH_WINDOW:
            before = self.stretch.factor
            ticks, waiting_ticks, launches = self._window
            # a window in which probing yielded to queued API writes measured the yield, not the engine: the
            # factor holds (a write burst once stretched every period 20-80x, and relaxing that took a minute)
            capacity = launches / (now - since) if ticks and waiting_ticks == ticks and not self._yielded else None
            self._yielded = False
            self._vbase, self._vbase_real = self._vnow(now), now  # rebase before the clock rate changes
            factor = self.stretch.update(self._demand, capacity, waiting_ticks > 0)
            if self.metrics:
                self.metrics.pacing(factor, self.admission.rate, self._worst_lag)
            self._report_stretch(before, factor)
            self._stretch_since, self._window, self._worst_lag = now, (0, 0, 0), 0.0

    def _report_stretch(self, before: float, factor: float) -> None:
        if before == 1.0 and factor > 1.0:
            log.warning("probes delayed: stretching every check's period", extra={
                "stretch": round(factor, 2), "demand_per_s": round(self._demand), "admitted_per_s":
                round(self.admission.rate)})
        elif before > 1.0 and factor == 1.0:
            log.info("probes back on schedule", extra={"demand_per_s": round(self._demand)})
        # ProbesDelayed is written to every ClusterEndpoint: only a sustained state changes it, not a
        # factor hovering around the mark
        wanted = factor > DELAYED_ON or (self.delayed and factor >= DELAYED_OFF)
        now = time.monotonic()
        if wanted == self.delayed:
            self._delayed_pending = None
            return
        if self._delayed_pending is None:
            self._delayed_pending = now
        if now - self._delayed_pending >= self.delayed_sustain[0 if wanted else 1]:
            self._delayed_pending = None
            delayed = wanted
            self.delayed = delayed
            if self.on_delayed is not None:
                try:
                    self.on_delayed(delayed)
                except Exception:
                    log.exception("probes-delayed consumer failed")

    def _next_run(self, entry: _Entry, due: float, vnow: float) -> float:
        """The virtual time of ``entry``'s next regular run, its current one due at ``due`` (it is ``vnow``).
        (A first run is an early one: it never comes through here.)"""
        period = self._period(entry.check)
        nxt = due + period  # planned from the schedule: no drift
        if nxt <= vnow:  # a whole period behind: skip the missed run, keep lateness bounded
            nxt = vnow + period
        return nxt

    def _launch(self, entry: _Entry, lateness: float) -> None:
        """Start ``entry``'s probe (its next run is queued already), ``lateness`` real seconds after its due time."""
        if entry.in_flight:
            return  # still running from last period (cannot happen when timeout <= period)
        entry.in_flight = True
        self._in_flight += 1
        if self.metrics:
            self.metrics.lateness(lateness)
        check, generation = entry.check, entry.generation
        kind = check.probe.kind
        if kind is ProbeKind.TCP or kind is ProbeKind.HTTP or kind is ProbeKind.UDP:
            self._start(entry, generation)
            return
        task = asyncio.get_running_loop().create_task(self._run_one(entry, generation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start(self, entry: _Entry, generation: int) -> None:
        """Start a callback probe (TCP, HTTP, UDP): no Task; its result comes back to :meth:`_finish`."""
        check = entry.check
        probe, address, port = check.probe, check.key.address, check.port
        timeout = float(check.timing.timeout_seconds)
        loop = self._loop or asyncio.get_running_loop()
        done = partial(self._finish, entry, generation)
        start = time.perf_counter()
        try:
            if isinstance(probe, HTTPProbe):
                running = start_http(loop, address, port, timeout, probe, done)
            elif isinstance(probe, UDPProbe):
                running = start_udp(loop, address, port, timeout, probe.data, done)
            else:
                running = start_tcp(loop, address, port, timeout, done)
        except Exception as err:  # a prober bug is a failed probe, never a dead scheduler
            log.exception("prober raised", extra={"check": str(check.key)})
            if entry.in_flight:
                self._finish(entry, generation, ProbeResult(False, f"probe error: {type(err).__name__}",
                                                            time.perf_counter() - start))
            return
        if running.done is not None:  # not answered synchronously: still in flight
            self._running[generation] = running

    async def _run_one(self, entry: _Entry, generation: int) -> None:
        """A gRPC or database probe, as a Task (their clients are coroutines)."""
        try:
            result = await self._probe(entry.check)
        except BaseException:
            entry.in_flight = False
            self._in_flight -= 1
            raise
        self._finish(entry, generation, result)

    def _finish(self, entry: _Entry, generation: int, result: ProbeResult) -> None:
        """Every probe's result, whichever way it ran: thresholds, arbitration, metrics."""
        if self._dispatching:  # answered at once (refused on the spot): consumers never run inside a dispatch
            (self._loop or asyncio.get_running_loop()).call_soon(self._finish, entry, generation, result)
            return
        entry.in_flight = False
        self._in_flight -= 1
        self._running.pop(generation, None)
        check = entry.check
        kind = check.probe.kind.short
        if result.timed_out and timeout_was_seen_late(result.duration, float(check.timing.timeout_seconds)):
            # the loop noticed the deadline late: an answer may be sitting unread behind it. Says nothing
            # about the host: not counted, the next run (next period) is the retry.
            if self.metrics:
                self.metrics.inconclusive(kind)
            return
        if self.metrics:
            self.metrics.observe(kind, result.ok, result.duration)
        if self._entries.get(check.key) is not entry or entry.generation != generation:
            return  # the check changed or went away while this probe ran: its result is moot
        if self.keep_last:
            entry.last = (result.ok, result.reason, result.duration, result.timed_out)  # atomic: untracked
        self.progress.set()
        if self.target_metrics:
            self.target_metrics.result(check.key.target, check.key.port, check.key.address, result.ok,
                                       result.duration)
        arbitrated = _arbitrated(check.probe)
        if arbitrated:
            if result.role:  # an answer (not a failure to get one) replaces the host's claim
                entry.claim = result.generation if result.role == PRIMARY else None
            before = {k: self._entries[k].healthy for k in self._siblings(check.key)}
        else:
            before = {check.key: entry.healthy}
        was = entry.passing
        changed = entry.record(result.ok, result.reason)
        # before the consumers, who may replace the check
        now = time.monotonic()
        stale = bool(self._stale) and check.key in self._stale
        if stale:
            self._stale.discard(check.key)
        if entry.pending:  # confirm one spec period after this run started, however stretched the schedule
            self._run_early(entry, now - result.duration + self._period(check))
        elif stale and entry.passing is was:  # swept while in flight: its answer may predate the change
            self._run_early(entry, now)
        flipped = was is not None and entry.passing is not None and entry.passing is not was
        if flipped or self._sweeps:
            host = (check.key.address, check.port, check.probe)
            self._sweeps.saw(host, result.ok, now)  # an answer against a sweep ends it: the next change sweeps
            if flipped and self._sweeps.first(host, bool(entry.passing), now):
                self._sweep(entry, bool(was), now)
        if arbitrated:
            self._emit(self._arbitrate(check.key, before), check.key, result)
        elif changed:
            self._emit(before, check.key, result)

    def _siblings(self, key: CheckKey) -> list[CheckKey]:
        """The arbitrated checks of ``key``'s port (``key`` included while it exists)."""
        return [k for k in self.keys_of(key.target)
                if k.port == key.port and _arbitrated(self._entries[k].check.probe)]

    def _arbitrate(self, key: CheckKey, before: dict[CheckKey, bool | None]) -> dict[CheckKey, bool | None]:
        """Apply roles.arbitrate to ``key``'s port; returns every check whose published health may have
        changed, with its health before (``before``, else its health now)."""
        siblings = [self._entries[k] for k in self._siblings(key)]
        previous = {e.check.key: before.get(e.check.key, e.healthy) for e in siblings}
        vetoes = arbitrate({e.check.key.address: e.claim for e in siblings
                            if e.passing and e.claim is not None})
        for e in siblings:
            veto = vetoes.get(e.check.key.address, "")
            if veto != e.vetoed:
                lifted = bool(e.vetoed) and not veto
                e.veto(veto)
                if lifted and e.passing:
                    e.reason = "primary: no other ready host claims it any more"
                elif e.healthy is False and previous[e.check.key] is False:
                    self._news.add(e.check.key)  # not ready before either: still say why, now
        return previous

    def _emit(self, previous: dict[CheckKey, bool | None], origin: CheckKey | None = None,
              result: ProbeResult | None = None) -> None:
        """A Transition for every check in ``previous`` whose published health differs from it;
        ``result`` is what ``origin`` just answered (the others changed because of it)."""
        # not-ready first: consumers never hold two ready primaries, not even between two calls
        for key, before in sorted(previous.items(), key=lambda kv: bool(self._entries.get(kv[0]) and
                                                                        self._entries[kv[0]].healthy)):
            entry = self._entries.get(key)
            news = key in self._news
            self._news.discard(key)
            if entry is None or entry.healthy is None or (entry.healthy == before and not news):
                continue
            own = result is not None and key == origin
            why = entry.vetoed or (result.reason if own and result else entry.reason)
            duration = result.duration if own and result else 0.0
            try:
                self.on_transition(Transition(key, entry.healthy, why, time.time(), duration, before))
            except Exception:  # a broken consumer must not stop probing
                log.exception("transition consumer failed", extra={"check": str(key)})

    async def _probe(self, check: Check) -> ProbeResult:
        """Run one gRPC or database probe. Each prober enforces its own timeout (tested), so no second
        timer here."""
        timeout = float(check.timing.timeout_seconds)
        probe, address, port = check.probe, check.key.address, check.port
        start = time.perf_counter()
        try:
            if isinstance(probe, GRPCProbe):
                return await self.grpc.probe(address, port, timeout, probe)
            if isinstance(probe, DatabaseProbe):
                return await self.database.probe(str(check.key), address, port, timeout, probe)
            return ProbeResult(False, f"unsupported probe {probe.kind}", 0.0)
        except Exception as err:  # a prober bug is a failed probe, never a dead scheduler
            log.exception("prober raised", extra={"check": str(check.key)})
            return ProbeResult(False, f"probe error: {type(err).__name__}", time.perf_counter() - start)
