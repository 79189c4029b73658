"""Process lifecycle shared by the long-running commands (controller, sidecar): signals and startup
errors. Tiny on purpose: the sidecar imports it and must not pull in the controller."""

from __future__ import annotations

import asyncio
import errno
import signal
from typing import Any


class StartupError(Exception):
    """The command cannot start; the message says what to change (printed as one line, exit 2)."""


async def start_site(site: Any, address: str, flag: str) -> None:
    """Start an aiohttp ``site`` listening on ``address``; a bind failure becomes a StartupError naming the
    ``flag`` that chooses the address."""
    try:
        await site.start()
    except OSError as err:
        why = "address already in use" if err.errno == errno.EADDRINUSE else (err.strerror or str(err))
        raise StartupError(f"cannot listen on {address}: {why} (choose another with {flag})") from err


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
