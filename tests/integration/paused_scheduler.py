"""A scheduler probing 200 local checks in its own process, for test_scheduler's paused-process test.

``python paused_scheduler.py pause|busy SECONDS``: prints ``ready`` once every check is decided, then
runs SECONDS more and prints one JSON line: the lowest admission rate seen, the worst loop lag the
scheduler reported, and the demand. In ``busy`` mode the loop itself is kept busy (a callback that
burns 80 ms of CPU every 150 ms): lag that *is* work on the loop. In ``pause`` mode the test stops and
continues the whole process from outside (SIGSTOP/SIGCONT), as a CFS quota's throttling does.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from epctl.api.spec import ProbeTiming, TCPProbe
from epctl.probe.scheduler import Check, CheckKey, Scheduler, Transition
from epctl.testing.backends import HOST, TCPBackend
from epctl.testing.waiting import eventually


class Lag:
    def __init__(self) -> None:
        self.worst = 0.0

    def pacing(self, stretch: float, admitted_per_second: float, loop_lag: float) -> None:
        self.worst = max(self.worst, loop_lag)

    def observe(self, kind: str, ok: bool, duration: float) -> None: ...
    def inconclusive(self, kind: str) -> None: ...
    def lateness(self, seconds: float) -> None: ...
    def in_flight(self, count: int) -> None: ...


async def main(mode: str, seconds: float) -> None:
    decided: list[Transition] = []
    lag = Lag()
    scheduler = Scheduler(decided.append, metrics=lag, period_override=1.0, first_window=0.5)
    async with TCPBackend() as backend:
        for i in range(200):
            scheduler.upsert(Check(CheckKey(f"ns/t{i}", "p", HOST), TCPProbe(), backend.port,
                                   ProbeTiming(timeout_seconds=1)))
        scheduler.start()
        await eventually(lambda: len(decided) == 200, timeout=30, message="every check decided")
        print("ready", flush=True)
        loop = asyncio.get_running_loop()

        def burn() -> None:
            end = time.thread_time() + 0.08
            while time.thread_time() < end:
                pass
            loop.call_later(0.15, burn)

        if mode == "busy":
            loop.call_later(0.15, burn)
        lowest = scheduler.admission.rate
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(0.02)
            lowest = min(lowest, scheduler.admission.rate)
        print(json.dumps({"lowest_rate": lowest, "worst_lag": lag.worst, "demand": scheduler.demand,
                          "healthy": sum(t.healthy for t in decided) - sum(not t.healthy for t in decided)}),
              flush=True)
        await scheduler.stop()


if __name__ == "__main__":
    import uvloop
    uvloop.run(main(sys.argv[1], float(sys.argv[2])))
