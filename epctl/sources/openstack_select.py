"""Which OpenStack servers and addresses become endpoints. Pure: no I/O, tested directly.

The poller asks Nova to filter what Nova can (status, tags, and the name when the regex means the
same thing to Nova's database as to Python), then :func:`select_servers` applies the whole query
here anyway — Nova's name filter is a database regex whose dialect varies by backend, so the
server-side filter only narrows the transfer and never decides on its own.

Addresses are normalised (``ipaddress`` compressed form) and sorted, so equal answers compare equal
however Nova orders them: an unchanged cloud never causes a write (the seed patched every tick).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from epctl.api.spec import ServerQuery

# Regex syntax Python and the SQL backends (MySQL/MariaDB REGEXP, PostgreSQL ~) read alike.
_PORTABLE = re.compile(r"^[A-Za-z0-9_\-.^$*+?()\[\]|{},: ]*$")
# The seed read a per-VM network choice from metadata (``...endpoint.network.name/version``).
_SEED_NETWORK_KEY = re.compile(r".*endpoint.network.name$")
_SEED_VERSION_KEY = re.compile(r".*endpoint.network.version$")


@dataclass(frozen=True)
class DiscoveredServer:
    """A matching server and the addresses it contributes (sorted, normalised)."""

    id: str
    name: str
    addresses: tuple[str, ...]
    zone: str = ""  # Nova's OS-EXT-AZ:availability_zone, published as endpoints[].zone


def _portable(regex: str) -> bool:
    """No backslash classes, no ``(?...)`` groups or flags, no lazy quantifiers: POSIX ERE only."""
    return bool(_PORTABLE.match(regex)) and "(?" not in regex and not re.search(r"[*+?}]\?", regex)


def nova_filters(query: ServerQuery) -> dict[str, Any]:
    """Query parameters for ``GET /servers/detail`` that Nova applies server-side."""
    params: dict[str, Any] = {"status": list(query.statuses)}
    if query.name_regex and _portable(query.name_regex):
        params["name"] = query.name_regex
    if query.tags:
        params["tags"] = ",".join(query.tags)
    return params


def server_matches(server: Mapping[str, Any], query: ServerQuery) -> bool:
    if str(server.get("status") or "").upper() not in query.statuses:
        return False
    if query.name_regex and not re.search(query.name_regex, str(server.get("name") or "")):
        return False
    tags = set(server.get("tags") or ())
    if not set(query.tags) <= tags:
        return False
    metadata = {str(k): str(v) for k, v in (server.get("metadata") or {}).items()}
    return all(any(re.fullmatch(key_re, k) and re.fullmatch(value_re, v) for k, v in metadata.items())
               for key_re, value_re in query.metadata)


def _normalise(address: Any) -> tuple[int, str] | None:
    try:
        ip = ipaddress.ip_address(str(address).split("%")[0])
    except ValueError:
        return None
    return ip.version, ip.compressed


def server_addresses(server: Mapping[str, Any], query: ServerQuery, *, seed_network_metadata: bool = False
                     ) -> list[str]:
    """The addresses of ``server`` on the wanted network, of the wanted kind and IP version.

    ``seed_network_metadata`` (``epctl manager`` only) lets a VM pick its network and IP version
    with the seed's ``*endpoint.network.name`` / ``*endpoint.network.version`` metadata keys.
    """
    network, version = query.network, query.ip_version
    if seed_network_metadata:
        for key, value in (server.get("metadata") or {}).items():
            if _SEED_NETWORK_KEY.match(str(key)):
                network = str(value)
            elif _SEED_VERSION_KEY.match(str(key)) and str(value) in ("4", "6"):
                version = int(value)
    found: set[tuple[int, str]] = set()
    for net, entries in (server.get("addresses") or {}).items():
        if network is not None and net != network:
            continue
        for entry in entries or ():
            if not isinstance(entry, Mapping):
                continue
            kind = entry.get("OS-EXT-IPS:type") or "fixed"
            if query.address_kind != "any" and kind != query.address_kind:
                continue
            normalised = _normalise(entry.get("addr"))
            if normalised is not None and normalised[0] == version:
                found.add(normalised)
    return [address for _, address in sorted(found, key=lambda a: ipaddress.ip_address(a[1]))]


def select_servers(servers: Iterable[Mapping[str, Any]], query: ServerQuery, *,
                   seed_network_metadata: bool = False) -> tuple[DiscoveredServer, ...]:
    """Servers matching ``query``, sorted by name then id (some may have no wanted address: they
    count as found, contribute nothing, and the status says so)."""
    selected = []
    for server in servers:
        if not server_matches(server, query):
            continue
        addresses = server_addresses(server, query, seed_network_metadata=seed_network_metadata)
        selected.append(DiscoveredServer(str(server.get("id") or ""), str(server.get("name") or ""),
                                         tuple(addresses), str(server.get("OS-EXT-AZ:availability_zone") or "")))
    return tuple(sorted(selected, key=lambda s: (s.name, s.id)))
