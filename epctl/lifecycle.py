"""Process lifecycle shared by the long-running commands (controller, sidecar). Tiny on purpose:
the sidecar imports it and must not pull in the controller."""

from __future__ import annotations

import asyncio
import signal


async def until_terminated() -> None:
    """Return when the process gets SIGTERM (a Pod being stopped) or SIGINT (Ctrl-C)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
