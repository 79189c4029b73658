"""Turn a host (IP or DNS name) into the addresses to probe. Each address is its own check.

DNS names are resolved asynchronously every time the caller asks (callers do it each period), so
a record that changes is followed; an IP literal is returned as is without a lookup.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket


async def resolve(host: str) -> tuple[list[str], str | None]:
    """Return (addresses, error). Addresses keep the resolver's order, without duplicates."""
    try:
        ipaddress.ip_address(host)
        return [host], None
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        reason = err.strerror if isinstance(err, socket.gaierror) and err.strerror else str(err)
        return [], f"dns lookup failed: {reason.lower()}"
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]
        if address not in addresses:
            addresses.append(address)
    return addresses, None
