"""Turn a host (IP or DNS name) into the addresses to probe. Each address is its own check.

DNS names are resolved asynchronously every time the caller asks (callers do it each period), so
a record that changes is followed; an IP literal is returned as is without a lookup.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from epctl.api.parse import address_error


async def resolve(host: str, allow_loopback: bool = False) -> tuple[list[str], str | None]:
    """Return (addresses, error). Addresses keep the resolver's order, without duplicates.

    Every address a name resolves to passes the same guard as an address written in the spec: a
    name is no way around it (``localhost``, a record pointing at a metadata service). Refused
    addresses are left out and named in ``error``; the rest are returned.
    """
    try:
        ipaddress.ip_address(host)
        problem = address_error(host, allow_loopback)
        return ([], problem) if problem else ([host], None)
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        reason = err.strerror if isinstance(err, socket.gaierror) and err.strerror else str(err)
        return [], f"dns lookup failed: {reason.lower()}"
    addresses: list[str] = []
    refused: list[str] = []
    for address in dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos):
        problem = address_error(address, allow_loopback)
        if problem:
            refused.append(problem)
        else:
            addresses.append(address)
    return addresses, (f"{host} resolves to refused addresses: {'; '.join(refused)}" if refused else None)
